"""Markdown tables: the one writer every command's report goes through."""

import json
from pathlib import Path


def markdown_table(header: list[str], rows: list[list]) -> str:
    """
    A GitHub-flavoured Markdown table.

    Args:
        header (`list[str]`):
            The column titles.
        rows (`list[list]`):
            One list of cells per row, as many as `header`; cells are written with `str`.

    Returns:
        `str`: the table, one line per row, without a trailing newline.
    """
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"A table row has {len(row)} cells for {len(header)} columns: {row}.")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


RESULT_COLUMNS = ("accuracy", "worst_group_accuracy", "stage1_accuracy", "fg_miou", "coverage", "roc_auc",
                  "worst_group_roc_auc")


def results_table(results: dict[str, dict], columns: dict[str, str] | None = None) -> str:
    """
    The evaluation table of a run: one row per split, metrics in percent with one decimal.

    Args:
        results (`dict[str, dict]`):
            `metrics.json`'s content: split name -> metric name -> value in [0, 1].
        columns (`dict[str, str]`, *optional*):
            Metric name -> column title, in order; default: `RESULT_COLUMNS` under their own names. Columns that no
            split has are left out.

    Returns:
        `str`
    """
    columns = columns or {name: name for name in RESULT_COLUMNS}
    present = [c for c in columns if any(c in metrics for metrics in results.values())]
    rows = [[split] + [f"{100 * metrics[c]:.1f}" if c in metrics else "" for c in present]
            for split, metrics in results.items()]
    return markdown_table(["split"] + [columns[c] for c in present], rows)


def write_report(rows: list[dict], markdown: str, folder: str | Path, name: str) -> tuple[Path, Path]:
    """
    Write a command's rows as `name.json` and its table as `name.md` in `folder` (created if missing).

    Returns:
        `tuple[Path, Path]`: the JSON and Markdown paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = folder / f"{name}.json", folder / f"{name}.md"
    json_path.write_text(json.dumps(rows, indent=2) + "\n")
    markdown_path.write_text(markdown)
    return json_path, markdown_path
