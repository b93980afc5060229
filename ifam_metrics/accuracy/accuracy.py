"""Average (top-1) accuracy, as reported by iFAM ("AA" / "Top-1 Acc.")."""

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
        check_lengths(predictions=predictions, references=references)
        check_not_empty(self, len(predictions), "`predictions` and `references`")
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def _compute(self, predictions, references):
        check_lengths(predictions=predictions, references=references)
        if len(predictions) == 0:
            raise ValueError("`predictions` and `references` are empty: accuracy is undefined.")
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        return {"accuracy": float(np.mean(predictions == references))}
