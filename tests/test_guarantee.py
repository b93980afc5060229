"""The faithfulness guarantee, over every way stage 2 runs: pixels outside the token mask cannot move the prediction.

Each case perturbs the pixels of the hidden patches twice (large random values, then NaN) and requires the stage-2
logits to stay what they were: over the `packed`, `padded` and `masked` stage-2 computations, in eval and train mode,
with and without register tokens, with the mask given by the caller and chosen by stage 1 (straight-through weights).
The guarantee has two independent barriers in the full-length `masked` path, and each is tested on its own: hidden
tokens are zeroed before the encoder (NaN pixels), and no token attends to a hidden one in any layer (hidden states
overwritten at the input of every layer). The soft-mask ablation is shown NOT to have the guarantee.
"""

import pytest
import torch

from conftest import tiny_model

NUM_PATCHES = 16  # (28 / 7) ** 2
BATCH = 4


def pixel_mask(token_mask: torch.Tensor, patch_size: int = 7) -> torch.Tensor:
    """[B, N] patch mask -> [B, 1, H, W] pixel mask."""
    side = int(token_mask.shape[1] ** 0.5)
    grid = token_mask.view(-1, 1, side, side).float()
    return torch.nn.functional.interpolate(grid, scale_factor=patch_size, mode="nearest").bool()


def perturbations(pixel_values: torch.Tensor, token_mask: torch.Tensor):
    """(name, pixels) with every hidden patch replaced: by large noise, then by NaN."""
    hidden = ~pixel_mask(token_mask)
    noise = 25 * torch.randn(pixel_values.shape, generator=torch.Generator().manual_seed(11))
    changed = torch.where(hidden, noise, pixel_values)
    assert not torch.equal(changed, pixel_values)
    yield "changed", changed
    yield "nan", torch.where(hidden, torch.tensor(float("nan")), pixel_values)


def caller_mask() -> torch.Tensor:
    mask = torch.rand(BATCH, NUM_PATCHES, generator=torch.Generator().manual_seed(3)) < 0.45
    mask[0] = False  # an image that shows nothing
    mask[1, :2] = True  # and images of different sizes
    return mask


def model_for(mode: str, training: bool, num_register_tokens: int):
    if training:  # `padded` is an inference-only computation
        model = tiny_model(num_register_tokens=num_register_tokens, stage2_training=mode).train()
    else:
        model = tiny_model(num_register_tokens=num_register_tokens, stage2_inference=mode)
    return model


CASES = [("packed", False), ("padded", False), ("masked", False), ("masked", True), ("packed", True)]


@pytest.mark.parametrize("num_register_tokens", [0, 4])
@pytest.mark.parametrize("mode, training", CASES)
def test_pixels_outside_a_given_mask_cannot_move_the_prediction(mode, training, num_register_tokens):
    model = model_for(mode, training, num_register_tokens)
    pixel_values = torch.randn(BATCH, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    token_mask = caller_mask()
    reference = model(pixel_values, token_mask=token_mask).logits
    assert torch.isfinite(reference).all()
    for name, perturbed in perturbations(pixel_values, token_mask):
        logits = model(perturbed, token_mask=token_mask).logits
        torch.testing.assert_close(logits, reference, atol=1e-5, rtol=0, msg=f"{mode}, {name} pixels")

    # the test can fail: a visible patch does move the prediction of its image, and of its image only
    changed = pixel_values.clone()
    changed[2][pixel_mask(token_mask)[2].expand(3, -1, -1)] += 3.0
    logits = model(changed, token_mask=token_mask).logits
    assert not torch.allclose(logits[2], reference[2], atol=1e-3)
    torch.testing.assert_close(logits[[0, 1, 3]], reference[[0, 1, 3]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_register_tokens", [0, 4])
@pytest.mark.parametrize("mode, training", CASES)
def test_pixels_outside_stage1_selection_cannot_move_the_prediction(mode, training, num_register_tokens):
    """Stage 1's own mask, with the straight-through weights that carry stage 2's gradient back to stage 1."""
    model = model_for(mode, training, num_register_tokens)
    pixel_values = torch.randn(BATCH, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)  # Gumbel noise and stage-2 part dropout in training
    stage1 = model.stage1(pixel_values)
    visible, weights = model.select_tokens(stage1)
    assert 0 < visible.sum() < visible.numel()
    if training:
        assert weights.requires_grad and torch.equal(weights.detach(), visible.float())
    reference = model.stage2(pixel_values, visible, weights)
    for name, perturbed in perturbations(pixel_values, visible):
        logits = model.stage2(perturbed, visible, weights)
        torch.testing.assert_close(logits, reference, atol=1e-5, rtol=0, msg=f"{mode}, {name} pixels")

    if not training:  # the whole model: its prediction equals that of the pixels it selected, the rest NaN
        outputs = model(pixel_values)
        poisoned = torch.where(pixel_mask(outputs.token_mask), pixel_values, torch.tensor(float("nan")))
        torch.testing.assert_close(model(poisoned, token_mask=outputs.token_mask).logits, outputs.logits,
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["masked", "packed"])
def test_hidden_pixels_and_tokens_get_no_gradient_in_training(mode):
    """Training: the loss is constant in the hidden pixels, and stage 1 learns only from the patches stage 2 saw."""
    model = tiny_model(stage2_training=mode).train()
    pixel_values = torch.randn(BATCH, 3, 28, 28, generator=torch.Generator().manual_seed(1)).requires_grad_()
    torch.manual_seed(0)
    visible, weights = model.select_tokens(model.stage1(pixel_values.detach()))
    weights = weights.detach().requires_grad_()
    logits = model.stage2(pixel_values, visible, weights)
    logits.pow(2).sum().backward()
    hidden = ~pixel_mask(visible).expand_as(pixel_values)
    assert pixel_values.grad[hidden].abs().max() == 0
    assert pixel_values.grad[~hidden].abs().max() > 0
    assert weights.grad[~visible].abs().max() == 0 and weights.grad[visible].abs().max() > 0


def test_masked_path_attention_alone_hides_the_tokens():
    """Second barrier of the full-length path: hidden tokens overwritten at the input of every layer change nothing."""
    model = tiny_model(stage2_inference="masked")
    pixel_values = torch.randn(BATCH, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    token_mask = caller_mask()
    reference = model(pixel_values, token_mask=token_mask).logits
    hidden = torch.cat([torch.zeros(BATCH, 1, dtype=torch.bool), ~token_mask], dim=1)  # CLS never hidden

    def overwrite(module, args):
        hidden_states = args[0].clone()
        hidden_states[hidden] = 50 * torch.randn(int(hidden.sum()), hidden_states.shape[-1])
        return (hidden_states, *args[1:])

    hooks = [layer.register_forward_pre_hook(overwrite) for layer in model.stage2.backbone.encoder.layer]
    try:
        logits = model(pixel_values, token_mask=token_mask).logits
    finally:
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=0)


def test_soft_masks_do_not_have_the_guarantee():
    """The paper's ablation: every patch stays visible with weight p_fg, so hidden pixels do move the prediction."""
    model = tiny_model(use_soft_masks=True)
    pixel_values = torch.randn(BATCH, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    visible, soft_weights = model.select_tokens(model.stage1(pixel_values))
    assert 0 < visible.sum() < visible.numel() and (soft_weights[~visible] > 0).all()
    reference = model.stage2(pixel_values, visible, soft_weights)
    changed, poisoned = (pixels for _, pixels in perturbations(pixel_values, visible))
    moved = (model.stage2(changed, visible, soft_weights) - reference).abs().amax(dim=-1)
    assert (moved > 1e-3).all()  # every image's prediction moves with the pixels it supposedly does not use
    assert torch.isnan(model.stage2(poisoned, visible, soft_weights)).all()
