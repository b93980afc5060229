"""ImageNet-9 Backgrounds Challenge: per-variant accuracy and BG-GAP (Xiao et al., ICLR 2021)."""


import datasets
import evaluate
import numpy as np
from ifam_metrics.checks import check_lengths, check_not_empty, release_cache

_CITATION = """\
@inproceedings{xiao2021noise,
  title     = {Noise or Signal: The Role of Image Backgrounds in Object Recognition},
  author    = {Xiao, Kai and Engstrom, Logan and Ilyas, Andrew and Madry, Aleksander},
  booktitle = {ICLR},
  year      = {2021}
}
@article{aniraj2025ifam,
  title  = {Inherently Faithful Attention Maps for Vision Transformers},
  author = {Aniraj, Ananthu and Dantas, Cassio F. and Ienco, Dino and Marcos, Diego},
  year   = {2025}
}
"""

_DESCRIPTION = """\
ImageNet-9 (IN-9) Backgrounds Challenge metrics. Each example is tagged with the IN-9 variant it
comes from ("original", "mixed_same", "mixed_rand", "mixed_next", "only_fg", "no_fg", "only_bg_b",
"only_bg_t", ...). Predictions and references must already live in the same label space (for an
ImageNet-1K model, map the 1000-way prediction to the 9 IN-9 super-classes first, as in the
challenge's `in9_eval.py`).

Variant names are normalised (stripped, lower-cased, '-' and ' ' replaced by '_'), so
"Mixed-Same" == "mixed_same". With acc(v) = fraction of correct predictions among examples of
variant v:

    per_variant_accuracy = {v: acc(v)}                   for every variant present
    accuracy_<v>         = acc(v)                        (flat copy of each entry, for logging)
    bg_gap               = acc(mixed_same) - acc(mixed_rand)

BG-GAP (lower is better) is the paper's Table 1-b "BG-GAP = MS - MR". Values are fractions
(a BG-GAP of 2.4 points in the paper is 0.024 here). Both "mixed_same" and "mixed_rand"
examples must be present, otherwise a ValueError is raised.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids (IN-9 label space).
    references (`list` of `int`): ground-truth class ids (IN-9 label space).
    variants (`list` of `str`): IN-9 variant name of each example.
Returns:
    bg_gap (`float`): acc(mixed_same) - acc(mixed_rand).
    per_variant_accuracy (`dict` str -> float): accuracy of each variant present.
    accuracy_<variant> (`float`): one flat key per variant present.
Raises:
    ValueError: on length mismatch, empty input, empty variant names, or when "mixed_same" or
    "mixed_rand" is missing.
Examples:
    >>> from ifam_metrics import load_metric
    >>> m = load_metric("bg_gap")
    >>> m.compute(predictions=[1, 1, 1, 0], references=[1, 1, 1, 1],
    ...           variants=["mixed_same", "mixed_same", "mixed_rand", "mixed_rand"])
    {'bg_gap': 0.5, 'per_variant_accuracy': {'mixed_rand': 0.5, 'mixed_same': 1.0}, \
'accuracy_mixed_rand': 0.5, 'accuracy_mixed_same': 1.0}
"""

MIXED_SAME = "mixed_same"
MIXED_RAND = "mixed_rand"


def normalize_variant(name):
    """'Mixed-Same ' -> 'mixed_same'."""
    if not isinstance(name, str):
        raise ValueError(f"`variants` must contain strings, got {name!r}.")
    norm = name.strip().lower().replace("-", "_").replace(" ", "_")
    if not norm:
        raise ValueError("`variants` contains an empty variant name.")
    return norm


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BgGap(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                    "variants": datasets.Value("string"),
                }
            ),
            reference_urls=[
                "https://github.com/MadryLab/backgrounds_challenge",
                "https://github.com/ananthu-aniraj/ifam",
            ],
        )

    def add_batch(self, *, predictions=None, references=None, variants=None, **kwargs):
        """Add a batch of predictions, references and IN-9 variant names (validated first)."""
        check_lengths(predictions=predictions, references=references, variants=variants)
        check_not_empty(self, len(predictions), "`predictions`, `references` and `variants`")
        for v in variants:
            normalize_variant(v)
        return super().add_batch(predictions=predictions, references=references, variants=variants, **kwargs)

    def _compute(self, predictions, references, variants):
        try:
            return self._bg_gap(predictions, references, variants)
        except ValueError:
            release_cache(self)
            raise

    def _bg_gap(self, predictions, references, variants):
        check_lengths(predictions=predictions, references=references, variants=variants)
        if len(predictions) == 0:
            raise ValueError("`predictions`, `references` and `variants` are empty: BG-GAP is undefined.")
        correct = np.asarray(predictions) == np.asarray(references)
        variants = np.asarray([normalize_variant(v) for v in variants], dtype=object)

        per_variant = {}
        for v in sorted(set(variants.tolist())):
            per_variant[v] = float(np.mean(correct[variants == v]))
        missing = [v for v in (MIXED_SAME, MIXED_RAND) if v not in per_variant]
        if missing:
            raise ValueError(
                f"`variants` has no example of {missing}; BG-GAP = acc(mixed_same) - acc(mixed_rand) needs both. "
                f"Variants present: {sorted(per_variant)}."
            )
        result = {
            "bg_gap": per_variant[MIXED_SAME] - per_variant[MIXED_RAND],
            "per_variant_accuracy": per_variant,
        }
        result.update({f"accuracy_{v}": acc for v, acc in per_variant.items()})
        return result
