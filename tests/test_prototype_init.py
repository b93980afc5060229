"""`IFAMForImageClassification.initialize_prototypes` (issue 12): the background prototype starts on the border's
features, the parts on the object's, so the object is never given to the background at the start (the K = 2 flip)."""

import pytest
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from conftest import tiny_model

GRID = 4  # tiny config: 28 px, 7-px patches


class FixedFeatures(nn.Module):
    """Stands in for stage 1's backbone: returns the given patch features (after a zero CLS token)."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.features = features

    def forward(self, pixel_values):
        cls = self.features.new_zeros(self.features.shape[0], 1, self.features.shape[-1])
        return BaseModelOutput(last_hidden_state=torch.cat([cls, self.features], dim=1))


def object_mask(batch_size: int) -> torch.Tensor:
    """The central 2 x 2 patches of the 4 x 4 grid are the object, the 12 border patches the background."""
    mask = torch.zeros(GRID, GRID, dtype=torch.bool)
    mask[1:3, 1:3] = True
    return mask.flatten().expand(batch_size, -1)


def constructed_features(model, batch_size=8, noise=0.05):
    """Object patches near one direction, background patches near another, placed against the default draw: the object
    lies on the background prototype's side, the background on the part prototypes' side (a draw that flips)."""
    prototypes = model.stage1.prototypes.detach()
    parts, background = prototypes[:-1].mean(0), prototypes[-1]
    towards_background = torch.nn.functional.normalize(background - parts, dim=0)
    generator = torch.Generator().manual_seed(0)
    dimension = prototypes.shape[1]
    features = torch.where(object_mask(batch_size)[..., None], 3 * towards_background, -3 * towards_background)
    return features + noise * torch.randn(batch_size, GRID * GRID, dimension, generator=generator)


def background_share_of_object(model, features) -> float:
    model.stage1.backbone = FixedFeatures(features)
    with torch.no_grad():
        maps = model.stage1(torch.zeros(features.shape[0], 3, 28, 28)).part_maps.flatten(2)  # eval: softmax
    assignment = maps.argmax(1)  # [B, N]
    is_background = assignment == maps.shape[1] - 1
    return is_background[object_mask(features.shape[0])].float().mean().item()


@pytest.mark.parametrize("num_parts", [1, 2, 4])
def test_data_init_gives_the_border_to_the_background_and_the_object_to_the_parts(num_parts):
    model = tiny_model(num_parts=num_parts)
    features = constructed_features(model)
    assert background_share_of_object(model, features) == 1.0  # the default draw: the object is background

    prototypes = model.initialize_prototypes(torch.zeros(features.shape[0], 3, 28, 28))
    assert prototypes.shape == (num_parts + 1, model.config.hidden_size)
    assert background_share_of_object(model, features) == 0.0  # the object goes to the parts
    maps = model.stage1(torch.zeros(features.shape[0], 3, 28, 28)).part_maps.flatten(2).argmax(1)
    assert (maps[~object_mask(features.shape[0])] == num_parts).all()  # and the border to the background
    torch.testing.assert_close(prototypes[-1], features[~object_mask(features.shape[0])].mean(0))


def test_data_init_is_deterministic_and_uses_only_its_own_generator():
    model = tiny_model(num_parts=2)
    features = constructed_features(model)
    model.stage1.backbone = FixedFeatures(features)
    pixels = torch.zeros(features.shape[0], 3, 28, 28)
    torch.manual_seed(5)
    first, state = model.initialize_prototypes(pixels, seed=3), torch.get_rng_state()
    torch.manual_seed(5)
    second = model.initialize_prototypes(pixels, seed=3)
    assert torch.equal(first, second)
    assert torch.equal(state, torch.get_rng_state())  # the global stream (what checkpoints restore) is untouched
    assert model.stage1.training is False  # the mode is restored
    model.train()
    model.initialize_prototypes(pixels)
    assert model.stage1.training


SHIPPED = ["--model_name_or_path", "pretrained/dinov2-tiny-upstream"]  # the default, spelled out


def test_train_initializes_prototypes_from_a_pretrained_backbone_and_resume_equals_the_whole_run(tmp_path, monkeypatch):
    """From a DINOv2 backbone, train.py sets the prototypes from the first training images (auto); a run killed after
    checkpoint-2 and resumed (which loads its prototypes, no re-initialisation) ends with the uninterrupted run's
    weights."""
    from transformers import AutoModelForImageClassification

    from conftest import run_training
    from modeling_ifam import IFAMForImageClassification

    calls = []
    original = IFAMForImageClassification.initialize_prototypes

    def spy(self, pixel_values, **kwargs):
        calls.append(pixel_values.shape[0])
        return original(self, pixel_values, **kwargs)

    monkeypatch.setattr(IFAMForImageClassification, "initialize_prototypes", spy)
    run_training(tmp_path / "whole", *SHIPPED, "--num_picture_images", "2")
    assert calls == [64]  # the whole (64-image) training split, in its stored order
    assert (tmp_path / "whole" / "parts.png").is_file()
    reference = AutoModelForImageClassification.from_pretrained(tmp_path / "whole").state_dict()

    original_step, steps = torch.optim.AdamW.step, []

    def step_then_die(self, *args, **kwargs):
        steps.append(1)
        if len(steps) == 3:
            raise KeyboardInterrupt
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_training(tmp_path / "killed", *SHIPPED)
    monkeypatch.setattr(torch.optim.AdamW, "step", original_step)
    run_training(tmp_path / "killed", *SHIPPED, "--resume_from_checkpoint", "latest")
    assert calls == [64, 64]  # not on resume
    resumed = AutoModelForImageClassification.from_pretrained(tmp_path / "killed").state_dict()
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=0, msg=name)


def test_default_backbone_resolves_from_any_directory(tmp_path, monkeypatch):
    from ifam_train.arguments import DEFAULT_BACKBONE, REPOSITORY, parse_args

    monkeypatch.chdir(tmp_path)
    _, args = parse_args([])
    assert args.model_name_or_path == str(REPOSITORY / DEFAULT_BACKBONE) and args.uses_default_backbone
    assert parse_args(["--model_name_or_path", "scratch"])[1].model_name_or_path is None
    hub_id = "facebook/dinov2-small"
    assert parse_args(["--model_name_or_path", hub_id])[1].model_name_or_path == hub_id
