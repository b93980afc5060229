"""Calibration of the token-removal intervention (paper, section 3.4) and the per-part statistics published with a
model.

For every foreground part k, the squared distance to prototype k of the tokens assigned to k over a data split (the
training set by default); tau_k^q is its q-th percentile. At inference, tokens of part k farther than tau_k^q from the
prototype go to the background.
"""

import json
from pathlib import Path

import torch

from modeling_ifam import IFAMForImageClassification

STATISTICS_FILE = "part_statistics.json"


@torch.no_grad()
def collect_part_distances(
    model: IFAMForImageClassification, batches, max_tokens_per_part: int = 2_000_000, seed: int = 0
) -> tuple[list[torch.Tensor], torch.Tensor, int]:
    """
    Run stage 1 over a split and collect, per foreground part, the distances of the tokens assigned to it.

    Args:
        model (`IFAMForImageClassification`):
            The trained model.
        batches (iterable of `dict`):
            Batches with `pixel_values`.
        max_tokens_per_part (`int`, *optional*, defaults to 2,000,000):
            Above this many tokens, a part keeps a uniform random subsample.
        seed (`int`, *optional*, defaults to 0):
            The subsample's seed.

    Returns:
        `tuple`: the distances per part (`list[torch.Tensor]`), how many images contain each part (`torch.Tensor`),
        and the number of images.
    """
    model.eval()
    num_parts = model.config.num_parts
    distances = [[] for _ in range(num_parts)]
    present = torch.zeros(num_parts, dtype=torch.long)
    num_images = 0
    for batch in batches:
        pixel_values = batch["pixel_values"].to(model.device)
        stage1 = model.stage1(pixel_values)
        # on stage 2's patch grid, where token removal applies them (the same as stage 1's unless stage 1 has its own)
        grid = tuple(size // model.config.patch_size for size in pixel_values.shape[-2:])
        part_maps, part_distances = model.part_maps_on_grid(stage1, grid)
        assignment = part_maps.flatten(2).argmax(1)  # [B, N]
        distance = part_distances.flatten(2).gather(1, assignment[:, None]).squeeze(1)  # [B, N]
        for part in range(num_parts):
            assigned = assignment == part
            distances[part].append(distance[assigned].float().cpu())
            present[part] += assigned.any(dim=1).sum().cpu()
        num_images += assignment.shape[0]
    generator = torch.Generator().manual_seed(seed)
    merged = []
    for chunks in distances:
        values = torch.cat(chunks) if chunks else torch.empty(0)
        if values.numel() > max_tokens_per_part:
            values = values[torch.randperm(values.numel(), generator=generator)[:max_tokens_per_part]]
        merged.append(values)
    return merged, present, num_images


def calibrate_token_removal(
    model: IFAMForImageClassification,
    batches,
    percentiles: tuple[float, ...] = (97.0, 99.0),
    max_tokens_per_part: int = 2_000_000,
) -> dict:
    """
    Fill `model.config.part_distance_thresholds` with tau_k^q for every q in `percentiles`. A part that no token of the
    split was assigned to gets an infinite threshold (nothing to remove) and a warning entry in the statistics.

    Args:
        model (`IFAMForImageClassification`):
            The trained model; its config is updated in place.
        batches (iterable of `dict`):
            Batches with `pixel_values` (the training split, as in the paper).
        percentiles (`tuple[float, ...]`, *optional*, defaults to `(97.0, 99.0)`):
            The percentiles q in (0, 100].
        max_tokens_per_part (`int`, *optional*, defaults to 2,000,000):
            Above this many tokens, a part's percentiles come from a uniform random subsample.

    Returns:
        `dict`: the per-part statistics (token counts, mean and percentiles of the distances, how often each part is
        present), as written to `part_statistics.json`.
    """
    for q in percentiles:
        if not 0 < q <= 100:
            raise ValueError(f"Percentile {q} is not in (0, 100].")
    distances, present, num_images = collect_part_distances(model, batches, max_tokens_per_part)
    if num_images == 0:
        raise ValueError("Calibration saw no image: the data split is empty.")
    quantiles = torch.tensor([q / 100 for q in percentiles], dtype=torch.float64)
    thresholds = {_key(q): [] for q in percentiles}
    parts = []
    for part, values in enumerate(distances):
        entry = {"part": part, "tokens": int(values.numel()), "images_with_part": int(present[part]),
                 "presence_frequency": float(present[part]) / num_images}
        if values.numel():
            levels = torch.quantile(values.double(), quantiles).tolist()
            entry.update(mean_distance=float(values.double().mean()),
                         distance_percentiles={_key(q): v for q, v in zip(percentiles, levels)})
        else:
            levels = [float("inf")] * len(percentiles)
            entry["warning"] = "no token assigned to this part in the calibration split"
        for q, level in zip(percentiles, levels):
            thresholds[_key(q)].append(level)
        parts.append(entry)
    model.config.part_distance_thresholds = {**model.config.part_distance_thresholds, **thresholds}
    return {"num_images": num_images, "percentiles": [float(q) for q in percentiles], "parts": parts}


def save_statistics(statistics: dict, folder: str | Path) -> Path:
    """Write the statistics as `part_statistics.json` beside the weights."""
    path = Path(folder) / STATISTICS_FILE
    path.write_text(json.dumps(statistics, indent=2) + "\n")
    return path


def _key(percentile: float) -> str:
    """`97` -> "97", `99.5` -> "99.5": the config's key for a percentile."""
    return f"{float(percentile):g}"


def main(argv: list[str] | None = None) -> dict:
    """Calibrate a trained model folder in place: thresholds into config.json, statistics into part_statistics.json."""
    from ifam_interventions.cli import build_parser, load_model, split_dataloader

    parser = build_parser(main.__doc__, default_split="train")
    parser.add_argument("--calibration_percentiles", "--calibration-percentiles", "--percentiles", type=float,
                        nargs="+", default=[97.0, 99.0])
    data_args, args = parser.parse_args_into_dataclasses(argv)
    model = load_model(args.model_name_or_path)
    statistics = calibrate_token_removal(model, split_dataloader(data_args, args, model),
                                         tuple(args.calibration_percentiles))
    model.config.save_pretrained(args.model_name_or_path)  # with its `auto_map` and configuration code
    path = save_statistics(statistics, args.model_name_or_path)
    print(json.dumps(model.config.part_distance_thresholds, indent=2))
    print("written:", Path(args.model_name_or_path) / "config.json", path)
    return statistics


if __name__ == "__main__":
    main()
