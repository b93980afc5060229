"""Part-discovery evaluation of stage 1 (iFAM Table 6 / Appendix C; PDiscoFormer's `evaluate_parts.py`): NMI and ARI
between the discovered parts and the annotated keypoints, keypoint regression (Kp) and foreground mIoU, without token
removal and at every calibrated token-removal percentile. The table is written as JSON and Markdown.

    python -m ifam_interventions.evaluate_parts --model_name_or_path outputs/synthetic --split test
    python -m ifam_interventions.evaluate_parts --model_name_or_path ifam-cub --dataset_name cub \\
        --data_dir CUB_200_2011 --split test_waterbird200

The split needs `keypoints` and `bbox` columns for NMI/ARI/Kp (CUB, Waterbird200, the built-in benchmark) and a
`mask` column for foreground mIoU; a metric whose columns are missing is left out. Kp's regression is fitted on
`--fit_split` (the training split), run through the same model with the same token removal.

How the part maps are read (the metric modules `part_nmi_ari` and `keypoint_regression` document the rest):

* NMI/ARI, as PDiscoFormer: the soft part maps (background included) upsampled bilinearly to the input size
  (align_corners=False), arg-max at the pixel holding each visible keypoint (`parts_at_keypoints`).
* Kp, as PDiscoFormer: the centroid of each foreground part's soft map over the patch grid, a patch at its centre
  ((i + 0.5) * patch size: PDiscoFormer puts patch i at i * stride, half a patch up and left, which after the
  per-image box normalisation is not quite a constant); a part is present when its probability exceeds 0.5 somewhere.
* Token removal: a token that the calibrated thresholds remove goes to the background, in the maps too (all its
  probability moves to the background part), as stage 2's token mask has it. The authors' code instead sets each
  foreground logit below its threshold to -inf before the softmax, which can hand a removed token to another
  foreground part; ours keeps the maps consistent with what stage 2 sees and with the foreground mIoU.
* Foreground mIoU: the stage-2 token mask upsampled (nearest) to the ground-truth mask, as `ifam_train.evaluation`.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm

from ifam_metrics import load_metric
from ifam_train.reporting import markdown_table as _markdown_table
from ifam_train.reporting import write_report
from modeling_ifam import IFAMForImageClassification

TABLE_FILE = "part_evaluation"
COLUMNS = (("nmi", "NMI ↑"), ("ari", "ARI ↑"), ("keypoint_regression_error", "Kp ↓"), ("fg_miou", "Fg. mIoU ↑"))


def parts_at_keypoints(part_maps: torch.Tensor, keypoints: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """
    The part ([B, L] long, background = K, -1 where invisible) at each keypoint ([B, L, 3]: x, y, visible in pixels of
    the input): arg-max of the maps ([B, K+1, h, w]) upsampled bilinearly to `image_size` (align_corners=False), read
    at the pixel containing the point. Only those pixels are interpolated (grid_sample at the pixel centres with border
    padding gives exactly F.interpolate's values there).
    """
    height, width = image_size
    column = keypoints[..., 0].floor().clamp(0, width - 1)
    row = keypoints[..., 1].floor().clamp(0, height - 1)
    grid = torch.stack([2 * (column + 0.5) / width - 1, 2 * (row + 0.5) / height - 1], dim=-1)  # [B, L, 2]
    values = F.grid_sample(part_maps.float(), grid[:, :, None].to(part_maps.device, torch.float32), mode="bilinear",
                           padding_mode="border", align_corners=False)  # [B, K+1, L, 1]
    parts = values[..., 0].argmax(dim=1)
    return torch.where(keypoints[..., 2].to(parts.device) > 0, parts, torch.full_like(parts, -1))


def part_centroids(part_maps: torch.Tensor, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Centroids ([B, K, 2], x and y in pixels of the input; NaN for an all-zero map) of the foreground parts' soft maps,
    each patch at its centre, and presence ([B, K] bool: probability above 0.5 somewhere).
    """
    maps = part_maps[:, :-1].float()  # [B, K, h, w]
    grid_height, grid_width = maps.shape[-2:]
    ys = (torch.arange(grid_height, device=maps.device) + 0.5) * image_size[0] / grid_height
    xs = (torch.arange(grid_width, device=maps.device) + 0.5) * image_size[1] / grid_width
    mass = maps.sum(dim=(-2, -1))
    x = (maps.sum(-2) * xs).sum(-1) / mass
    y = (maps.sum(-1) * ys).sum(-1) / mass
    return torch.stack([x, y], dim=-1), maps.flatten(2).amax(-1) > 0.5


def maps_after_token_removal(
    model: IFAMForImageClassification, stage1, thresholds, grid: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The part maps with the tokens that `thresholds` removes sent wholly to the background, and the stage-2 token mask
    ([B, N] bool, on `grid`), no part dropped. `thresholds` None: the maps as they are (stage 1's grid).

    `grid`: stage 2's patch grid (H, W), where the model applies token removal (default: stage 1's grid). When stage 1
    runs on another grid (`config.stage1_image_size`), the maps with tokens removed are stage 1's part maps brought to
    `grid` as the model does it (bilinear, `IFAMForImageClassification.part_maps_on_grid`) before the removal.
    """
    visible, _ = model.select_tokens(stage1, parts_to_drop=[], thresholds=thresholds, grid=grid)
    maps = stage1.part_maps
    if thresholds is None:
        return maps, visible
    maps, _ = model.part_maps_on_grid(stage1, grid, with_distances=False)
    num_parts = maps.shape[1] - 1
    removed = (~visible & (maps.flatten(2).argmax(1) != num_parts)).view(maps.shape[0], 1, *maps.shape[-2:])
    background = F.one_hot(torch.full_like(removed[:, 0], num_parts, dtype=torch.long), num_parts + 1)
    return torch.where(removed, background.permute(0, 3, 1, 2).to(maps.dtype), maps), visible


def _row_thresholds(model, percentile):
    if percentile is None:
        return None
    thresholds = model.config.thresholds_for(percentile)
    if thresholds is None:
        raise ValueError(
            f"No token-removal thresholds for percentile {percentile}; calibrate first "
            f"(python -m ifam_interventions.calibration). Calibrated: {sorted(model.config.part_distance_thresholds)}.")
    return torch.tensor(thresholds, device=model.device)


@torch.no_grad()
def collect(model, dataloader, accelerator: Accelerator, percentiles=(), fit: bool = False, desc: str = "") -> dict:
    """
    One stage-1 pass over `dataloader`; per row (None, then each percentile): the inputs of `keypoint_regression`,
    the parts at the keypoints (evaluation split) and a filled `foreground_miou` module (evaluation split, `mask`).
    """
    model.eval()
    keys = (None, *percentiles)
    thresholds = {q: _row_thresholds(model, q) for q in keys}
    rows = {q: {"kp": {k: [] for k in ("part_centroids", "part_presence", "keypoints", "bounding_boxes")},
                "parts": [], "visibility": [], "fg": None} for q in keys}
    progress = tqdm(dataloader, desc=desc, disable=not accelerator.is_local_main_process)
    for batch in progress:
        stage1 = model.stage1(batch["pixel_values"].to(model.device))
        image_size = tuple(batch["pixel_values"].shape[-2:])
        grid = tuple(side // model.config.patch_size for side in image_size)  # stage 2's (the token mask's)
        for q in keys:
            maps, visible = maps_after_token_removal(model, stage1, thresholds[q], grid)
            row, gather = rows[q], accelerator.gather_for_metrics
            if "keypoints" in batch and "bbox" in batch:
                centroids, presence = part_centroids(maps, image_size)
                for name, value in (("part_centroids", centroids), ("part_presence", presence),
                                    ("keypoints", batch["keypoints"]), ("bounding_boxes", batch["bbox"])):
                    row["kp"][name].append(gather(value).cpu().numpy())
                if not fit:
                    row["parts"].append(gather(parts_at_keypoints(maps, batch["keypoints"], image_size)).cpu().numpy())
                    row["visibility"].append(gather(batch["keypoints"][..., 2] > 0).cpu().numpy())
            if not fit and "mask" in batch:
                height, width = batch["mask"].shape[-2:]
                selected = visible.view(-1, 1, *grid).float()
                predicted = F.interpolate(selected, size=(height, width), mode="nearest")[:, 0].bool()
                predicted, reference = gather(predicted).cpu().numpy(), gather(batch["mask"]).cpu().numpy()
                if accelerator.is_main_process:
                    if row["fg"] is None:
                        row["fg"] = load_metric("foreground_miou")
                    row["fg"].add_batch(predictions=list(predicted), references=list(reference))
    for row in rows.values():
        row["kp"] = {k: np.concatenate(v) for k, v in row["kp"].items()} if row["kp"]["keypoints"] else None
        row["parts"] = np.concatenate(row["parts"]) if row["parts"] else None
        row["visibility"] = np.concatenate(row["visibility"]) if row["visibility"] else None
    return rows


def evaluate_parts(
    model: IFAMForImageClassification,
    eval_dataloader,
    fit_dataloader=None,
    accelerator: Accelerator | None = None,
    percentiles: tuple[float, ...] = (),
) -> list[dict]:
    """
    Table 6's rows for one model: without token removal, then at each calibrated percentile in `percentiles`. Each row
    has `percentile` (None: no removal) and, where the data allow, `nmi`, `ari`, `num_keypoints`,
    `keypoint_regression_error` (needs `fit_dataloader`, the training split) and `fg_miou` (fractions).
    Evaluation split batches need `keypoints` and `bbox` for NMI/ARI/Kp, `mask` for the foreground mIoU.
    """
    accelerator = accelerator or Accelerator()
    model.to(accelerator.device)
    evaluation = collect(model, eval_dataloader, accelerator, percentiles, desc="part evaluation")
    fitting = collect(model, fit_dataloader, accelerator, percentiles, fit=True, desc="keypoint regression fit") \
        if fit_dataloader is not None else None
    rows = []
    for q in (None, *percentiles):
        found, row = evaluation[q], {"percentile": q}
        if found["parts"] is not None:
            row.update(load_metric("part_nmi_ari").compute(predictions=list(found["parts"]),
                                                           visibility=list(found["visibility"])))
        if fitting is not None and found["kp"] is not None and fitting[q]["kp"] is not None:
            inputs = {k: np.concatenate([fitting[q]["kp"][k], found["kp"][k]]) for k in found["kp"]}
            fit = np.arange(len(inputs["keypoints"])) < len(fitting[q]["kp"]["keypoints"])
            kp = load_metric("keypoint_regression").compute(**{k: list(v) for k, v in inputs.items()}, fit=list(fit))
            row["keypoint_regression_error"] = kp["keypoint_regression_error"]
            row["per_keypoint_regression_error"] = kp["per_keypoint_error"]
        if found["fg"] is not None:
            row["fg_miou"] = found["fg"].compute()["foreground_miou"]
        rows.append(row)
    return rows


def row_label(row: dict) -> str:
    return "no token removal" if row["percentile"] is None else f"token removal q={row['percentile']:g}"


def markdown_table(rows: list[dict]) -> str:
    """Table 6's layout, in percent: NMI, ARI, Kp (normalised error x 100), foreground mIoU."""
    columns = [(key, title) for key, title in COLUMNS if any(key in row for row in rows)]
    cells = [[row_label(row)] + [f"{100 * row[key]:.1f}" if key in row else "–" for key, _ in columns] for row in rows]
    return _markdown_table(["intervention", *(title for _, title in columns)], cells) + "\n"


def write_table(rows: list[dict], folder: str | Path) -> tuple[Path, Path]:
    return write_report(rows, markdown_table(rows), folder, TABLE_FILE)


def main(argv: list[str] | None = None) -> list[dict]:
    from ifam_interventions.cli import build_parser, load_model, split_dataloader

    parser = build_parser(__doc__)
    parser.add_argument("--fit_split", default="train",
                        help="The split the keypoint regression is fitted on (none: no Kp column).")
    parser.add_argument("--percentiles", type=float, nargs="*", default=None,
                        help="Token-removal percentiles, one row each (default: every calibrated one).")
    parser.add_argument("--output_dir", "--output-dir", type=str, default=None, help="Default: the model folder.")
    data_args, args = parser.parse_args_into_dataclasses(argv)
    model = load_model(args.model_name_or_path)
    percentiles = tuple(args.percentiles if args.percentiles is not None else sorted(
        float(q) for q in model.config.part_distance_thresholds))
    accelerator = Accelerator()
    eval_loader = accelerator.prepare(split_dataloader(data_args, args, model))
    fit_loader = None
    if args.fit_split.lower() != "none":
        fit_args = argparse.Namespace(**{**vars(args), "split": args.fit_split})
        fit_loader = accelerator.prepare(split_dataloader(data_args, fit_args, model))
    rows = evaluate_parts(model, eval_loader, fit_loader, accelerator, percentiles)
    if accelerator.is_main_process:
        paths = write_table(rows, args.output_dir or args.model_name_or_path)
        print(markdown_table(rows))
        print("written:", *paths)
    return rows


if __name__ == "__main__":
    main()
