"""iFAM evaluation metrics, shipped as local Hugging Face ``evaluate`` modules.

Each metric lives in its own folder in the standard ``evaluate`` layout
(``ifam_metrics/<name>/<name>.py`` defining an ``evaluate.Metric`` subclass), so it can be
loaded either through :func:`load_metric` or directly with
``evaluate.load("/path/to/ifam_metrics/<name>")``.

Loading never touches the Hugging Face Hub: :func:`load_metric` always hands ``evaluate.load``
the absolute path of an existing ``<name>.py`` script, which ``evaluate`` resolves with its
local-script factory (the Hub branch is only reached for bare names such as ``"accuracy"``).
It therefore works with ``HF_HUB_OFFLINE=1`` / ``HF_EVALUATE_OFFLINE=1`` and without network.

Metrics (all values are fractions in [0, 1], never percentages):

* ``accuracy``        -> ``accuracy``
* ``group_accuracy``  -> ``average_accuracy``, ``worst_group_accuracy``, ``mean_group_accuracy``,
  ``per_group_accuracy``, ``worst_group``
* ``bg_gap``          -> ``bg_gap``, ``per_variant_accuracy`` and ``<variant>_accuracy`` per variant
* ``roc_auc``         -> ``roc_auc`` (+ ``worst_group_roc_auc``, ``per_group_roc_auc``, ``worst_group``)
* ``foreground_miou`` -> ``foreground_miou``, ``background_miou``
* ``part_nmi_ari``    -> ``nmi``, ``ari``, ``num_keypoints`` (part found at each visible keypoint vs its identity)
* ``keypoint_regression`` -> ``keypoint_regression_error`` (Kp: part centroids -> keypoints by a linear regression,
  mean L2 error in bounding-box-normalised coordinates), ``per_keypoint_error``, ``num_keypoints``

Example::

    from ifam_metrics import load_metric
    wga = load_metric("group_accuracy")
    wga.compute(predictions=[0, 1, 1], references=[0, 1, 0], groups=[0, 1, 1])
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only; keep `import ifam_metrics` light
    import evaluate

__all__ = ["METRIC_NAMES", "METRICS_DIR", "load_metric", "metric_path"]

METRIC_NAMES: tuple[str, ...] = (
    "accuracy",
    "group_accuracy",
    "bg_gap",
    "roc_auc",
    "foreground_miou",
    "part_nmi_ari",
    "keypoint_regression",
)

#: Folder holding one sub-folder per metric module.
METRICS_DIR: str = os.path.dirname(os.path.abspath(__file__))


def metric_path(name: str) -> str:
    """Absolute path of the ``evaluate`` script implementing metric ``name``."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown iFAM metric {name!r}; available metrics: {list(METRIC_NAMES)}")
    path = os.path.join(METRICS_DIR, name, f"{name}.py")
    if not os.path.isfile(path):  # pragma: no cover - packaging error
        raise FileNotFoundError(f"Metric script for {name!r} not found at {path}")
    return path


def load_metric(name: str, **kwargs: Any) -> evaluate.EvaluationModule:
    """Load one of the project's metrics (see :data:`METRIC_NAMES`) fully offline.

    ``kwargs`` are forwarded to :func:`evaluate.load` (e.g. ``keep_in_memory=True``,
    ``experiment_id=...``, ``num_process``/``process_id`` for distributed evaluation).
    """
    import evaluate

    # Passing the absolute path of the script (not a bare name) makes `evaluate` use its
    # LocalEvaluationModuleFactory; the Hub is never queried, whatever HF_HUB_OFFLINE says.
    return evaluate.load(metric_path(name), **kwargs)
