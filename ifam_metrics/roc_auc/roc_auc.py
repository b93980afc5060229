"""Binary ROC AUC with optional worst-group AUC (iFAM's SIIM-ACR "AUC" and "WG AUC")."""


import datasets
import evaluate
import numpy as np
from sklearn.metrics import roc_auc_score
from ifam_metrics.checks import check_lengths, check_not_empty, release_cache

_CITATION = """\
@inproceedings{saab2022spatial,
  title     = {Reducing Reliance on Spurious Features in Medical Image Classification with Spatial Specificity},
  author    = {Saab, Khaled and Hooper, Sarah and Chen, Mayee and Zhang, Michael and Rubin, Daniel and R{\\'e}, Christopher},
  booktitle = {Machine Learning for Healthcare Conference},
  year      = {2022}
}
@article{aniraj2025ifam,
  title  = {Inherently Faithful Attention Maps for Vision Transformers},
  author = {Aniraj, Ananthu and Dantas, Cassio F. and Ienco, Dino and Marcos, Diego},
  year   = {2025}
}
"""

_DESCRIPTION = """\
Binary area under the ROC curve (sklearn.metrics.roc_auc_score; tied scores count 1/2), with an
optional worst-group AUC. Values are fractions in [0, 1].

    roc_auc = AUC over all examples (references must contain both 0 and 1).

If `groups` is given (one integer id per example, or None for an example that belongs to no
group), each group g that occurs gets an AUC, defined so that it is always computable:

  * g contains positives AND negatives -> AUC over the examples of g only (within-group AUC);
  * g contains only positives          -> AUC over (positives of g) U (ALL negatives of the input);
  * g contains only negatives          -> AUC over (ALL positives of the input) U (negatives of g).

    per_group_roc_auc   = {g: AUC(g)},  worst_group_roc_auc = min_g AUC(g),
    worst_group         = the argmin (smallest id on ties).

Examples with group None take part in `roc_auc` and in the "ALL negatives / ALL positives" pools,
but form no group. If `groups` is omitted (or all None) only `roc_auc` is returned.

SIIM-ACR (pneumothorax; spurious chest drains). iFAM reports "WG AUC" on "a curated subset without
this artifact". The authors' code (ananthu-aniraj/ifam `prepare_siim_acr.py`, `robust_test_set`,
following Saab et al.'s `notebooks/cxr_evaluation.ipynb`, `robust_score`) evaluates the AUC on
(positives WITHOUT a chest tube) U (negatives WITH a chest tube). To reproduce it exactly:

    groups = [1 if (label == 1 and tube == 0) or (label == 0 and tube == 1) else 0 ...]
    -> per_group_roc_auc[1] is the robust-set AUC ("WG AUC"); per_group_roc_auc[0] is the
       complementary (spuriously easy) subset; worst_group_roc_auc is the smaller of the two,
       i.e. the robust set for any model that exploits the tube shortcut.

The alternative "positives of a group vs all negatives" definition is obtained with
    groups = [tube if label == 1 else None ...]
    -> per_group_roc_auc[0] = AUC(positives without tube vs all negatives), worst over positive groups.
"""

_KWARGS_DESCRIPTION = """
Args:
    prediction_scores (`list` of `float`): score of the positive class (probability or logit), 1-D.
    references (`list` of `int`): binary ground truth, 0 or 1 (booleans accepted).
    groups (`list` of `int` or None, *optional*): group id of each example (None = no group).
Returns:
    roc_auc (`float`): AUC over all examples.
    worst_group_roc_auc (`float`), per_group_roc_auc (`dict` int -> float), worst_group (`int`):
        only when at least one group id is given.
Raises:
    ValueError: on length mismatch, empty input, non-binary `references`, `references` with a single
    class, non-finite or non-1-D `prediction_scores`.
Examples:
    >>> from ifam_metrics import load_metric
    >>> m = load_metric("roc_auc")
    >>> m.compute(prediction_scores=[0.1, 0.4, 0.35, 0.8], references=[0, 0, 1, 1])
    {'roc_auc': 0.75}
"""


def _as_binary_references(references):
    refs = np.asarray(references)
    if refs.ndim != 1:
        raise ValueError(f"`references` must be 1-D (one 0/1 label per example), got shape {refs.shape}.")
    if refs.size and refs.dtype == object:
        raise ValueError("`references` must contain only 0/1 labels (found missing or non-numeric values).")
    if refs.dtype == bool:
        return refs.astype(np.int64)
    bad = sorted(set(np.unique(refs).tolist()) - {0, 1})
    if bad:
        raise ValueError(f"`references` must be binary (0/1) for roc_auc; found non-binary values {bad[:10]}.")
    return refs.astype(np.int64)


def _as_scores(prediction_scores):
    try:
        scores = np.asarray(prediction_scores, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("`prediction_scores` must be numeric (one positive-class score per example).") from None
    if scores.ndim != 1:
        raise ValueError(
            f"`prediction_scores` must be 1-D (the score of the positive class per example), got shape {scores.shape}."
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("`prediction_scores` contains NaN or infinite values.")
    return scores


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RocAuc(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "prediction_scores": datasets.Value("float64"),
                    "references": datasets.Value("int64"),
                    # Nullable: None = example belongs to no group / groups not given.
                    "groups": datasets.Value("int64"),
                }
            ),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.roc_auc_score.html",
                "https://github.com/ananthu-aniraj/ifam/blob/main/prepare_siim_acr.py",
                "https://github.com/khaledsaab/spatial_specificity/blob/main/notebooks/cxr_evaluation.ipynb",
            ],
        )

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Compute the metric; `groups` is optional."""
        if predictions is not None:
            raise ValueError("roc_auc takes `prediction_scores` (positive-class scores), not `predictions`.")
        kwargs.setdefault("groups", None)
        return super().compute(references=references, **kwargs)

    def add_batch(self, *, prediction_scores=None, references=None, groups=None, predictions=None, **kwargs):
        """Add a batch of positive-class scores, 0/1 references and optional group ids."""
        if predictions is not None:
            raise ValueError("roc_auc takes `prediction_scores` (positive-class scores), not `predictions`.")
        check_lengths(prediction_scores=prediction_scores, references=references)
        check_not_empty(self, len(references), "`prediction_scores` and `references`")
        if groups is None:
            groups = [None] * len(references)
        check_lengths(prediction_scores=prediction_scores, references=references, groups=groups)
        _as_scores(prediction_scores)
        _as_binary_references(references)
        return super().add_batch(prediction_scores=prediction_scores, references=references, groups=groups, **kwargs)

    def add(self, *, prediction=None, reference=None, prediction_scores=None, groups=None, **kwargs):
        """Add one example (`prediction_scores=`, `reference=`, optional `groups=`)."""
        if prediction is not None:
            raise ValueError("roc_auc takes `prediction_scores` (positive-class score), not `prediction`.")
        return self.add_batch(
            prediction_scores=[prediction_scores], references=[reference], groups=[groups], **kwargs
        )

    def _compute(self, prediction_scores, references, groups):
        try:
            return self._roc_auc(prediction_scores, references, groups)
        except ValueError:
            release_cache(self)
            raise

    def _roc_auc(self, prediction_scores, references, groups):
        check_lengths(prediction_scores=prediction_scores, references=references, groups=groups)
        if len(references) == 0:
            raise ValueError("`prediction_scores` and `references` are empty: ROC AUC is undefined.")
        scores = _as_scores(prediction_scores)
        refs = _as_binary_references(references)
        n_pos = int(refs.sum())
        if n_pos == 0 or n_pos == len(refs):
            raise ValueError(
                f"`references` contains only class {int(refs[0])}; ROC AUC needs both positives (1) and negatives (0)."
            )
        result = {"roc_auc": float(roc_auc_score(refs, scores))}

        has_group = np.array([g is not None for g in groups], dtype=bool)
        if not has_group.any():
            return result
        group_ids = np.array([g if g is not None else 0 for g in groups], dtype=np.int64)
        pos, neg = refs == 1, refs == 0

        per_group = {}
        for g in np.unique(group_ids[has_group]):
            in_g = has_group & (group_ids == g)
            g_pos, g_neg = bool((in_g & pos).any()), bool((in_g & neg).any())
            if g_pos and g_neg:
                subset = in_g  # within-group AUC
            elif g_pos:
                subset = (in_g & pos) | neg  # group's positives vs all negatives
            else:
                subset = pos | (in_g & neg)  # all positives vs group's negatives
            per_group[int(g)] = float(roc_auc_score(refs[subset], scores[subset]))
        worst_group = min(per_group, key=lambda k: (per_group[k], k))
        result.update(
            {
                "worst_group_roc_auc": per_group[worst_group],
                "per_group_roc_auc": per_group,
                "worst_group": worst_group,
            }
        )
        return result
