"""Tests for the `ifam_metrics` evaluate modules, against values computed by hand."""

import math
import os
import socket

import numpy as np
import pytest

import evaluate  # a dependency: a failing import must fail the suite, not skip it

import ifam_metrics
from ifam_metrics import METRIC_NAMES, load_metric


@pytest.fixture(scope="module")
def metrics():
    return {name: load_metric(name) for name in METRIC_NAMES}


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def test_metric_names_match_folders():
    folders = sorted(
        d
        for d in os.listdir(ifam_metrics.METRICS_DIR)
        if os.path.isfile(os.path.join(ifam_metrics.METRICS_DIR, d, f"{d}.py"))
    )
    assert folders == sorted(METRIC_NAMES)


def test_unknown_metric_name():
    with pytest.raises(ValueError, match="Unknown iFAM metric"):
        load_metric("not_a_metric")


def test_load_with_evaluate_load_on_folder_path():
    # Standard layout: evaluate.load(<folder>) finds <folder>/<folder-name>.py.
    m = evaluate.load(os.path.join(ifam_metrics.METRICS_DIR, "accuracy"))
    assert isinstance(m, evaluate.EvaluationModule)
    assert m.compute(predictions=[1, 0], references=[1, 1]) == {"accuracy": 0.5}


def test_load_offline_no_hub(monkeypatch):
    """HF_HUB_OFFLINE=1 (and every network connection refused) must not prevent loading."""
    import datasets
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    # The env vars are read at import time, so flip the already-imported flags too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)

    for name in METRIC_NAMES:
        m = load_metric(name)
        assert isinstance(m, evaluate.EvaluationModule)
        assert m.name == name
    assert load_metric("accuracy").compute(predictions=[1, 2], references=[1, 1]) == {"accuracy": 0.5}


# --------------------------------------------------------------------------------------------
# accuracy
# --------------------------------------------------------------------------------------------


def test_accuracy_by_hand(metrics):
    # correct?  0:Y 1:Y 2:N 3:Y 4:Y 5:N 6:Y 7:N  -> 5 / 8 = 0.625
    preds = [0, 1, 2, 2, 1, 0, 3, 3]
    refs = [0, 1, 1, 2, 1, 2, 3, 0]
    assert metrics["accuracy"].compute(predictions=preds, references=refs) == {"accuracy": 0.625}
    # numpy input and incremental add_batch/add give the same value
    assert metrics["accuracy"].compute(predictions=np.array(preds), references=np.array(refs))["accuracy"] == 0.625
    m = metrics["accuracy"]
    m.add_batch(predictions=preds[:5], references=refs[:5])
    for p, r in zip(preds[5:], refs[5:]):
        m.add(prediction=p, reference=r)
    assert m.compute() == {"accuracy": 0.625}


def test_accuracy_errors(metrics):
    with pytest.raises(ValueError, match="`references` has 2 elements but `predictions` has 3"):
        metrics["accuracy"].compute(predictions=[0, 1, 1], references=[0, 1])
    with pytest.raises(ValueError, match="empty"):
        metrics["accuracy"].compute(predictions=[], references=[])


# --------------------------------------------------------------------------------------------
# group_accuracy
# --------------------------------------------------------------------------------------------

GA_PREDS = [1, 1, 0, 0, 1, 0, 1, 1, 0, 0]
GA_REFS = [1, 1, 0, 1, 1, 1, 1, 0, 0, 0]
GA_GROUPS = [0, 0, 0, 1, 1, 1, 3, 3, 3, 3]  # group 2 has no samples


def test_group_accuracy_by_hand(metrics):
    # correct = [1,1,1, 0,1,0, 1,0,1,1]
    # average = 7/10 = 0.7
    # group 0: 3/3 = 1 ; group 1: 1/3 ; group 3: 3/4 = 0.75 ; group 2 absent
    # worst = 1/3 (group 1) ; mean of groups = (1 + 1/3 + 3/4) / 3 = (25/12) / 3 = 25/36
    out = metrics["group_accuracy"].compute(predictions=GA_PREDS, references=GA_REFS, groups=GA_GROUPS)
    assert out["average_accuracy"] == pytest.approx(0.7)
    assert out["per_group_accuracy"] == pytest.approx({0: 1.0, 1: 1 / 3, 3: 0.75})
    assert set(out["per_group_accuracy"]) == {0, 1, 3}
    assert out["worst_group_accuracy"] == pytest.approx(1 / 3)
    assert out["worst_group"] == 1
    assert out["mean_group_accuracy"] == pytest.approx(25 / 36)


def test_group_accuracy_incremental_and_ties(metrics):
    m = metrics["group_accuracy"]
    m.add_batch(predictions=GA_PREDS[:4], references=GA_REFS[:4], groups=GA_GROUPS[:4])
    m.add_batch(predictions=GA_PREDS[4:], references=GA_REFS[4:], groups=GA_GROUPS[4:])
    assert m.compute()["worst_group_accuracy"] == pytest.approx(1 / 3)
    # groups 5 and 7 both at 1/2: the smaller id is reported
    out = m.compute(predictions=[1, 0, 1, 0], references=[1, 1, 1, 1], groups=[7, 7, 5, 5])
    assert out["worst_group_accuracy"] == 0.5 and out["worst_group"] == 5


def test_group_accuracy_errors(metrics):
    with pytest.raises(ValueError, match="`groups` has 2 elements but `predictions` has 3"):
        metrics["group_accuracy"].compute(predictions=[0, 1, 1], references=[0, 1, 1], groups=[0, 1])
    with pytest.raises(ValueError, match="empty"):
        metrics["group_accuracy"].compute(predictions=[], references=[], groups=[])
    with pytest.raises(ValueError, match="`groups` contains missing"):
        metrics["group_accuracy"].compute(predictions=[0, 1], references=[0, 1], groups=[0, None])
    # single-example add(): group 4 -> 1/1, group 2 -> 0/1
    m = metrics["group_accuracy"]
    m.add(prediction=1, reference=1, groups=4)
    m.add(prediction=0, reference=1, groups=2)
    assert m.compute()["per_group_accuracy"] == {2: 0.0, 4: 1.0}


# --------------------------------------------------------------------------------------------
# bg_gap
# --------------------------------------------------------------------------------------------


def test_bg_gap_by_hand(metrics):
    variants = ["original"] * 2 + ["mixed_same"] * 4 + ["mixed_rand"] * 4
    preds = [3, 5] + [0, 1, 2, 3] + [0, 1, 2, 3]
    refs = [3, 4] + [0, 1, 2, 0] + [1, 1, 0, 0]
    # original: 1/2 ; mixed_same: 3/4 ; mixed_rand: 1/4 (only index 1 correct)
    # bg_gap = 0.75 - 0.25 = 0.5
    out = metrics["bg_gap"].compute(predictions=preds, references=refs, variants=variants)
    assert out["per_variant_accuracy"] == {"original": 0.5, "mixed_same": 0.75, "mixed_rand": 0.25}
    assert out["accuracy_original"] == 0.5
    assert out["accuracy_mixed_same"] == 0.75
    assert out["accuracy_mixed_rand"] == 0.25
    assert out["bg_gap"] == pytest.approx(0.5)


def test_bg_gap_variant_names_normalised(metrics):
    # "Mixed-Same" == "mixed_same": acc(MS) = 2/2 = 1, acc(MR) = 1/3 -> gap = 2/3
    out = metrics["bg_gap"].compute(
        predictions=[1, 1, 1, 0, 0],
        references=[1, 1, 1, 1, 1],
        variants=["Mixed-Same", "mixed_same", "MIXED_RAND", "mixed-rand", "mixed_rand"],
    )
    assert out["per_variant_accuracy"] == pytest.approx({"mixed_same": 1.0, "mixed_rand": 1 / 3})
    assert out["bg_gap"] == pytest.approx(2 / 3)


def test_bg_gap_errors(metrics):
    with pytest.raises(ValueError, match="mixed_rand"):
        metrics["bg_gap"].compute(predictions=[1, 1], references=[1, 1], variants=["original", "mixed_same"])
    with pytest.raises(ValueError, match="mixed_same"):
        metrics["bg_gap"].compute(predictions=[1], references=[1], variants=["mixed_rand"])
    with pytest.raises(ValueError, match="`variants` has 1 elements but `predictions` has 2"):
        metrics["bg_gap"].compute(predictions=[1, 1], references=[1, 1], variants=["mixed_same"])
    with pytest.raises(ValueError, match="empty"):
        metrics["bg_gap"].compute(predictions=[], references=[], variants=[])
    # the module is still usable after a failed compute (cache released, no lock wait)
    m = metrics["bg_gap"]
    m.add_batch(predictions=[1], references=[1], variants=["mixed_same"])
    with pytest.raises(ValueError, match="mixed_rand"):
        m.compute()
    out = m.compute(predictions=[1, 0], references=[1, 1], variants=["mixed_same", "mixed_rand"])
    assert out["bg_gap"] == 1.0  # 1/1 - 0/1


# --------------------------------------------------------------------------------------------
# roc_auc
# --------------------------------------------------------------------------------------------
# SIIM-ACR-like toy set: 4 positives (pneumothorax), 4 negatives, `tube` = chest drain present.
AUC_REFS = [1, 1, 1, 1, 0, 0, 0, 0]
AUC_TUBE = [1, 1, 0, 0, 1, 1, 0, 0]
AUC_SCORES = [0.9, 0.8, 0.3, 0.6, 0.7, 0.2, 0.1, 0.4]
# Overall AUC = fraction of (pos, neg) pairs ranked correctly; negatives = {.7, .2, .1, .4}
#   .9 > 4 negs, .8 > 4, .3 > {.2,.1} = 2, .6 > {.2,.1,.4} = 3   -> 13 / 16 = 0.8125


def test_roc_auc_overall_by_hand(metrics):
    out = metrics["roc_auc"].compute(prediction_scores=AUC_SCORES, references=AUC_REFS)
    assert out == {"roc_auc": pytest.approx(13 / 16)}
    assert set(out) == {"roc_auc"}


def test_roc_auc_ties_count_half(metrics):
    # pairs: (.5 vs .5) tie = 1/2, (.5 vs .2) = 1, (.8 vs .5) = 1, (.8 vs .2) = 1 -> 3.5 / 4
    out = metrics["roc_auc"].compute(prediction_scores=[0.5, 0.5, 0.2, 0.8], references=[1, 0, 0, 1])
    assert out["roc_auc"] == pytest.approx(0.875)


def test_roc_auc_paper_robust_subset_by_hand(metrics):
    # Authors' definition (ifam prepare_siim_acr.py robust_test_set / Saab et al. robust_score):
    # group 1 = positives WITHOUT tube U negatives WITH tube = label XOR tube.
    groups = [r ^ t for r, t in zip(AUC_REFS, AUC_TUBE)]  # [0,0,1,1,1,1,0,0]
    # group 1: pos {.3,.6} vs neg {.7,.2}: .3>.2, .6>.2 -> 2/4 = 0.5   (within-group AUC)
    # group 0: pos {.9,.8} vs neg {.1,.4}: all 4 pairs -> 4/4 = 1.0
    out = metrics["roc_auc"].compute(prediction_scores=AUC_SCORES, references=AUC_REFS, groups=groups)
    assert out["roc_auc"] == pytest.approx(13 / 16)
    assert out["per_group_roc_auc"] == pytest.approx({0: 1.0, 1: 0.5})
    assert out["worst_group_roc_auc"] == pytest.approx(0.5)
    assert out["worst_group"] == 1


def test_roc_auc_positive_group_vs_all_negatives_by_hand(metrics):
    # groups only on positives (tube status), negatives ungrouped (None) -> each positive-only
    # group is scored against ALL negatives {.7,.2,.1,.4}:
    # group 1 (pos with tube {.9,.8}): 8/8 = 1.0
    # group 0 (pos without tube {.3,.6}): .3 -> 2, .6 -> 3  => 5/8 = 0.625
    groups = [t if r == 1 else None for r, t in zip(AUC_REFS, AUC_TUBE)]
    out = metrics["roc_auc"].compute(prediction_scores=AUC_SCORES, references=AUC_REFS, groups=groups)
    assert out["per_group_roc_auc"] == pytest.approx({0: 0.625, 1: 1.0})
    assert out["worst_group_roc_auc"] == pytest.approx(0.625)
    assert out["worst_group"] == 0
    assert out["roc_auc"] == pytest.approx(13 / 16)  # ungrouped examples still count overall


def test_roc_auc_negative_only_group_and_incremental(metrics):
    # negative-only groups are scored against ALL positives {.9,.8,.3,.6}:
    # group 1 (neg with tube {.7,.2}): .9->2 .8->2 .3->1 .6->1 = 6/8 = 0.75
    # group 0 (neg without tube {.1,.4}): .9->2 .8->2 .3->1 .6->2 = 7/8 = 0.875
    m = metrics["roc_auc"]
    m.add_batch(prediction_scores=AUC_SCORES[:4], references=AUC_REFS[:4])  # no groups given
    m.add_batch(prediction_scores=AUC_SCORES[4:6], references=AUC_REFS[4:6], groups=AUC_TUBE[4:6])
    m.add(prediction_scores=AUC_SCORES[6], reference=AUC_REFS[6], groups=AUC_TUBE[6])
    m.add(prediction_scores=AUC_SCORES[7], reference=AUC_REFS[7], groups=AUC_TUBE[7])
    out = m.compute()
    assert out["roc_auc"] == pytest.approx(13 / 16)
    assert out["per_group_roc_auc"] == pytest.approx({0: 0.875, 1: 0.75})
    assert out["worst_group_roc_auc"] == pytest.approx(0.75)
    assert out["worst_group"] == 1


def test_roc_auc_matches_sklearn_on_random_data(metrics):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    refs = rng.integers(0, 2, 50)
    scores = rng.random(50)
    out = metrics["roc_auc"].compute(prediction_scores=scores, references=refs)
    assert out["roc_auc"] == pytest.approx(roc_auc_score(refs, scores))


def test_roc_auc_errors(metrics):
    m = metrics["roc_auc"]
    with pytest.raises(ValueError, match="`references` must be binary"):
        m.compute(prediction_scores=[0.1, 0.2, 0.3], references=[0, 1, 2])
    with pytest.raises(ValueError, match="`references` contains only class 1"):
        m.compute(prediction_scores=[0.1, 0.2], references=[1, 1])
    with pytest.raises(ValueError, match="`references` has 3 elements but `prediction_scores` has 2"):
        m.compute(prediction_scores=[0.1, 0.2], references=[0, 1, 1])
    with pytest.raises(ValueError, match="`groups` has 1 elements but `prediction_scores` has 2"):
        m.compute(prediction_scores=[0.1, 0.2], references=[0, 1], groups=[0])
    with pytest.raises(ValueError, match="`prediction_scores` contains NaN"):
        m.compute(prediction_scores=[0.1, math.nan], references=[0, 1])
    with pytest.raises(ValueError, match="`prediction_scores` must be 1-D"):
        m.compute(prediction_scores=[[0.9, 0.1], [0.2, 0.8]], references=[0, 1])
    with pytest.raises(ValueError, match="not `predictions`"):
        m.compute(predictions=[0.1, 0.2], references=[0, 1])
    with pytest.raises(ValueError, match="empty"):
        m.compute(prediction_scores=[], references=[])


# --------------------------------------------------------------------------------------------
# foreground_miou
# --------------------------------------------------------------------------------------------
# img1 (2x3): P = [[1,1,0],[0,1,0]], G = [[1,0,0],[0,1,1]]
#   fg: I = {(0,0),(1,1)} = 2, U = {(0,0),(0,1),(1,1),(1,2)} = 4
#   bg: ~P = [[0,0,1],[1,0,1]], ~G = [[0,1,1],[1,0,0]] -> I = {(0,2),(1,0)} = 2, U = 4
# img2 (2x2): P = 0, G = [[0,1],[0,0]]           -> fg I = 0, U = 1 ; bg I = 3, U = 4
# img3 (3x3): P = G = plus sign (5 px)          -> fg I = 5, U = 5 ; bg I = 4, U = 4
# dataset-level: fg = (2+0+5)/(4+1+5) = 7/10 ; bg = (2+3+4)/(4+4+4) = 9/12 = 0.75
# (a per-image mean would give (1/2 + 0 + 1)/3 = 0.5 for fg: we follow the authors' global one)
FG_PREDS = [
    [[1, 1, 0], [0, 1, 0]],
    [[0, 0], [0, 0]],
    [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
]
FG_REFS = [
    [[1, 0, 0], [0, 1, 1]],
    [[0, 1], [0, 0]],
    [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
]


def test_foreground_miou_by_hand(metrics):
    out = metrics["foreground_miou"].compute(predictions=FG_PREDS, references=FG_REFS)
    assert out["foreground_miou"] == pytest.approx(0.7)
    assert out["background_miou"] == pytest.approx(0.75)
    assert set(out) == {"foreground_miou", "background_miou"}


def test_foreground_miou_numpy_and_incremental(metrics):
    m = metrics["foreground_miou"]
    preds = [np.array(p, dtype=bool) for p in FG_PREDS]
    refs = [np.array(r, dtype=np.int64) for r in FG_REFS]
    assert m.compute(predictions=preds, references=refs) == pytest.approx(
        {"foreground_miou": 0.7, "background_miou": 0.75}
    )
    m.add_batch(predictions=preds[:2], references=refs[:2])
    m.add(prediction=preds[2], reference=refs[2])
    assert m.compute() == pytest.approx({"foreground_miou": 0.7, "background_miou": 0.75})


def test_foreground_miou_empty_union_is_zero(metrics):
    # nothing predicted, nothing annotated: fg union = 0 -> 0.0 (torchmetrics zero_division=0);
    # background is perfect: 4/4 = 1.0
    out = metrics["foreground_miou"].compute(predictions=[np.zeros((2, 2))], references=[np.zeros((2, 2))])
    assert out == {"foreground_miou": 0.0, "background_miou": 1.0}


def test_foreground_miou_errors(metrics):
    m = metrics["foreground_miou"]
    shape_msg = r"`predictions\[0\]` has shape \(2, 3\) but `references\[0\]` has shape \(3, 2\)"
    with pytest.raises(ValueError, match=shape_msg):
        m.compute(predictions=[np.ones((2, 3))], references=[np.ones((3, 2))])
    with pytest.raises(ValueError, match=r"`references\[0\]` must be binary"):
        m.compute(predictions=[[[1, 0]]], references=[[[255, 0]]])
    with pytest.raises(ValueError, match=r"`predictions\[0\]` must be a 2-D mask"):
        m.compute(predictions=[[1, 0]], references=[[[1, 0]]])
    with pytest.raises(ValueError, match=r"`predictions\[0\]` is not a rectangular"):
        m.compute(predictions=[[[1, 0], [1]]], references=[[[1, 0], [1, 0]]])
    with pytest.raises(ValueError, match="`references` has 1 elements but `predictions` has 2"):
        m.compute(predictions=FG_PREDS[:2], references=FG_REFS[:1])
    with pytest.raises(ValueError, match="empty"):
        m.compute(predictions=[], references=[])
