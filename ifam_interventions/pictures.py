"""Pictures people inspect to decide what to drop (paper, section 3.4): part maps, stage-2 masks, intervention effects.

    python -m ifam_interventions.pictures --model_name_or_path outputs/synthetic --split test --num_images 8

writes `parts.png` (per image: the image, the part assignment in one colour per part, the binary stage-2 mask, and the
mask and prediction under each intervention) and, when `leave_one_out.json` exists, `leave_one_out.png`.
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: E402

from modeling_ifam import IFAMForImageClassification, IFAMImageProcessorPil  # noqa: E402


def part_colours(num_parts: int) -> np.ndarray:
    """One RGB colour per foreground part (tab10/tab20), background last as transparent black."""
    cmap = plt.get_cmap("tab10" if num_parts <= 10 else "tab20")
    colours = np.array([cmap(i % cmap.N)[:3] for i in range(num_parts)] + [(0.0, 0.0, 0.0)])
    return colours


def _denormalize(pixel_values: torch.Tensor, mean, std) -> np.ndarray:
    image = pixel_values.permute(1, 2, 0).float().cpu().numpy() * np.asarray(std) + np.asarray(mean)
    return image.clip(0, 1)


@torch.no_grad()
def part_grid(
    model: IFAMForImageClassification,
    pixel_values: torch.Tensor,
    path: str | Path,
    interventions: dict[str, dict] | None = None,
    image_mean=IMAGENET_DEFAULT_MEAN,
    image_std=IMAGENET_DEFAULT_STD,
    labels: torch.Tensor | None = None,
) -> Path:
    """
    Write a PNG grid for a batch: one row per image; columns: image, part assignment, stage-2 mask, then one mask per
    intervention, each titled with the prediction and its probability.

    Args:
        model (`IFAMForImageClassification`):
            The trained model.
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            The normalised images.
        path (`str` or `Path`):
            The PNG to write.
        interventions (`dict[str, dict]`, *optional*):
            Column title -> `forward` keyword arguments, e.g. `{"drop part 1": {"parts_to_drop": [1]}}`.
        image_mean, image_std (sequences of 3 `float`, *optional*, default to the ImageNet statistics):
            The image processor's normalisation, undone for display.
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Shown above each image.

    Returns:
        `Path`: the PNG written.
    """
    model.eval()
    interventions = {"iFAM": {}, **(interventions or {})}
    outputs = {name: model(pixel_values, **kwargs) for name, kwargs in interventions.items()}
    num_parts = model.config.num_parts
    colours = part_colours(num_parts)
    # the pixel maps, by the image processor's geometry (the pixel values are the model's input: no resize or crop), on
    # stage 2's grid (the token mask's) when stage 1 runs at its own `stage1_image_size`
    geometry = IFAMImageProcessorPil(do_resize=False, do_center_crop=False)
    sizes = [tuple(pixel_values.shape[-2:])] * len(pixel_values)
    maps = {name: geometry.post_process_part_maps(output, target_sizes=sizes) for name, output in outputs.items()}
    columns = 2 + len(interventions)
    figure, axes = plt.subplots(len(pixel_values), columns, figsize=(2.2 * columns, 2.3 * len(pixel_values)),
                                squeeze=False)
    for row, image in enumerate(pixel_values):
        picture = _denormalize(image, image_mean, image_std)
        assignment = maps["iFAM"][row]["segmentation"].numpy()
        overlay = picture * 0.35 + colours[assignment] * 0.65
        overlay[assignment == num_parts] = picture[assignment == num_parts] * 0.35  # background dimmed
        title = "" if labels is None else f"label: {model.config.id2label[int(labels[row])]}"
        panels = [(picture, title), (overlay, "parts")]
        for name, output in outputs.items():
            visible = maps[name][row]["stage2_mask"].numpy()[..., None].astype(float)
            probability = output.logits[row].softmax(-1)
            predicted = int(probability.argmax())
            panels.append((picture * visible + 0.85 * (1 - visible),
                           f"{name}\n{model.config.id2label[predicted]} {100 * probability[predicted]:.0f}%"))
        for column, (panel, caption) in enumerate(panels):
            axes[row, column].imshow(panel)
            axes[row, column].set_title(caption, fontsize=8)
            axes[row, column].axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[k]) for k in range(num_parts)]
    figure.legend(handles, [f"part {k}" for k in range(num_parts)], loc="lower center", ncol=min(num_parts, 8),
                  fontsize=8)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def leave_one_out_chart(rows: list[dict], path: str | Path, metric: str = "worst_group_accuracy") -> Path:
    """Bar chart of a leave-one-out table (from `leave_one_out.json`): the metric per intervention, baseline dashed."""
    from ifam_interventions.leave_one_out import row_label

    if metric not in rows[0]:
        metric = "accuracy"
    values = [100 * row[metric] for row in rows]
    figure, axis = plt.subplots(figsize=(max(6, 0.5 * len(rows)), 4))
    colours = ["tab:grey" if row["percentile"] is None else "tab:blue" for row in rows]
    axis.bar(range(len(rows)), values, color=colours)
    axis.axhline(values[0], color="black", linestyle="--", linewidth=1, label="no intervention")
    axis.set_xticks(range(len(rows)), [row_label(row) for row in rows], rotation=60, ha="right", fontsize=8)
    axis.set_ylabel(f"{metric.replace('_', ' ')} (%)")
    axis.set_ylim(max(0, min(values) - 10), min(100, max(values) + 5))
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> list[Path]:
    """The command line: the pictures of a model folder on a split, written beside the model (or to `--output_dir`)."""
    from ifam_interventions.cli import build_parser, load_model, split_dataloader

    parser = build_parser(__doc__)
    parser.add_argument("--num_images", "--num-images", type=int, default=8)
    parser.add_argument("--output_dir", "--output-dir", type=str, default=None, help="Default: the model folder.")
    data_args, args = parser.parse_args_into_dataclasses(argv)
    output_dir = Path(args.output_dir or args.model_name_or_path)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model_name_or_path)
    args.per_device_eval_batch_size = args.num_images
    batch = next(iter(split_dataloader(data_args, args, model)))
    interventions = {f"drop part {k}": {"parts_to_drop": [k]} for k in range(model.config.num_parts)}
    interventions.update({f"q={float(q):g}": {"token_removal_percentile": float(q)}
                          for q in sorted(model.config.part_distance_thresholds, key=float)})
    processor = json.loads((Path(args.model_name_or_path) / "preprocessor_config.json").read_text())
    written = [part_grid(model, batch["pixel_values"], output_dir / "parts.png", interventions,
                         processor["image_mean"], processor["image_std"], labels=batch["labels"])]
    table = Path(args.model_name_or_path) / "leave_one_out.json"
    if table.is_file():
        written.append(leave_one_out_chart(json.loads(table.read_text()), output_dir / "leave_one_out.png"))
    print("written:", *written)
    return written


if __name__ == "__main__":
    main()
