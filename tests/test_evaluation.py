"""ifam_train/evaluation.py (what the README's tables rest on) against values computed by hand on a tiny fixed batch.

A stub model returns fixed stage-2 logits, stage-1 logits and token masks for five 4x4-pixel images (patch 2, a 2x2
patch grid), so every metric below is worked out on paper:

    image              0     1     2     3     4
    label              0     1     1     0     1
    group              0     0     0     1     1
    p(class 1)        0.2   0.9   0.6   0.7   0.65  -> stage-2 predictions 0 1 1 1 1: correct 1 1 1 0 1
    stage-1 pred       1     1     0     0     0    -> correct 0 1 0 1 0
    visible patches    1     2     4     0     2    (of 4)
"""

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from torch import nn
from types import SimpleNamespace

from ifam_metrics import load_metric
from ifam_train.evaluation import compute_metrics, predict
from modeling_ifam import IFAMImageClassifierOutput

P_CLASS1 = [0.2, 0.9, 0.6, 0.7, 0.65]
LABELS = [0, 1, 1, 0, 1]
GROUPS = [0, 0, 0, 1, 1]
STAGE1_PREDICTIONS = [1, 1, 0, 0, 0]
TOKEN_MASKS = [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 1, 1]]  # row-major over the 2x2 grid


def reference_masks() -> torch.Tensor:
    masks = torch.zeros(5, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True  # exactly the visible patch: IoU 4 / 4
    masks[1, :2, :2] = True  # half of the two visible patches: 4 / 8
    # image 2: no foreground, every patch visible: 0 / 16
    masks[3, 3, 3] = True  # one pixel, nothing visible: 0 / 1
    masks[4, 2:, :] = True  # exactly the bottom row of patches: 8 / 8
    return masks


class StubModel(nn.Module):
    """Returns the table's outputs for the images whose index is written in their first pixel."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(patch_size=2)
        self.received_token_masks = []

    def forward(self, pixel_values, token_mask=None):
        index = pixel_values[:, 0, 0, 0].long()
        p = torch.tensor(P_CLASS1)[index]
        stage1 = torch.tensor(STAGE1_PREDICTIONS)[index]
        if token_mask is None:
            token_mask = torch.tensor(TOKEN_MASKS, dtype=torch.bool)[index]
        else:
            self.received_token_masks.append(token_mask)
        return IFAMImageClassifierOutput(
            logits=torch.stack([(1 - p).log(), p.log()], dim=-1),
            stage1_logits=nn.functional.one_hot(stage1, 2).float(),
            part_maps=torch.zeros(len(index), 3, 2, 2),
            token_mask=token_mask,
        )


def batches():
    pixel_values = torch.arange(5.0)[:, None, None, None].expand(5, 3, 4, 4)
    masks = reference_masks()
    return [  # two batches of unequal size: the results are concatenated in order
        {"pixel_values": pixel_values[s], "labels": torch.tensor(LABELS)[s], "group": torch.tensor(GROUPS)[s],
         "mask": masks[s]}
        for s in (slice(0, 3), slice(3, 5))
    ]


def test_predict_collects_the_hand_computed_arrays():
    results = predict(StubModel(), batches(), Accelerator(cpu=True))
    np.testing.assert_array_equal(results["predictions"], [0, 1, 1, 1, 1])
    np.testing.assert_array_equal(results["stage1_predictions"], STAGE1_PREDICTIONS)
    np.testing.assert_array_equal(results["references"], LABELS)
    np.testing.assert_array_equal(results["groups"], GROUPS)
    np.testing.assert_allclose(results["scores"][:, 1], P_CLASS1, atol=1e-6)
    np.testing.assert_allclose(results["coverage"], [0.25, 0.5, 1.0, 0.0, 0.5])
    # the token mask drawn at pixel resolution: patch (row, column) covers pixels [2 row : 2 row + 2, 2 column : ...]
    expected = torch.tensor(TOKEN_MASKS, dtype=torch.bool).view(5, 2, 2)
    expected = expected.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    np.testing.assert_array_equal(results["predicted_masks"], expected.numpy())
    assert results["predicted_masks"][0].sum() == 4 and results["predicted_masks"][0][:2, :2].all()
    np.testing.assert_array_equal(results["reference_masks"], reference_masks().numpy())


def test_metrics_of_the_tiny_batch_are_the_hand_computed_ones():
    metrics = compute_metrics(predict(StubModel(), batches(), Accelerator(cpu=True)), worst_group_auc=True)
    assert metrics["accuracy"] == pytest.approx(4 / 5)
    assert metrics["stage1_accuracy"] == pytest.approx(2 / 5)
    assert metrics["average_accuracy"] == pytest.approx(4 / 5)
    assert metrics["per_group_accuracy"] == {"0": pytest.approx(1.0), "1": pytest.approx(0.5)}
    assert metrics["worst_group_accuracy"] == pytest.approx(0.5)
    assert metrics["mean_group_accuracy"] == pytest.approx(0.75)
    assert metrics["coverage"] == pytest.approx(9 / 20)
    # foreground IoU over the whole split: (4 + 4 + 0 + 0 + 8) / (4 + 8 + 16 + 1 + 8)
    assert metrics["fg_miou"] == pytest.approx(16 / 37)
    # positives score 0.9, 0.6, 0.65 and negatives 0.2, 0.7: 4 of the 6 pairs ordered right
    assert metrics["roc_auc"] == pytest.approx(4 / 6)
    # group 1: one positive (0.65) below its one negative (0.7)
    assert metrics["worst_group_roc_auc"] == pytest.approx(0.0)


def test_ground_truth_source_gives_stage2_the_mask_patches():
    model = StubModel()
    results = predict(model, batches(), Accelerator(cpu=True), token_mask_source="ground_truth")
    given = torch.cat(model.received_token_masks)
    # patches at least half inside the reference mask (image 3's single pixel is a quarter of a patch)
    expected = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(given, expected)
    np.testing.assert_allclose(results["coverage"], [0.25, 0.25, 0.0, 0.0, 0.5])


def test_roc_auc_against_pair_counts():
    """ROC AUC is the fraction of (positive, negative) pairs ordered right, ties counting one half."""
    roc_auc = load_metric("roc_auc")
    # positives 0.5, 0.8; negatives 0.5, 0.3: pairs (0.5, 0.5) tie, the other three right -> 3.5 / 4
    assert roc_auc.compute(prediction_scores=[0.5, 0.5, 0.3, 0.8], references=[1, 0, 0, 1])["roc_auc"] == 0.875
    # a perfect ranking, a reversed one, and one of six pairs wrong
    assert roc_auc.compute(prediction_scores=[0.1, 0.2, 0.9], references=[0, 0, 1])["roc_auc"] == 1.0
    assert roc_auc.compute(prediction_scores=[0.9, 0.8, 0.1], references=[0, 0, 1])["roc_auc"] == 0.0
    result = roc_auc.compute(prediction_scores=[0.1, 0.4, 0.35, 0.8, 0.3, 0.9], references=[0, 0, 1, 1, 0, 1],
                             groups=[0, 0, 0, 1, 1, 1])
    # overall: positives 0.35, 0.8, 0.9 vs negatives 0.1, 0.4, 0.3 -> 0.35 loses to 0.4 only: 8 / 9
    assert result["roc_auc"] == pytest.approx(8 / 9)
    # group 0: 0.35 vs 0.1, 0.4 -> 1 / 2; group 1: 0.8, 0.9 vs 0.3 -> 1
    assert result["per_group_roc_auc"] == {0: pytest.approx(0.5), 1: pytest.approx(1.0)}
    assert result["worst_group_roc_auc"] == pytest.approx(0.5) and result["worst_group"] == 0
