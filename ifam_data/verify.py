"""Images that cannot be decoded: found before training, skipped (with a report) when asked, tolerated during it.

* :func:`find_bad_images` lists every unreadable image of a ``Dataset``/``DatasetDict`` (a fast ``"header"`` check,
  or a ``"full"`` decode), with a progress bar; :func:`drop_bad_images` removes their rows and
  :func:`write_bad_image_report` writes their paths to a file. :func:`verify_images` (re-exported by
  ``ifam_data.benchmarks``) raises naming the first bad file.
* :class:`SkipUnreadableImages` wraps a ``with_transform`` callable so that a file that turned bad after the check
  (deleted, truncated) is skipped with a warning naming it, up to a limit, instead of ending a training run.
* :func:`check_image` (re-exported from ``modeling_ifam.image_processing_ifam``, where ``IFAMImageProcessor.preprocess``
  calls it on every image) is the front-door check of one decoded image (empty, non-finite, wrong dtype or shape),
  raising ``ValueError``/``TypeError`` that names the input.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

from PIL import Image as PILImage

from datasets import Dataset, DatasetDict, Image
from modeling_ifam.image_processing_ifam import check_image  # noqa: F401  (re-exported; the one implementation)

logger = logging.getLogger(__name__)

VERIFY_MODES = ("header", "full")
REPORT_NAME = "bad_images.txt"


@dataclass(frozen=True)
class BadImage:
    """One image that cannot be decoded: where it is in the data, its file, and why."""

    split: Optional[str]
    column: str
    row: int
    path: Optional[str]
    reason: str
    missing: bool = False

    @property
    def where(self) -> str:
        return f"split {self.split!r}, column {self.column!r}, row {self.row}"

    def __str__(self) -> str:
        return f"{self.path or '<embedded bytes>'} ({self.where}): {self.reason}"


def image_error(item: Any, mode: str = "full") -> Tuple[Optional[str], bool]:
    """Why the image ``item`` (a path, or a ``datasets.Image`` storage dict ``{"path", "bytes"}``) cannot be used.

    ``mode="header"`` opens the file and checks its header, size and (where the format has them) checksums
    (``PIL.Image.verify``), without decoding the pixels; ``"full"`` decodes every pixel. Returns ``(reason, missing)``;
    ``reason`` is None for a good image.
    """
    if mode not in VERIFY_MODES:
        raise ValueError(f"mode must be one of {VERIFY_MODES}, got {mode!r}")
    path, data = (item, None) if isinstance(item, (str, os.PathLike)) else (item.get("path"), item.get("bytes"))
    if data is None:
        if not path or not os.path.exists(path):
            return "file not found", True
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)", False
        source: Any = path
    else:
        source = io.BytesIO(data)
    try:
        with PILImage.open(source) as image:
            if image.width == 0 or image.height == 0:
                return f"zero-sized image ({image.width}x{image.height})", False
            if mode == "header":
                image.verify()
            else:
                image.load()
    except Exception as err:  # PIL raises a zoo of exception types
        return f"{type(err).__name__}: {err}", False
    return None, False


def find_bad_images(
    data: Dataset | DatasetDict,
    columns: Optional[Sequence[str]] = None,
    mode: str = "header",
    progress: bool = False,
    shard: Tuple[int, int] = (0, 1),
    chunk_size: int = 1024,
) -> List[BadImage]:
    """Every unreadable image of every split of ``data`` (a ``DatasetDict`` or one ``Dataset``).

    ``columns`` defaults to every ``datasets.Image`` column. ``shard=(index, count)`` checks only every ``count``-th
    chunk of rows starting at chunk ``index`` (one share per process; gather the lists). ``progress`` shows a tqdm bar.
    """
    from tqdm.auto import tqdm

    splits = list(data.items()) if isinstance(data, (DatasetDict, dict)) else [(None, data)]
    jobs = []
    for split, ds in splits:
        for column in columns or [c for c, f in ds.features.items() if isinstance(f, Image)]:
            jobs.append((split, column, ds))
    total = sum(len(ds) for _, _, ds in jobs)
    bad: List[BadImage] = []
    index, count = shard
    with tqdm(total=total, desc=f"Checking images ({mode})", unit="img", disable=not progress) as bar:
        for split, column, ds in jobs:
            raw = ds.select_columns([column]).cast_column(column, Image(decode=False))
            for chunk, start in enumerate(range(0, len(raw), chunk_size)):
                stop = min(start + chunk_size, len(raw))
                if chunk % count == index:
                    for row, item in enumerate(raw[start:stop][column], start):
                        if item is None:
                            continue
                        reason, missing = image_error(item, mode)
                        if reason is not None:
                            bad.append(BadImage(split, column, row, item.get("path"), reason, missing))
                bar.update(stop - start)
    return bad


def verify_images(dataset_dict, columns: Optional[Sequence[str]] = None, mode: str = "full") -> None:
    """Open and fully decode every image of every split; raise naming the first bad file (and how many more).

    ``dataset_dict`` may be a ``DatasetDict`` or a single ``Dataset``. ``columns`` defaults to every column whose
    feature is ``datasets.Image``. Missing files raise ``FileNotFoundError``, unreadable ones ``ValueError``; both
    messages contain the file path.
    """
    bad = find_bad_images(dataset_dict, columns, mode=mode)
    if bad:
        first, more = bad[0], f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        if first.missing:
            raise FileNotFoundError(f"image file not found: {first.path} ({first.where}){more}")
        raise ValueError(f"unreadable image file: {first}{more}")


def drop_bad_images(data: DatasetDict, bad: Sequence[BadImage]) -> DatasetDict:
    """``data`` without the rows of ``bad`` (a row goes when any of its image columns is bad)."""
    out = {}
    for split, ds in data.items():
        rows = {b.row for b in bad if b.split == split}
        out[split] = ds.select([i for i in range(len(ds)) if i not in rows]) if rows else ds
    return DatasetDict(out)


def write_bad_image_report(bad: Sequence[BadImage], path: str | os.PathLike) -> Path:
    """One line per bad image: ``path<TAB>split<TAB>column<TAB>row<TAB>reason``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# path\tsplit\tcolumn\trow\treason"]
    lines += [f"{b.path or '<embedded bytes>'}\t{b.split}\t{b.column}\t{b.row}\t{b.reason}" for b in bad]
    path.write_text("\n".join(lines) + "\n")
    return path


class SkipUnreadableImages:
    """
    A ``Dataset.with_transform`` callable for a split whose image columns are cast to ``Image(decode=False)``: decodes
    each example's images itself and hands the decoded batch to ``transform``.

    An example whose image cannot be decoded (a file deleted or truncated after the up-front check) is replaced by a
    copy of another example of the same batch, so the batch keeps its size and the shapes stay fixed (the copy counts
    twice in that one step); a warning names the file. After ``limit`` distinct bad files (counted per data-loading
    process), or when every example of a batch is bad, a ``RuntimeError`` names the file and ends the run.
    """

    def __init__(self, transform: Callable[[dict], dict], features, limit: int = 10):
        self.transform, self.limit = transform, limit
        self.columns = {name: feature for name, feature in features.items()
                        if isinstance(feature, Image) and not feature.decode}
        self.decoders = {name: Image(mode=feature.mode) for name, feature in self.columns.items()}
        self.skipped: set[str] = set()
        self._last = ""

    def __call__(self, batch: dict) -> dict:
        size = len(next(iter(batch.values())))
        decoded = {name: [None] * size for name in self.columns}
        bad = []
        for i in range(size):
            for name in self.columns:
                item = batch[name][i]
                try:
                    decoded[name][i] = None if item is None else self.decoders[name].decode_example(item)
                except Exception as err:
                    bad.append(i)
                    self._skip(item.get("path") or "<embedded bytes>", err)
                    break
        if bad:
            good = [i for i in range(size) if i not in bad]
            if not good:
                raise RuntimeError(f"Every image of a training batch is unreadable (the last: {self._last}); check "
                                   "the storage, or run again with --verify_images full --skip_bad_images.")
            source = [i if i not in bad else good[i % len(good)] for i in range(size)]
            batch = {key: [values[j] for j in source] for key, values in batch.items()}
            decoded = {name: [values[j] for j in source] for name, values in decoded.items()}
        return self.transform({**batch, **decoded})

    def _skip(self, path: str, err: Exception) -> None:
        self._last = path
        self.skipped.add(path)
        if len(self.skipped) > self.limit:
            raise RuntimeError(
                f"{len(self.skipped)} images became unreadable during training, more than --max_skipped_images "
                f"{self.limit}; the last: {path} ({type(err).__name__}: {err}). Check the storage, or run again with "
                "--verify_images full --skip_bad_images."
            ) from err
        logger.warning("Skipping unreadable image %s (%s: %s); %d skipped so far, at most %d.",
                       path, type(err).__name__, err, len(self.skipped), self.limit)


def skip_unreadable_images(dataset: Dataset, transform: Callable[[dict], dict], limit: int = 10) -> Dataset:
    """``dataset.with_transform(transform)``, but a file that cannot be decoded is skipped (`SkipUnreadableImages`)."""
    image_columns = [name for name, feature in dataset.features.items() if isinstance(feature, Image)]
    modes = {name: dataset.features[name].mode for name in image_columns}
    for name in image_columns:
        dataset = dataset.cast_column(name, Image(mode=modes[name], decode=False))
    return dataset.with_transform(SkipUnreadableImages(transform, dataset.features, limit))
