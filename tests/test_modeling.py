"""IFAMForImageClassification: shapes, the faithfulness guarantee, gradient flow, interventions, bad input."""

import pytest
import torch

from conftest import tiny_config, tiny_model

NUM_PATCHES = 16  # (28 / 7) ** 2


def patch_pixel_mask(token_mask: torch.Tensor, patch_size: int = 7) -> torch.Tensor:
    """[B, N] patch mask -> [B, 1, H, W] pixel mask."""
    side = int(token_mask.shape[1] ** 0.5)
    grid = token_mask.view(-1, 1, side, side).float()
    return torch.nn.functional.interpolate(grid, scale_factor=patch_size, mode="nearest").bool()


@pytest.mark.parametrize("num_register_tokens", [0, 4])
def test_output_shapes(num_register_tokens, pixel_values):
    model = tiny_model(num_register_tokens=num_register_tokens)
    outputs = model.train()(pixel_values, labels=torch.tensor([0, 1, 2, 0]))
    assert outputs.logits.shape == (4, 3)
    assert outputs.stage1_logits.shape == (4, 3)
    assert outputs.part_maps.shape == (4, 4, 4, 4)  # [B, K+1, h, w]
    assert outputs.part_distances.shape == (4, 4, 4, 4)
    assert outputs.token_mask.shape == (4, NUM_PATCHES) and outputs.token_mask.dtype == torch.bool
    torch.testing.assert_close(outputs.part_maps.sum(1), torch.ones(4, 4, 4))
    assert outputs.loss.ndim == 0 and torch.isfinite(outputs.loss)
    assert set(outputs.loss_terms) == {
        "stage1_classification", "stage2_classification", "presence", "equivariance", "orthogonality",
        "total_variation", "entropy", "background",
    }  # concentration has weight 0 by default: not computed
    assert "equivariance" not in model.eval()(pixel_values, labels=torch.tensor([0, 1, 2, 0])).loss_terms


def test_token_mask_is_argmax_foreground(model, pixel_values):
    outputs = model(pixel_values)
    argmax = outputs.part_maps.flatten(2).argmax(1)
    torch.testing.assert_close(outputs.token_mask, argmax < model.config.num_parts)


@pytest.mark.parametrize("num_register_tokens", [0, 4])
def test_unselected_patches_cannot_move_the_prediction(num_register_tokens, pixel_values):
    model = tiny_model(num_register_tokens=num_register_tokens)
    token_mask = torch.rand(4, NUM_PATCHES, generator=torch.Generator().manual_seed(2)) < 0.4
    reference = model(pixel_values, token_mask=token_mask).logits

    hidden = ~patch_pixel_mask(token_mask)
    for seed in range(3):
        noise = 10 * torch.randn(pixel_values.shape, generator=torch.Generator().manual_seed(seed))
        perturbed = torch.where(hidden, noise, pixel_values)
        assert not torch.equal(perturbed, pixel_values)
        torch.testing.assert_close(model(perturbed, token_mask=token_mask).logits, reference, atol=1e-5, rtol=0)
    # not even non-finite pixels outside the mask leak in
    poisoned = torch.where(hidden, torch.tensor(float("nan")), pixel_values)
    torch.testing.assert_close(model(poisoned, token_mask=token_mask).logits, reference, atol=1e-5, rtol=0)

    # ...while a selected patch does move it (the test above can fail)
    changed = pixel_values.clone()
    changed[~hidden.expand_as(changed)] += 5.0
    assert not torch.allclose(model(changed, token_mask=token_mask).logits, reference, atol=1e-3)


def test_stage1_selection_is_faithful(model, pixel_values):
    """The prediction with stage 1's own mask equals the prediction from the selected pixels alone."""
    outputs = model(pixel_values)
    assert 0 < outputs.token_mask.sum() < outputs.token_mask.numel()
    blanked = torch.where(patch_pixel_mask(outputs.token_mask), pixel_values, torch.zeros(()))
    torch.testing.assert_close(
        model(blanked, token_mask=outputs.token_mask).logits, outputs.logits, atol=1e-5, rtol=0
    )


def test_images_of_a_batch_are_independent(model, pixel_values):
    reference = model(pixel_values)
    changed = pixel_values.clone()
    changed[0] = torch.randn(3, 28, 28)
    outputs = model(changed)
    for name in ("logits", "stage1_logits", "part_maps", "token_mask"):
        torch.testing.assert_close(outputs[name][1:], reference[name][1:], atol=1e-5, rtol=0)
    assert not torch.allclose(outputs.stage1_logits[0], reference.stage1_logits[0])


@pytest.mark.parametrize("use_soft_masks", [False, True])
def test_stage2_loss_reaches_stage1_prototypes(use_soft_masks, pixel_values):
    zero = {f"{name}_loss_weight": 0.0 for name in tiny_config().loss_weights if name != "stage2_classification"}
    model = tiny_model(use_soft_masks=use_soft_masks, part_dropout_stage2=0.0, **zero).train()
    outputs = model(pixel_values, labels=torch.tensor([0, 1, 2, 0]))
    assert set(outputs.loss_terms) == {"stage2_classification"}
    outputs.loss.backward()
    grad = model.stage1.prototypes.grad
    assert grad is not None and grad.abs().sum() > 0
    assert model.stage1.classifier.weight.grad is None  # stage-1 classifier only gets the stage-1 loss


def test_hard_mask_in_training_is_binary_forward(pixel_values):
    model = tiny_model(part_dropout_stage2=0.0).train()
    torch.manual_seed(0)
    outputs = model(pixel_values)
    stage1 = model.stage1(pixel_values)
    torch.manual_seed(0)
    visible, weights = model.select_tokens(model.stage1(pixel_values))
    assert torch.equal(weights, visible.float())  # exactly 0/1 forward
    assert weights.requires_grad
    assert outputs.token_mask.dtype == torch.bool and stage1.part_maps.requires_grad


@pytest.mark.parametrize("training", [False, True])
def test_empty_selection_gives_finite_logits(training, pixel_values):
    model = tiny_model().train(training)
    empty = torch.zeros(4, NUM_PATCHES, dtype=torch.bool)
    outputs = model(pixel_values, token_mask=empty, labels=torch.tensor([0, 1, 2, 0]))
    assert torch.isfinite(outputs.logits).all() and torch.isfinite(outputs.loss)
    outputs.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    every_part = list(range(model.config.num_parts))  # dropping all parts selects nothing
    outputs = model(pixel_values, parts_to_drop=every_part)
    assert not outputs.token_mask.any() and torch.isfinite(outputs.logits).all()


def test_part_dropout_in_training_drops_whole_parts(pixel_values):
    model = tiny_model(part_dropout_stage2=0.5, gumbel_softmax=False).train()
    stage1 = model.stage1(pixel_values)
    assignment = stage1.part_maps.flatten(2).argmax(1)
    torch.manual_seed(3)
    visible, _ = model.select_tokens(stage1)
    for image in range(4):
        for part in assignment[image].unique().tolist():
            states = visible[image][assignment[image] == part].unique()
            assert len(states) == 1  # every token of a part shares its fate
            if part == model.config.num_parts:
                assert not states.item()


def test_parts_to_drop_removes_exactly_that_part(model, pixel_values):
    outputs = model(pixel_values)
    assignment = outputs.part_maps.flatten(2).argmax(1)
    dropped = model(pixel_values, parts_to_drop=[1])
    torch.testing.assert_close(dropped.token_mask, outputs.token_mask & (assignment != 1))

    model.config.parts_to_drop = [1]  # config default for every call...
    torch.testing.assert_close(model(pixel_values).token_mask, dropped.token_mask)
    # ...that a call overrides
    torch.testing.assert_close(model(pixel_values, parts_to_drop=[]).token_mask, outputs.token_mask)


def test_token_removal_thresholds(model, pixel_values):
    outputs = model(pixel_values)
    assignment = outputs.part_maps.flatten(2).argmax(1)
    distance = outputs.part_distances.flatten(2).gather(1, assignment[:, None]).squeeze(1)
    assigned = distance[outputs.token_mask]
    threshold = assigned.median().item()
    model.config.part_distance_thresholds = {"97": [threshold] * model.config.num_parts}

    removed = model(pixel_values, token_removal_percentile=97)
    torch.testing.assert_close(removed.token_mask, outputs.token_mask & (distance <= threshold))
    assert 0 < removed.token_mask.sum() < outputs.token_mask.sum()

    model.config.token_removal_percentile = 97
    torch.testing.assert_close(model(pixel_values).token_mask, removed.token_mask)
    torch.testing.assert_close(model(pixel_values, use_token_removal=False).token_mask, outputs.token_mask)
    with pytest.raises(ValueError, match="percentile 99"):
        model(pixel_values, token_removal_percentile=99)


def test_other_image_sizes_interpolate_positions(model):
    outputs = model(torch.randn(2, 3, 42, 35))
    assert outputs.token_mask.shape == (2, 6 * 5) and outputs.part_maps.shape == (2, 4, 6, 5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pixel_values=torch.randn(3, 28, 28)), "pixel_values.*shape"),
        (dict(pixel_values=torch.randn(2, 1, 28, 28)), "1 channels"),
        (dict(pixel_values=torch.randn(2, 3, 30, 28)), "multiple of the patch size"),
        (dict(labels=torch.tensor([0, 3])), r"\[3\] outside"),
        (dict(labels=torch.tensor([0, -1])), r"\[-1\] outside"),
        (dict(labels=torch.tensor([0, 1, 1])), "labels.*shape"),
        (dict(labels=torch.tensor([0.0, 1.0])), "integer class indices"),
        (dict(token_mask=torch.ones(2, 15, dtype=torch.bool)), r"token_mask.*\(2, 16\)"),
        (dict(token_mask=torch.ones(1, 16, dtype=torch.bool)), r"token_mask.*\(2, 16\)"),
        (dict(token_mask=torch.full((2, 16), 0.5)), "token_mask.*boolean"),
        (dict(parts_to_drop=[3]), r"parts_to_drop.*\[3\]"),
        (dict(parts_to_drop=[-1]), r"parts_to_drop.*\[-1\]"),
        (dict(token_removal_percentile=97), "No token-removal thresholds"),
    ],
)
def test_bad_input_raises_clear_error(model, kwargs, match):
    kwargs = {"pixel_values": torch.randn(2, 3, 28, 28), **kwargs}
    with pytest.raises(ValueError, match=match):
        model(**kwargs)


def test_unknown_argument_is_refused(model):
    with pytest.raises(TypeError, match="tokenmask"):
        model(torch.randn(1, 3, 28, 28), tokenmask=None)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(num_parts=0), "num_parts"),
        (dict(part_dropout=1.0), "part_dropout"),
        (dict(softmax_temperature=0.0), "softmax_temperature"),
        (dict(parts_to_drop=[3]), "parts_to_drop"),
        (dict(background_loss_weight=-1.0), "background_loss_weight"),
        (dict(image_size=30), "multiple of `patch_size`"),
        (dict(part_distance_thresholds={"97": [1.0, 2.0]}), "expected one per foreground part"),
        (dict(part_distance_thresholds={"101": [1.0] * 3}), "not a percentile"),
        (dict(token_removal_percentile=99.0), "no calibrated thresholds"),
        (dict(stage2_inference="fast"), "stage2_inference"),
        (dict(stage2_training="padded"), "stage2_training"),
        (dict(stage2_training="packed", drop_path_rate=0.1), "drop_path_rate=0"),
    ],
)
def test_config_validation(overrides, match):
    from huggingface_hub.errors import StrictDataclassClassValidationError

    # `@strict` wraps the ValueError of `validate_ifam` in its own class-validation error
    with pytest.raises(StrictDataclassClassValidationError, match=match):
        tiny_config(**overrides)


def test_config_defaults_follow_the_paper():
    config = tiny_config()
    assert (config.part_dropout, config.part_dropout_stage2) == (0.3, 0.3)
    assert config.model_type == "ifam" and config.parts_to_drop == [] and config.part_distance_thresholds == {}
    assert config.loss_weights == {
        "stage1_classification": 1.0, "stage2_classification": 1.0, "presence": 1.0, "equivariance": 1.0,
        "orthogonality": 1.0, "total_variation": 1.0, "entropy": 1.0, "background": 2.0, "concentration": 0.0,
    }


def test_stage2_attention_mask_hides_masked_keys_in_every_layer(model, pixel_values):
    """Eager attention exposes the probabilities: no token attends to a masked patch, in any layer."""
    token_mask = torch.rand(4, NUM_PATCHES, generator=torch.Generator().manual_seed(5)) < 0.5
    model.config.stage2_inference = "masked"  # the full-length computation of training
    model.stage2.config._attn_implementation = "eager"
    captured = []
    hooks = [
        layer.attention.register_forward_hook(lambda module, args, output: captured.append(output[1]))
        for layer in model.stage2.backbone.encoder.layer
    ]
    eager = model(pixel_values, token_mask=token_mask).logits
    for hook in hooks:
        hook.remove()
    assert len(captured) == model.config.num_hidden_layers
    hidden_keys = torch.cat([torch.zeros(4, 1, dtype=torch.bool), ~token_mask], dim=1)  # CLS never hidden
    for probabilities in captured:  # [B, heads, L, L]
        assert probabilities[hidden_keys[:, None, None, :].expand_as(probabilities)].abs().max() == 0
    model.stage2.config._attn_implementation = "sdpa"
    torch.testing.assert_close(model(pixel_values, token_mask=token_mask).logits, eager, atol=1e-5, rtol=0)


def varied_token_mask(sizes, num_patches=NUM_PATCHES, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(sizes), num_patches, dtype=torch.bool)
    for row, size in enumerate(sizes):
        mask[row, torch.randperm(num_patches, generator=generator)[:size]] = True
    return mask


@pytest.mark.parametrize("num_register_tokens", [0, 4])
@pytest.mark.parametrize("mode", ["packed", "padded"])
def test_token_only_inference_equals_masked_attention(num_register_tokens, mode):
    model = tiny_model(num_register_tokens=num_register_tokens)
    pixel_values = torch.randn(7, 3, 28, 28, generator=torch.Generator().manual_seed(4))
    token_mask = varied_token_mask([0, 1, 2, 5, 9, 15, 16])  # very different sizes, an empty one
    model.config.stage2_inference = "masked"
    expected = model(pixel_values, token_mask=token_mask).logits
    model.config.stage2_inference = mode
    torch.testing.assert_close(model(pixel_values, token_mask=token_mask).logits, expected, atol=1e-4, rtol=0)
    # and with stage 1's own selection
    model.config.stage2_inference = "masked"
    expected = model(pixel_values).logits
    model.config.stage2_inference = mode
    torch.testing.assert_close(model(pixel_values).logits, expected, atol=1e-4, rtol=0)


def test_training_uses_the_full_length_masked_path_by_default(pixel_values):
    model = tiny_model().train()
    calls = []
    model.stage2._encode_selected_tokens = lambda *args: calls.append(args)
    model(pixel_values, labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    assert calls == []


def test_packed_training_gives_the_same_loss_and_gradients(pixel_values):
    """Unselected tokens get no gradient in the full-length computation either: packing them away changes nothing."""
    labels = torch.tensor([0, 1, 2, 0])
    gradients = {}
    for mode in ("masked", "packed"):
        model = tiny_model(stage2_training=mode, part_dropout=0.0, part_dropout_stage2=0.0, gumbel_softmax=False,
                           equivariance_loss_weight=0.0).train()
        outputs = model(pixel_values, labels=labels)
        assert 0 < outputs.token_mask.sum() < outputs.token_mask.numel()
        outputs.loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        gradients[mode] = (outputs.loss.detach(), grads)
    (loss_masked, masked), (loss_packed, packed) = gradients["masked"], gradients["packed"]
    torch.testing.assert_close(loss_packed, loss_masked, atol=1e-5, rtol=0)
    assert masked.keys() == packed.keys() and "stage1.prototypes" in masked
    for name in masked:
        torch.testing.assert_close(packed[name], masked[name], atol=1e-5, rtol=1e-4, msg=name)


def test_pack_sequences_first_fit_decreasing():
    from modeling_ifam.modeling_ifam import pack_sequences

    # capacity 5 (the longest); decreasing order 5, 3, 2, 1: [5] [3 2] [1]
    assert pack_sequences([5, 2, 3, 1]) == ([0, 1, 1, 2], [0, 3, 0, 0], 5)
    assert pack_sequences([2, 2, 1, 4]) == ([1, 1, 2, 0], [0, 2, 0, 0], 4)  # [4] [2 2] [1]
    assert pack_sequences([5, 2, 3, 1], one_per_row=True) == ([0, 1, 2, 3], [0, 0, 0, 0], 5)


def test_pack_sequences_chooses_the_row_length_by_cost():
    from modeling_ifam.modeling_ifam import pack_sequences

    lengths = [3, 3, 3, 2, 2]  # rows of 3 waste nothing inside a row but need 5 rows: 15 slots for 13 tokens
    # wide layers (linear cost per slot dominates): one row of 13 slots, 13 * (6000 + 13) < 15 * (6000 + 3)
    assert pack_sequences(lengths, hidden_size=1000) == ([0] * 5, [0, 3, 6, 9, 11], 13)
    # narrow layers (attention dominates): rows as long as the longest sequence, 15 * (6 + 3) < 13 * (6 + 13)
    assert pack_sequences(lengths, hidden_size=1) == pack_sequences(lengths) == ([0, 1, 2, 3, 4], [0] * 5, 3)


def test_pack_sequences_finds_the_shortest_rows_for_each_row_count():
    from modeling_ifam.modeling_ifam import pack_sequences

    # 14 tokens: two rows of ceil(14 / 2) = 7 cannot hold them (the 6 leaves 1 slot), two rows of 8 can: [6 2] [4 2],
    # 16 slots * (12 + 8) = 320, cheaper than three rows of the longest, [6] [4 2] [2], 18 * (12 + 6) = 324
    assert pack_sequences([2, 4, 2, 6], hidden_size=2) == ([0, 1, 1, 0], [6, 0, 4, 0], 8)


def test_torch_compile_in_eval_mode(model, pixel_values):
    compiled = torch.compile(model, backend="eager")
    torch.testing.assert_close(compiled(pixel_values).logits, model(pixel_values).logits, atol=1e-5, rtol=0)
