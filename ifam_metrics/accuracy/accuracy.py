"""Average (top-1) accuracy, as reported by iFAM ("AA" / "Top-1 Acc.")."""

import datasets
import evaluate
import numpy as np

_CITATION = """\
@article{aniraj2025ifam,
  title  = {Inherently Faithful Attention Maps for Vision Transformers},
  author = {Aniraj, Ananthu and Dantas, Cassio F. and Ienco, Dino and Marcos, Diego},
  year   = {2025}
}
"""

_DESCRIPTION = """\
Average accuracy: the fraction of examples whose predicted class id equals the reference class id,
    accuracy = (1 / N) * sum_i [predictions_i == references_i].
Returned as a fraction in [0, 1] (the paper prints it as a percentage).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids, one per example.
    references (`list` of `int`): ground-truth class ids, same length as `predictions`.
Returns:
    accuracy (`float`): fraction of correct predictions, in [0, 1].
Raises:
    ValueError: if the inputs have different lengths or are empty.
Examples:
    >>> from ifam_metrics import load_metric
    >>> load_metric("accuracy").compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2])
    {'accuracy': 0.75}
"""


def _check_lengths(**inputs):
    """Raise a ValueError naming the input whose length differs from the first one."""
    lengths = {}
    for name, value in inputs.items():
        if value is None:
            raise ValueError(f"`{name}` is required but was not given.")
        try:
            lengths[name] = len(value)
        except TypeError:
            raise ValueError(f"`{name}` must be a sequence (list/array), got {type(value).__name__}.") from None
    first, n = next(iter(lengths.items()))
    for name, length in lengths.items():
        if length != n:
            raise ValueError(
                f"Length mismatch: `{name}` has {length} elements but `{first}` has {n}."
            )


def _check_not_empty(module, n, names):
    """Reject an empty first batch (nothing accumulated yet): the metric would be undefined."""
    if n == 0 and module.writer is None:
        raise ValueError(f"{names} are empty: the metric is undefined on empty input.")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://github.com/ananthu-aniraj/ifam"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of predictions and references (lengths are validated first)."""
        _check_lengths(predictions=predictions, references=references)
        _check_not_empty(self, len(predictions), "`predictions` and `references`")
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def _compute(self, predictions, references):
        _check_lengths(predictions=predictions, references=references)
        if len(predictions) == 0:
            raise ValueError("`predictions` and `references` are empty: accuracy is undefined.")
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        return {"accuracy": float(np.mean(predictions == references))}
