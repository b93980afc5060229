"""Foreground (and background) IoU of discovered foreground masks: iFAM/PDiscoFormer "Fg. mIoU"."""

import datasets
import evaluate
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ifam_metrics.checks import check_lengths, check_not_empty

_CITATION = """\
@inproceedings{aniraj2024pdiscoformer,
  title     = {PDiscoFormer: Relaxing Part Discovery Constraints with Vision Transformers},
  author    = {Aniraj, Ananthu and Dantas, Cassio F. and Ienco, Dino and Marcos, Diego},
  booktitle = {ECCV},
  year      = {2024}
}
@article{aniraj2025ifam,
  title  = {Inherently Faithful Attention Maps for Vision Transformers},
  author = {Aniraj, Ananthu and Dantas, Cassio F. and Ienco, Dino and Marcos, Diego},
  year   = {2025}
}
"""

_DESCRIPTION = """\
Foreground mIoU ("Fg. mIoU", iFAM Appendix / Table 6) of a discovered binary foreground mask
(the union of all foreground parts, i.e. every pixel not assigned to the background part) against
the ground-truth foreground/background mask (e.g. CUB segmentations, also used for Waterbird200).

Definition, following the authors' code: PDiscoFormer `engine/eval_fg_bg.py` (class `FgBgIoU`)
feeds every batch to a torchmetrics `BinaryJaccardIndex` (`metric_fg`, and `metric_bg` on the
inverted masks) and `evaluate_parts.py` (`--eval_mode fg_bg`) reports
`metric_fg.compute() * 100` as "Foreground mIoU" and `metric_bg.compute() * 100` as
"Background mIoU". `BinaryJaccardIndex` accumulates its confusion matrix over the whole
dataset, so the IoU is DATASET-LEVEL (pixel counts summed over all images, then one ratio), not a
mean of per-image IoUs:

    foreground_miou = sum_i |P_i & G_i|   / sum_i |P_i | G_i|
    background_miou = sum_i |~P_i & ~G_i| / sum_i |~P_i | ~G_i|

where P_i / G_i are the predicted / ground-truth foreground pixel sets of image i. Values are
fractions in [0, 1] (the paper prints percentages). As in torchmetrics (zero_division=0), a zero
union gives 0.0. The predicted mask must already be at the ground-truth resolution (the authors
upsample the part assignment maps to the mask size before the arg-max).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D 0/1 masks): predicted foreground masks (nested lists, numpy or bool arrays).
    references (`list` of 2-D 0/1 masks): ground-truth foreground masks; `references[i]` must have
        the same shape as `predictions[i]` (shapes may differ between examples).
Returns:
    foreground_miou (`float`): dataset-level foreground IoU, in [0, 1].
    background_miou (`float`): dataset-level background IoU, in [0, 1].
Raises:
    ValueError: on length mismatch, empty input, non-2-D or non-binary masks, or mismatched
    prediction/reference shapes.
Examples:
    >>> from ifam_metrics import load_metric
    >>> m = load_metric("foreground_miou")
    >>> m.compute(predictions=[[[1, 1], [0, 0]]], references=[[[1, 0], [0, 0]]])
    {'foreground_miou': 0.5, 'background_miou': 0.6666666666666666}
"""


def _as_mask(mask, name, index):
    """Validate one mask and return it as a 2-D uint8 array of 0/1."""
    if mask is None:
        raise ValueError(f"`{name}[{index}]` is missing (None).")
    if hasattr(mask, "detach"):  # torch tensor
        mask = mask.detach().cpu().numpy()
    try:
        arr = np.asarray(mask)
    except ValueError:
        raise ValueError(f"`{name}[{index}]` is not a rectangular 2-D mask (ragged rows).") from None
    if arr.dtype == object:
        raise ValueError(f"`{name}[{index}]` is not a rectangular 2-D mask of numbers.")
    if arr.ndim != 2:
        raise ValueError(f"`{name}[{index}]` must be a 2-D mask, got shape {arr.shape}.")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.size and not np.isin(arr, (0, 1)).all():
        bad = np.unique(arr[~np.isin(arr, (0, 1))])[:5].tolist()
        raise ValueError(f"`{name}[{index}]` must be binary (0/1); found values {bad}.")
    return arr.astype(np.uint8)


def _iter_masks(column):
    """Yield 2-D masks from an Arrow list<list<uint8>> column (zero-copy) or a plain sequence."""
    if isinstance(column, (pa.ChunkedArray, pa.Array)):
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        for chunk in chunks:
            for i in range(len(chunk)):
                rows = chunk[i].values  # ListArray of the mask's rows
                if rows is None:
                    raise ValueError("A mask is missing (None).")
                n_rows = len(rows)
                flat = rows.flatten().to_numpy(zero_copy_only=False)
                if n_rows == 0:
                    yield flat.reshape(0, 0)
                    continue
                row_lengths = pc.list_value_length(rows).to_numpy(zero_copy_only=False)
                if (row_lengths != row_lengths[0]).any():
                    raise ValueError("A mask has ragged rows; masks must be rectangular 2-D arrays.")
                yield flat.reshape(n_rows, int(row_lengths[0]))
    else:
        yield from column


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ForegroundMiou(evaluate.Metric):
    def _info(self):
        info = evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.List(datasets.Value("uint8"))),
                    "references": datasets.List(datasets.List(datasets.Value("uint8"))),
                }
            ),
            reference_urls=[
                "https://github.com/ananthu-aniraj/pdiscoformer/blob/main/engine/eval_fg_bg.py",
                "https://github.com/ananthu-aniraj/pdiscoformer/blob/main/evaluate_parts.py",
            ],
        )
        # Hand `_compute` Arrow columns so masks are reduced one at a time instead of being
        # materialised as one huge Python list / NumPy array. (Set after construction because
        # MetricInfo's validation only allows a format for flat `Value` features.)
        info.format = "arrow"
        return info

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of predicted / reference masks (validated first: 2-D, binary, same shapes)."""
        check_lengths(predictions=predictions, references=references)
        check_not_empty(self, len(predictions), "`predictions` and `references`")
        preds, refs = [], []
        for i, (p, r) in enumerate(zip(predictions, references)):
            p, r = _as_mask(p, "predictions", i), _as_mask(r, "references", i)
            if p.shape != r.shape:
                raise ValueError(
                    f"Mask shape mismatch: `predictions[{i}]` has shape {p.shape} "
                    f"but `references[{i}]` has shape {r.shape}."
                )
            preds.append(p)
            refs.append(r)
        return super().add_batch(predictions=preds, references=refs, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one predicted / reference mask pair."""
        return self.add_batch(predictions=[prediction], references=[reference], **kwargs)

    def _compute(self, predictions, references):
        check_lengths(predictions=predictions, references=references)
        if len(predictions) == 0:
            raise ValueError("`predictions` and `references` are empty: foreground mIoU is undefined.")
        fg_inter = fg_union = bg_inter = bg_union = 0
        for i, (p, r) in enumerate(zip(_iter_masks(predictions), _iter_masks(references))):
            p, r = _as_mask(p, "predictions", i).astype(bool), _as_mask(r, "references", i).astype(bool)
            if p.shape != r.shape:
                raise ValueError(
                    f"Mask shape mismatch: `predictions[{i}]` has shape {p.shape} "
                    f"but `references[{i}]` has shape {r.shape}."
                )
            fg_inter += int(np.count_nonzero(p & r))
            fg_union += int(np.count_nonzero(p | r))
            bg_inter += int(np.count_nonzero(~p & ~r))
            bg_union += int(np.count_nonzero(~p | ~r))
        return {
            "foreground_miou": fg_inter / fg_union if fg_union else 0.0,
            "background_miou": bg_inter / bg_union if bg_union else 0.0,
        }
