"""Average accuracy and worst-group accuracy (WGA) for group-robustness benchmarks.

Used by iFAM for Waterbirds (groups = class x background) and MetaShift (groups = class x context).
"""

import datasets
import evaluate
import numpy as np
from ifam_metrics.checks import check_lengths, check_not_empty

_CITATION = """\
@article{aniraj2025ifam,
  title  = {Inherently Faithful Attention Maps for Vision Transformers},
  author = {Aniraj, Ananthu and Dantas, Cassio F. and Ienco, Dino and Marcos, Diego},
  year   = {2025}
}
@inproceedings{sagawa2020dro,
  title     = {Distributionally Robust Neural Networks},
  author    = {Sagawa, Shiori and Koh, Pang Wei and Hashimoto, Tatsunori B. and Liang, Percy},
  booktitle = {ICLR},
  year      = {2020}
}
"""

_DESCRIPTION = """\
Group accuracy metrics. Every example carries an integer group id (e.g. Waterbirds:
group = 2 * label + place). With acc(S) = fraction of correct predictions over the examples in S:

    average_accuracy     = acc(all examples)                (the paper's "AA")
    per_group_accuracy   = {g: acc(examples of group g)}     for every group id that occurs
    worst_group_accuracy = min_g per_group_accuracy[g]       (the paper's "WGA")
    mean_group_accuracy  = unweighted mean of per_group_accuracy over the groups present
    worst_group          = the group id attaining worst_group_accuracy (smallest id on ties)

Groups with no samples are simply absent from `per_group_accuracy` and ignored by the min/mean.
All values are fractions in [0, 1].
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): ground-truth class ids.
    groups (`list` of `int`): group id of each example.
Returns:
    average_accuracy (`float`), worst_group_accuracy (`float`), mean_group_accuracy (`float`),
    per_group_accuracy (`dict` int -> float), worst_group (`int`).
Raises:
    ValueError: on length mismatch, empty input or missing group ids.
Examples:
    >>> from ifam_metrics import load_metric
    >>> m = load_metric("group_accuracy")
    >>> m.compute(predictions=[0, 0, 1, 1], references=[0, 1, 1, 1], groups=[0, 0, 1, 1])
    {'average_accuracy': 0.75, 'worst_group_accuracy': 0.5, 'mean_group_accuracy': 0.75, \
'per_group_accuracy': {0: 0.5, 1: 1.0}, 'worst_group': 0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GroupAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                    "groups": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://github.com/ananthu-aniraj/ifam"],
        )

    def add_batch(self, *, predictions=None, references=None, groups=None, **kwargs):
        """Add a batch of predictions, references and group ids (lengths are validated first)."""
        check_lengths(predictions=predictions, references=references, groups=groups)
        check_not_empty(self, len(predictions), "`predictions`, `references` and `groups`")
        if any(g is None for g in groups):
            raise ValueError("`groups` contains missing (None) group ids; every example needs an integer group id.")
        return super().add_batch(predictions=predictions, references=references, groups=groups, **kwargs)

    def add(self, *, prediction=None, reference=None, groups=None, **kwargs):
        """Add one example (`prediction=`, `reference=`, `groups=` its group id)."""
        return self.add_batch(predictions=[prediction], references=[reference], groups=[groups], **kwargs)

    def _compute(self, predictions, references, groups):
        check_lengths(predictions=predictions, references=references, groups=groups)
        if len(predictions) == 0:
            raise ValueError("`predictions`, `references` and `groups` are empty: group accuracy is undefined.")
        if any(g is None for g in groups):
            raise ValueError("`groups` contains missing (None) group ids; every example needs an integer group id.")
        correct = np.asarray(predictions) == np.asarray(references)
        groups = np.asarray(groups, dtype=np.int64)

        per_group = {}
        for g in np.unique(groups):  # sorted; only groups that actually have samples
            per_group[int(g)] = float(np.mean(correct[groups == g]))
        worst_group = min(per_group, key=lambda g: (per_group[g], g))
        return {
            "average_accuracy": float(np.mean(correct)),
            "worst_group_accuracy": per_group[worst_group],
            "mean_group_accuracy": float(np.mean(list(per_group.values()))),
            "per_group_accuracy": per_group,
            "worst_group": worst_group,
        }
