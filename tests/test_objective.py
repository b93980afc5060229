"""The training objective is the configured weighted sum of its terms, each computed here independently of the model's
own `loss_terms`; the equivariance term is checked on a transform whose inverse is known exactly (a quarter turn);
and train.py clips the gradient of a step whose gradient is large."""

import torch
import torch.nn.functional as F

from conftest import run_training, tiny_model
from modeling_ifam import part_losses

LABELS = torch.tensor([0, 1, 2, 0])
# distinct weights, none of them 1, so that a term weighted wrongly (or not at all) changes the sum
WEIGHTS = dict(stage1_classification=0.7, stage2_classification=1.9, presence=0.3, equivariance=2.3,
               orthogonality=0.45, total_variation=1.3, entropy=0.15, background=3.1, concentration=0.6)
DETERMINISTIC = dict(gumbel_softmax=False, part_dropout=0.0, part_dropout_stage2=0.0)


def weighted_model(**overrides):
    weights = {f"{name}_loss_weight": value for name, value in WEIGHTS.items()}
    return tiny_model(**{**weights, **DETERMINISTIC, **overrides})


def entropy(maps):  # nats per pixel, 0 log 0 = 0
    return -(maps * torch.where(maps > 0, maps.log(), torch.zeros(()))).sum(1).mean()


def total_variation(maps):
    b, _, h, w = maps.shape
    return ((maps[:, :, 1:] - maps[:, :, :-1]).abs().sum() + (maps[..., 1:] - maps[..., :-1]).abs().sum()) / (b * h * w)


def presence(maps):  # 1 - mean over foreground parts of the batch-wide peak of the 3x3-smoothed map
    pooled = F.avg_pool2d(maps[:, :-1], 3, stride=1)
    return 1 - pooled.amax(dim=(0, 2, 3)).mean()


def foreground_cosine_gap(maps, aligned):
    fg, fg_aligned = maps[:, :-1].flatten(2), aligned[:, :-1].flatten(2)
    cosine = (fg * fg_aligned).sum(-1) / (fg.norm(dim=-1) * fg_aligned.norm(dim=-1))
    return 1 - cosine.mean()


def independent_terms(model, pixel_values, outputs):
    maps = outputs.part_maps
    stage1 = model.stage1(pixel_values)  # for the part features, which the output does not carry
    torch.testing.assert_close(stage1.part_maps, maps)
    log_p2, log_p1 = outputs.logits.log_softmax(-1), outputs.stage1_logits.log_softmax(-1)
    return {
        "stage2_classification": -log_p2[torch.arange(4), LABELS].mean(),
        "stage1_classification": -log_p1[torch.arange(4), LABELS].mean(),
        "presence": presence(maps),
        "entropy": entropy(maps),
        "total_variation": total_variation(maps),
        # the shaping terms below have their own hand-computed tests in test_part_losses.py
        "background": part_losses.background_presence_loss(maps),
        "orthogonality": part_losses.orthogonality_loss(stage1.part_features),
        "concentration": part_losses.concentration_loss(maps),
    }


def test_loss_is_the_weighted_sum_of_its_terms_in_eval():
    model = weighted_model()
    pixel_values = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    outputs = model(pixel_values, labels=LABELS)
    expected = independent_terms(model, pixel_values, outputs)
    assert set(outputs.loss_terms) == set(expected)  # equivariance is a training-only term
    for name, value in expected.items():
        torch.testing.assert_close(outputs.loss_terms[name], value, atol=1e-5, rtol=1e-5, msg=name)
    total = sum(WEIGHTS[name] * value for name, value in expected.items())
    torch.testing.assert_close(outputs.loss, total, atol=1e-5, rtol=1e-5)


def test_training_loss_with_a_quarter_turn_equivariance(monkeypatch):
    """With the transform a quarter turn, T and T^-1 are exact pixel permutations: torch.rot90 either way."""
    quarter_turn = part_losses.RandomAffine(torch.full((4,), 90.0), torch.zeros(4, 2), torch.ones(4))
    monkeypatch.setattr(part_losses.RandomAffine, "sample", classmethod(lambda cls, *a, **k: quarter_turn))
    model = weighted_model().train()  # deterministic in training: no Gumbel noise, no dropout
    pixel_values = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    outputs = model(pixel_values, labels=LABELS)

    expected = independent_terms(model, pixel_values, outputs)
    # T turns the image clockwise (rot90 k=-1); its inverse turns the part maps of T(x) back (k=+1)
    turned_maps = model.stage1(torch.rot90(pixel_values, -1, dims=(-2, -1))).part_maps
    expected["equivariance"] = foreground_cosine_gap(outputs.part_maps, torch.rot90(turned_maps, 1, dims=(-2, -1)))
    assert set(outputs.loss_terms) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(outputs.loss_terms[name], value, atol=1e-4, rtol=1e-4, msg=name)
    total = sum(WEIGHTS[name] * value for name, value in expected.items())
    torch.testing.assert_close(outputs.loss, total, atol=1e-4, rtol=1e-4)
    # the term is not trivially small: comparing without the inverse warp would give another value
    unaligned = foreground_cosine_gap(outputs.part_maps, turned_maps)
    assert (unaligned - expected["equivariance"]).abs() > 1e-3


def test_zero_weight_turns_a_term_off():
    model = weighted_model(presence_loss_weight=0.0, concentration_loss_weight=0.0)
    outputs = model(torch.randn(4, 3, 28, 28), labels=LABELS)
    assert "presence" not in outputs.loss_terms and "concentration" not in outputs.loss_terms
    torch.testing.assert_close(
        outputs.loss, sum(WEIGHTS[name] * value for name, value in outputs.loss_terms.items()), atol=1e-5, rtol=1e-5
    )


def test_training_clips_a_large_gradient(tmp_path, monkeypatch):
    """The stage-2 loss weighted by 1000 makes every step's gradient large; the optimizer must see it clipped to 2."""
    from accelerate import Accelerator

    before, after = [], []
    original_clip, original_step = Accelerator.clip_grad_norm_, torch.optim.AdamW.step

    def clip(self, *args, **kwargs):
        total_norm = original_clip(self, *args, **kwargs)  # the norm before clipping
        before.append(float(total_norm))
        return total_norm

    def step(self, *args, **kwargs):  # the norm the update uses
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        after.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", clip)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    run_training(tmp_path, "--max_train_steps", "2", "--checkpointing_steps", "100", "--calibration_percentiles",
                 "--stage2_classification_loss_weight", "1000", "--max_grad_norm", "2")
    assert len(before) == len(after) == 2
    assert min(before) > 20  # a large gradient...
    for norm in after:
        assert abs(norm - 2.0) < 1e-3  # ...clipped to exactly max_grad_norm
