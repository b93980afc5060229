"""Keypoint regression (Kp): how well the centroids of the discovered parts predict annotated keypoints."""

import datasets
import evaluate
import numpy as np
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
Keypoint regression error ("Kp", iFAM Table 6, PDiscoFormer Table 1): the 2-D centroids of the K discovered
foreground parts are mapped to every annotated keypoint by a linear regression fitted on one split (the training
split, `fit=True` examples) and scored on another (`fit=False`) as the mean L2 distance between predicted and true
keypoints, in bounding-box-normalised coordinates. Lower is better; a fraction (the papers print x100).

Procedure, following PDiscoFormer's `engine/eval_interpretability_nmi_ari_keypoint.py` (`eval_kpr`, also in iFAM):

1. NORMALISATION PER AXIS by the image's bounding box ``[x, y, width, height]``: ``u = (px - x) / width``,
   ``v = (py - y) / height`` for part centroids and keypoints alike (not the box diagonal). The box is the one of the
   image the model saw (resized and centre-cropped like the image; PDiscoFormer also keeps the resized width and
   height, not clipped to the crop).
2. For each keypoint l SEPARATELY: the fit rows are the fit images where l is VISIBLE, the scored rows the evaluation
   images where l is visible (INVISIBLE KEYPOINTS are neither fitted nor scored). The 2K centroid coordinates are
   standardised (mean / std of the fit rows, as sklearn's StandardScaler: a zero std scales by 1), the two keypoint
   coordinates too, and a least-squares linear map WITHOUT INTERCEPT (sklearn `LinearRegression(fit_intercept=False)`;
   here the minimum-norm `numpy.linalg.lstsq` solution, the same for a full-rank design) is fitted from the one to the
   other; predictions are un-standardised.
3. ABSENT PARTS: a part is present in an image when its assignment probability exceeds 0.5 somewhere (PDiscoFormer's
   "active" parts; the command computes it). The standardised coordinates of an absent part are set to 0, i.e. its
   centroid is replaced by the fit split's mean centroid, in fitting and in scoring.
4. The error is the mean over every scored (image, keypoint) pair: ``sum_l sum_i ||pred_il - true_il|| / #pairs``.

Where we differ from PDiscoFormer, and why: the standardisation statistics of a part's coordinates are taken over
the fit rows where the part is PRESENT (PDiscoFormer includes absent parts' soft centroids, which the masking of
step 3 then discards; here an absent part may have no centroid at all: a part that token removal empties has an
all-zero map, so its centroid is NaN, which is allowed only for absent parts). A keypoint visible in no fit image
cannot be fitted: its scored rows are left out and it is reported with a None error.
"""

_KWARGS_DESCRIPTION = """
Args:
    part_centroids (`list` of `[K, 2]` arrays): per image, the (x, y) centroid of each foreground part in pixels of the
        model's input (NaN allowed for absent parts).
    part_presence (`list` of `[K]` arrays): 1 where the part is present in the image, 0 where absent.
    keypoints (`list` of `[L, 3]` arrays): per image, (x, y, visible) of each annotated keypoint, same frame.
    bounding_boxes (`list` of `[4]` arrays): per image, the object's box (x, y, width, height), same frame.
    fit (`list` of `bool`): True for the images the regression is fitted on, False for the scored ones.
Returns:
    keypoint_regression_error (`float`): mean normalised L2 error over the scored (image, keypoint) pairs.
    per_keypoint_error (`list` of `float` or None): the same per keypoint (None: not scored).
    num_keypoints (`int`): the scored (image, keypoint) pairs.
Raises:
    ValueError: on length or shape mismatch, empty input, a non-positive box side, a NaN centroid of a present part,
        or when nothing can be scored (no fit image, no visible scored keypoint).
"""


def _arrays(part_centroids, part_presence, keypoints, bounding_boxes, fit):
    """Validated float64/bool arrays: centroids [N, K, 2], presence [N, K], keypoints [N, L, 3], boxes [N, 4], fit [N]."""
    try:
        centroids = np.asarray([np.asarray(c, dtype=np.float64).reshape(-1, 2) for c in part_centroids])
        presence = np.asarray([np.asarray(p).ravel() > 0 for p in part_presence])
        points = np.asarray([np.asarray(k, dtype=np.float64).reshape(-1, 3) for k in keypoints])
        boxes = np.asarray([np.asarray(b, dtype=np.float64).ravel() for b in bounding_boxes])
    except ValueError as err:
        raise ValueError(f"Every image must have the same number of parts and of keypoints: {err}") from None
    fit = np.asarray(fit, dtype=bool).ravel()
    n = len(fit)
    if centroids.shape[:1] != (n,) or presence.shape != centroids.shape[:2]:
        raise ValueError(f"`part_presence` {presence.shape} does not match `part_centroids` {centroids.shape}.")
    if boxes.shape != (n, 4):
        raise ValueError(f"`bounding_boxes` must be [x, y, width, height] per image, got shape {boxes.shape}.")
    if (boxes[:, 2:] <= 0).any():
        raise ValueError("A bounding box has a non-positive width or height: the normalisation is undefined.")
    if np.isnan(centroids[presence]).any():
        raise ValueError("A present part has a NaN centroid; only absent parts may.")
    return centroids, presence, points, boxes, fit


def keypoint_regression(centroids, presence, points, boxes, fit):
    """The computation on validated arrays (see the module description). Returns the metric's dictionary."""
    origin, size = boxes[:, None, :2], boxes[:, None, 2:]
    x = ((centroids - origin) / size)  # [N, K, 2], normalised per axis
    y = (points[..., :2] - origin) / size  # [N, L, 2]
    present = np.repeat(presence, 2, axis=1)  # [N, 2K], per coordinate
    x = x.reshape(len(x), -1)
    visible = points[..., 2] > 0
    total, count, per_keypoint = 0.0, 0, []
    for landmark in range(points.shape[1]):
        rows_fit, rows_eval = fit & visible[:, landmark], ~fit & visible[:, landmark]
        if not rows_eval.any() or not rows_fit.any():
            per_keypoint.append(None)
            continue
        x_fit, mask_fit = x[rows_fit], present[rows_fit]
        mean, scale = _column_stats(x_fit, mask_fit)
        standardise = lambda values, mask: np.where(mask, (np.nan_to_num(values) - mean) / scale, 0.0)  # noqa: E731
        y_fit = y[rows_fit, landmark]
        y_mean, y_scale = _column_stats(y_fit, np.ones_like(y_fit, dtype=bool))
        weights = np.linalg.lstsq(standardise(x_fit, mask_fit), (y_fit - y_mean) / y_scale, rcond=None)[0]
        predicted = standardise(x[rows_eval], present[rows_eval]) @ weights * y_scale + y_mean
        errors = np.linalg.norm(predicted - y[rows_eval, landmark], axis=-1)
        per_keypoint.append(float(errors.mean()))
        total += float(errors.sum())
        count += len(errors)
    if count == 0:
        raise ValueError("No keypoint could be scored: every keypoint needs visible instances among both the fit "
                         "images (fit=True) and the scored ones (fit=False).")
    return {"keypoint_regression_error": total / count, "per_keypoint_error": per_keypoint, "num_keypoints": count}


def _column_stats(values, mask):
    """Mean and standard deviation (ddof 0) of each column over its masked rows; a zero or undefined std gives 1."""
    counts = mask.sum(axis=0)
    filled = np.where(mask, np.nan_to_num(values), 0.0)
    mean = filled.sum(axis=0) / np.maximum(counts, 1)
    var = np.where(mask, (np.nan_to_num(values) - mean) ** 2, 0.0).sum(axis=0) / np.maximum(counts, 1)
    std = np.sqrt(var)
    return mean, np.where(std > 0, std, 1.0)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class KeypointRegression(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "part_centroids": datasets.List(datasets.List(datasets.Value("float64"))),
                "part_presence": datasets.List(datasets.Value("bool")),
                "keypoints": datasets.List(datasets.List(datasets.Value("float64"))),
                "bounding_boxes": datasets.List(datasets.Value("float64")),
                "fit": datasets.Value("bool"),
            }),
            reference_urls=[
                "https://github.com/ananthu-aniraj/pdiscoformer/blob/main/engine/eval_interpretability_nmi_ari_keypoint.py",
            ],
        )

    def add_batch(self, *, part_centroids=None, part_presence=None, keypoints=None, bounding_boxes=None, fit=None,
                  **kwargs):
        """Add a batch of images: part centroids and presence, keypoints, boxes, and whether they are fit images."""
        check_lengths(part_centroids=part_centroids, part_presence=part_presence, keypoints=keypoints,
                      bounding_boxes=bounding_boxes, fit=fit)
        check_not_empty(self, len(fit), "The inputs")
        centroids, presence, points, boxes, fit = _arrays(part_centroids, part_presence, keypoints, bounding_boxes,
                                                          fit)
        return super().add_batch(part_centroids=centroids.tolist(), part_presence=presence.tolist(),
                                 keypoints=points.tolist(), bounding_boxes=boxes.tolist(), fit=fit.tolist(), **kwargs)

    def add(self, **kwargs):
        """Use `add_batch` (one image: lists of length one)."""
        raise NotImplementedError("Use add_batch (one image: lists of length one).")

    def _compute(self, part_centroids, part_presence, keypoints, bounding_boxes, fit):
        check_lengths(part_centroids=part_centroids, part_presence=part_presence, keypoints=keypoints,
                      bounding_boxes=bounding_boxes, fit=fit)
        if len(fit) == 0:
            raise ValueError("The inputs are empty: keypoint regression is undefined.")
        return keypoint_regression(*_arrays(part_centroids, part_presence, keypoints, bounding_boxes, fit))
