"""Leave-one-out evaluation (paper, section 5.2): a split evaluated with each part dropped in turn, and with the
token-removal thresholds on top; the table is written as JSON and Markdown.

    python -m ifam_interventions.leave_one_out --model_name_or_path outputs/synthetic --split test
"""

from pathlib import Path

from accelerate import Accelerator

from ifam_train.evaluation import compute_metrics, predict
from ifam_train.reporting import markdown_table as _markdown_table
from ifam_train.reporting import write_report
from modeling_ifam import IFAMForImageClassification

TABLE_FILE = "leave_one_out"
COLUMNS = ("accuracy", "worst_group_accuracy", "roc_auc", "worst_group_roc_auc", "fg_miou", "coverage")


def leave_one_out(
    model: IFAMForImageClassification,
    dataloader,
    accelerator: Accelerator,
    percentiles: tuple[float, ...] = (),
    worst_group_auc: bool = False,
) -> list[dict]:
    """
    Evaluate a split under every intervention: none, each part dropped alone, and each of those with token removal.

    Args:
        model (`IFAMForImageClassification`):
            The trained model.
        dataloader (`DataLoader`):
            The split, prepared by `accelerator`.
        accelerator (`Accelerator`):
            Gathers the predictions across processes.
        percentiles (`tuple[float, ...]`, *optional*, defaults to `()`):
            Calibrated token-removal percentiles to add on top of every row.
        worst_group_auc (`bool`, *optional*, defaults to `False`):
            Also compute the worst-group ROC AUC (SIIM-ACR).

    Returns:
        `list[dict]`: one row per intervention with `parts_dropped`, `percentile` (`None`: no token removal) and the
        scalar metrics.
    """
    missing = [q for q in percentiles if model.config.thresholds_for(q) is None]
    if missing:
        raise model.config.missing_thresholds_error(missing)
    rows = []
    for parts in [[]] + [[part] for part in range(model.config.num_parts)]:
        for percentile in (None, *percentiles):
            results = predict(model, dataloader, accelerator, parts_to_drop=parts, token_removal_percentile=percentile,
                              use_token_removal=percentile is not None)
            metrics = compute_metrics(results, worst_group_auc=worst_group_auc)
            rows.append({"parts_dropped": parts, "percentile": percentile,
                         **{k: v for k, v in metrics.items() if not isinstance(v, dict)}})
    return rows


def row_label(row: dict) -> str:
    parts = "drop part " + ",".join(map(str, row["parts_dropped"])) if row["parts_dropped"] else "no part dropped"
    return parts if row["percentile"] is None else f"{parts} + q={row['percentile']:g}"


def markdown_table(rows: list[dict]) -> str:
    """Metrics in percent; the difference to the row without intervention in parentheses."""
    columns = [c for c in COLUMNS if c in rows[0]]
    base = rows[0]
    cells = [[row_label(row)] + [f"{100 * row[c]:.1f}" + ("" if row is base else f" ({100 * (row[c] - base[c]):+.1f})")
                                 for c in columns] for row in rows]
    return _markdown_table(["intervention", *columns], cells) + "\n"


def write_table(rows: list[dict], folder: str | Path) -> tuple[Path, Path]:
    return write_report(rows, markdown_table(rows), folder, TABLE_FILE)


def main(argv: list[str] | None = None) -> list[dict]:
    """The command line: the table of a model folder on a split, written beside the model (or to `--output_dir`)."""
    from ifam_interventions.cli import build_parser, load_model, split_dataloader

    parser = build_parser(__doc__)
    parser.add_argument("--percentiles", type=float, nargs="*", default=None,
                        help="Token-removal percentiles to add on top (default: every calibrated one).")
    parser.add_argument("--output_dir", "--output-dir", type=str, default=None, help="Default: the model folder.")
    data_args, args = parser.parse_args_into_dataclasses(argv)
    model = load_model(args.model_name_or_path)
    percentiles = args.percentiles if args.percentiles is not None else sorted(
        float(q) for q in model.config.part_distance_thresholds)
    accelerator = Accelerator()
    loader = accelerator.prepare(split_dataloader(data_args, args, model))
    rows = leave_one_out(model, loader, accelerator, percentiles, worst_group_auc=data_args.dataset_name == "siim_acr")
    if accelerator.is_main_process:
        paths = write_table(rows, args.output_dir or args.model_name_or_path)
        print(markdown_table(rows))
        print("written:", *paths)
    return rows


if __name__ == "__main__":
    main()
