"""NMI and ARI between discovered parts and annotated keypoints (PDiscoFormer's part-consistency scores)."""

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
"""

_DESCRIPTION = """\
Normalized mutual information (NMI) and adjusted Rand index (ARI) between the part found at every visible keypoint
and that keypoint's identity, pooled over all images: each visible keypoint is one sample, its "cluster" is the part
assigned at its location, its "class" is its index in the annotation (CUB: 15 bird parts). High values mean a given
part always lands on the same keypoints (consistent parts across images).

    nmi = sklearn.metrics.normalized_mutual_info_score(keypoint_index, part_at_keypoint)   # arithmetic mean norm.
    ari = sklearn.metrics.adjusted_rand_score(keypoint_index, part_at_keypoint)

Conventions, following PDiscoFormer's `engine/eval_interpretability_nmi_ari_keypoint.py` (`eval_nmi_ari_cub`):

* Only visible keypoints count (CUB's `visible` flag; a keypoint cut off by the centre crop is invisible). The
  keypoint of image i at position j of its list has identity j.
* The BACKGROUND IS A CLUSTER. The part at a keypoint is the arg-max over all K + 1 part maps (background included),
  so a keypoint that falls on the background is "assigned to the background part". The plain variant clusters
  foreground parts only and drops keypoints on the background; PDiscoFormer's does not, so foreground-discovery
  errors lower its NMI/ARI. We follow PDiscoFormer (published numbers are comparable); `background_index=` gives the
  plain variant (samples whose prediction equals it are dropped).
* Where in the map: the metric takes the part index already looked up. The command
  (`ifam_interventions.evaluate_parts.parts_at_keypoints`) does it as PDiscoFormer: soft part maps upsampled bilinearly
  (align_corners=False) to the input resolution, arg-max at the pixel holding the keypoint. (PDiscoFormer samples
  with `grid_sample(mode="nearest")`, whose half-pixel ties round to even; we take the pixel containing the point.)

Values are fractions (the papers print x100).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): per image, the part index found at each annotated keypoint (the
        background is one more index, K for K foreground parts); any value (e.g. -1) for invisible keypoints.
    visibility (`list` of `list` of `int`): per image, 1 for a visible keypoint, 0 for an invisible one; same
        lengths as `predictions`.
    background_index (`int`, *optional*): drop the visible keypoints assigned to this part (foreground-only variant).
Returns:
    nmi (`float`), ari (`float`), num_keypoints (`int`: the visible keypoints scored).
Raises:
    ValueError: on length mismatch, empty input, or when no visible keypoint is left.
Examples:
    >>> from ifam_metrics import load_metric
    >>> m = load_metric("part_nmi_ari")
    >>> m.compute(predictions=[[0, 1], [0, 1]], visibility=[[1, 1], [1, 1]])
    {'nmi': 1.0, 'ari': 1.0, 'num_keypoints': 4}
"""


def _pairs(predictions, visibility):
    """(keypoint index, part) arrays of the visible keypoints."""
    keypoints, parts = [], []
    for i, (pred, vis) in enumerate(zip(predictions, visibility)):
        pred, vis = np.asarray(pred, dtype=np.int64).ravel(), np.asarray(vis).ravel()
        if pred.shape != vis.shape:
            raise ValueError(f"Image {i}: {len(pred)} predictions but {len(vis)} visibility flags.")
        visible = vis > 0
        keypoints.append(np.nonzero(visible)[0])
        parts.append(pred[visible])
    if not keypoints:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(keypoints), np.concatenate(parts)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PartNmiAri(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.List(datasets.Value("int64")),
                "visibility": datasets.List(datasets.Value("int64")),
            }),
            reference_urls=[
                "https://github.com/ananthu-aniraj/pdiscoformer/blob/main/engine/eval_interpretability_nmi_ari_keypoint.py",
            ],
        )

    def add_batch(self, *, predictions=None, visibility=None, **kwargs):
        """Add the parts found at the keypoints of a batch of images, with the keypoints' visibility."""
        check_lengths(predictions=predictions, visibility=visibility)
        check_not_empty(self, len(predictions), "`predictions` and `visibility`")
        predictions = [np.asarray(p, dtype=np.int64).ravel().tolist() for p in predictions]
        visibility = [(np.asarray(v).ravel() > 0).astype(np.int64).tolist() for v in visibility]
        _pairs(predictions, visibility)  # validates the per-image lengths
        return super().add_batch(predictions=predictions, visibility=visibility, **kwargs)

    def add(self, *, prediction=None, visibility=None, **kwargs):
        """Add the parts found at one image's keypoints, with the keypoints' visibility."""
        return self.add_batch(predictions=[prediction], visibility=[visibility], **kwargs)

    def _compute(self, predictions, visibility, background_index=None):
        from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

        check_lengths(predictions=predictions, visibility=visibility)
        keypoints, parts = _pairs(predictions, visibility)
        if background_index is not None:
            keep = parts != background_index
            keypoints, parts = keypoints[keep], parts[keep]
        if len(keypoints) == 0:
            raise ValueError("No visible keypoint to score: NMI and ARI are undefined.")
        return {
            "nmi": float(normalized_mutual_info_score(keypoints, parts)),
            "ari": float(adjusted_rand_score(keypoints, parts)),
            "num_keypoints": int(len(keypoints)),
        }
