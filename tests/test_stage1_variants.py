"""A cheaper stage 1 (issue 16): stage 1 at its own resolution (`stage1_image_size`) and on its own, smaller backbone
(`stage1_config`, `from_dinov2(..., stage1=)`). The guarantee concerns stage 2's input only, so it must hold as
before."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from transformers import AutoConfig, AutoModelForImageClassification, Dinov2Config, Dinov2Model
from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from conftest import TINY, tiny_config, tiny_model
from modeling_ifam import IFAMConfig, IFAMForImageClassification
from modeling_ifam.modeling_ifam import resize_part_outputs


IMAGE, PATCH = 56, 7  # stage 2: 8 x 8 patches; stage 1 at half the side: 4 x 4 (the part losses need >= 4 x 4)
GRID = IMAGE // PATCH
SMALL_STAGE1 = dict(model_type="dinov2", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                    image_size=28, patch_size=7)
VARIANTS = {
    "half": dict(stage1_image_size=IMAGE // 2),
    "small": dict(stage1_config=SMALL_STAGE1),
    "small_half": dict(stage1_config=SMALL_STAGE1, stage1_image_size=IMAGE // 2),
    "small_registers_other_patch": dict(
        stage1_config=dict(SMALL_STAGE1, model_type="dinov2_with_registers", num_register_tokens=2, patch_size=4,
                           image_size=32),
        stage1_image_size=32,
    ),
}


def variant_model(name: str, **overrides) -> IFAMForImageClassification:
    return tiny_model(image_size=IMAGE, **VARIANTS[name], **overrides)


def stage1_grid(model) -> tuple[int, int]:
    side = model.config.stage1_image_size or IMAGE
    return side // model.stage1.patch_size, side // model.stage1.patch_size


@pytest.fixture
def images():
    return torch.randn(4, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))


def patch_pixel_mask(token_mask: torch.Tensor) -> torch.Tensor:
    """[B, N] stage-2 patch mask -> [B, 1, H, W] pixel mask."""
    grid = token_mask.view(-1, 1, GRID, GRID).float()
    return F.interpolate(grid, scale_factor=PATCH, mode="nearest").bool()


# --------------------------------------------------------------------------------------------------------------------
# the resize rule


def test_resize_rule_is_bilinear_between_patch_centres():
    """2 x 2 -> 4 x 4 with align_corners=False: stage-2 patch centres sit at 1/4 and 3/4 between stage-1 centres."""
    a, b = 0.9, 0.1
    maps = torch.tensor([[a, b], [a, b]])[None, None]
    maps = torch.cat([maps, 1 - maps], dim=1)  # [1, 2, 2, 2], a probability per patch
    resized, distances = resize_part_outputs(maps, 3 * maps, (4, 4))
    row = torch.tensor([a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b])
    torch.testing.assert_close(resized[0, 0], row.expand(4, 4))
    torch.testing.assert_close(resized.sum(1), torch.ones(1, 4, 4))  # still probabilities
    torch.testing.assert_close(distances, 3 * resized)
    same, same_distances = resize_part_outputs(maps, 3 * maps, (2, 2))
    assert same is maps  # equal grids: nothing is resized (the paper's computation)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_token_mask_is_argmax_of_bilinearly_resized_part_maps(name, images):
    model = variant_model(name)
    outputs = model(images)
    assert outputs.part_maps.shape == (4, 4, *stage1_grid(model))  # stage 1's own grid
    assert outputs.token_mask.shape == (4, GRID * GRID)  # stage 2's grid
    resized = F.interpolate(outputs.part_maps, size=(GRID, GRID), mode="bilinear", align_corners=False)
    expected = resized.flatten(2).argmax(1) < model.config.num_parts
    assert 0 < expected.sum() < expected.numel()
    torch.testing.assert_close(outputs.token_mask, expected)


def test_stage1_sees_the_antialiased_resized_image(images):
    model = variant_model("half")
    small = F.interpolate(images, size=(IMAGE // 2, IMAGE // 2), mode="bilinear", align_corners=False, antialias=True)
    reference = tiny_model(image_size=IMAGE)  # same weights (same seed), stage 1 run on the resized image by hand
    torch.testing.assert_close(model.stage1(images).part_maps, reference.stage1(small).part_maps, atol=1e-6, rtol=0)
    # antialiasing matters: plain bilinear would give other maps
    plain = F.interpolate(images, size=(IMAGE // 2, IMAGE // 2), mode="bilinear", align_corners=False)
    assert not torch.allclose(reference.stage1(plain).part_maps, model.stage1(images).part_maps, atol=1e-4)


def test_stage1_position_table_is_interpolated_to_its_grid(images):
    """Stage 1 (position table for 56 px) at 28 px: DINOv2 interpolates the table; the positions are really used."""
    model = variant_model("half")
    embeddings = model.stage1.backbone.embeddings
    small = model.stage1.resize_image(images)
    assert embeddings(small).shape[1] == 1 + stage1_grid(model)[0] * stage1_grid(model)[1]
    before = model.stage1(images).part_maps
    with torch.no_grad():
        embeddings.position_embeddings[:, 1:] = embeddings.position_embeddings[:, 1:].flip(1)
    assert not torch.allclose(model.stage1(images).part_maps, before, atol=1e-4)


def test_default_and_explicit_same_size_are_the_paper(images):
    paper = tiny_model(image_size=IMAGE)
    same_size = tiny_model(image_size=IMAGE, stage1_image_size=IMAGE)
    same_arch = tiny_model(image_size=IMAGE, stage1_config={**TINY, "image_size": IMAGE, "model_type": "dinov2"})
    same_arch.stage1.load_state_dict(paper.stage1.state_dict())
    same_arch.stage2.load_state_dict(paper.stage2.state_dict())
    expected = paper(images)
    for model in (same_size, same_arch):
        outputs = model(images)
        for name in ("logits", "stage1_logits", "part_maps", "token_mask"):
            torch.testing.assert_close(outputs[name], expected[name], atol=0, rtol=0)


# --------------------------------------------------------------------------------------------------------------------
# the guarantee: stage 1 sees every pixel, stage 2 only the token mask's patches


@pytest.mark.parametrize("mode", ["packed", "padded", "masked"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_pixels_outside_the_token_mask_cannot_move_the_logits(name, mode, images):
    model = variant_model(name, stage2_inference=mode)
    token_mask = torch.rand(4, GRID * GRID, generator=torch.Generator().manual_seed(2)) < 0.3
    reference = model(images, token_mask=token_mask).logits
    hidden = ~patch_pixel_mask(token_mask)
    noise = 10 * torch.randn(images.shape, generator=torch.Generator().manual_seed(3))
    for poison in (noise, torch.tensor(float("nan"))):
        perturbed = torch.where(hidden, poison, images)
        outputs = model(perturbed, token_mask=token_mask)
        torch.testing.assert_close(outputs.logits, reference, atol=1e-5, rtol=0)
    # stage 1 saw the NaNs (its resize mixes every pixel), stage 2 did not
    assert not torch.isfinite(outputs.stage1_logits).all()
    # and the test can fail: a selected patch moves the logits
    changed = torch.where(hidden, images, images + 5.0)
    assert not torch.allclose(model(changed, token_mask=token_mask).logits, reference, atol=1e-3)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_stage1_selection_is_faithful(name, images):
    """
    With stage 1 live: the logits are those of the pixels under the returned token mask alone. Changing the pixels
    outside it may change stage 1's selection (stage 1 sees them, through the resize too), never what stage 2 read.
    """
    model = variant_model(name)
    outputs = model(images)
    assert 0 < outputs.token_mask.sum() < outputs.token_mask.numel()
    poisoned = torch.where(patch_pixel_mask(outputs.token_mask), images, torch.tensor(float("nan")))
    torch.testing.assert_close(model(poisoned, token_mask=outputs.token_mask).logits, outputs.logits, atol=1e-5,
                               rtol=0)


@pytest.mark.parametrize("name", ["half", "small_half"])
def test_fixed_stage1_output_makes_outside_pixels_irrelevant(name, images, monkeypatch):
    """
    Holding stage 1's output fixed (no `token_mask` given): other pixels outside the selection leave the logits
    unchanged. Random ones here: NaN pixels without a `token_mask` are refused at the front door (issue 17's input
    checks, which cannot know stage 1's selection before running it); NaN with the mask is tested above.
    """
    model = variant_model(name)
    outputs = model(images)
    fixed = model.stage1(images)
    monkeypatch.setattr(model.stage1, "forward", lambda pixel_values: fixed)
    noise = 4 * torch.randn(images.shape, generator=torch.Generator().manual_seed(3))
    perturbed = torch.where(patch_pixel_mask(outputs.token_mask), images, noise)
    assert not torch.equal(perturbed, images)
    again = model(perturbed)
    torch.testing.assert_close(again.token_mask, outputs.token_mask)
    torch.testing.assert_close(again.logits, outputs.logits, atol=1e-5, rtol=0)
    poisoned = torch.where(patch_pixel_mask(outputs.token_mask), images, torch.tensor(float("nan")))
    with pytest.raises(ValueError, match="non-finite"):
        model(poisoned)


# --------------------------------------------------------------------------------------------------------------------
# training: the straight-through gradient through the resize, the part losses on stage 1's grid


@pytest.mark.parametrize("name", ["half", "small_half"])
def test_stage2_loss_reaches_stage1_through_the_resize(name, images):
    only_stage2 = {f"{term}_loss_weight": 0.0 for term in IFAMConfig().loss_weights if term != "stage2_classification"}
    model = variant_model(name, part_dropout_stage2=0.0, **only_stage2).train()
    loss = model(images, labels=torch.tensor([0, 1, 2, 0])).loss
    loss.backward()
    assert model.stage1.prototypes.grad is not None and model.stage1.prototypes.grad.abs().sum() > 0
    backbone_grads = [p.grad for p in model.stage1.backbone.parameters() if p.grad is not None]
    assert backbone_grads and sum(g.abs().sum() for g in backbone_grads) > 0


@pytest.mark.parametrize("name", ["half", "small_half"])
def test_training_objective_on_stage1_grid(name, images):
    model = variant_model(name).train()
    outputs = model(images, labels=torch.tensor([0, 1, 2, 0]))
    assert outputs.part_maps.shape[-2:] == stage1_grid(model)
    assert set(outputs.loss_terms) >= {"presence", "background", "equivariance", "total_variation", "entropy"}
    assert all(torch.isfinite(value) for value in outputs.loss_terms.values())
    outputs.loss.backward()


# --------------------------------------------------------------------------------------------------------------------
# interventions


def test_part_removal_on_stage2_grid(images):
    model = variant_model("half", num_parts=3)
    outputs = model(images, parts_to_drop=[1])
    resized = F.interpolate(outputs.part_maps, size=(GRID, GRID), mode="bilinear", align_corners=False)
    assignment = resized.flatten(2).argmax(1)
    torch.testing.assert_close(outputs.token_mask, (assignment < 3) & (assignment != 1))


def test_token_removal_thresholds_the_resized_distances(images):
    model = variant_model("half")
    outputs = model(images)
    maps, distances = model.part_maps_on_grid(model.stage1(images), (GRID, GRID))
    assignment = maps.flatten(2).argmax(1)
    chosen = distances.flatten(2).gather(1, assignment[:, None])[:, 0]
    foreground = chosen[assignment < 3]
    thresholds = [float(foreground.median().detach())] * 3
    model.config.part_distance_thresholds = {"50": thresholds}
    removed = model(images, token_removal_percentile=50)
    torch.testing.assert_close(removed.token_mask, outputs.token_mask & (chosen <= thresholds[0]))
    assert removed.token_mask.sum() < outputs.token_mask.sum()


def test_calibration_at_100_removes_nothing(images):
    """Calibration collects the distances where token removal applies them (stage 2's grid): q = 100 keeps every
    selected token. (Stage 1's own-grid distances would not bound the bilinearly resized ones.)"""
    from ifam_interventions.calibration import calibrate_token_removal

    model = variant_model("half")
    calibrate_token_removal(model, [{"pixel_values": images}], percentiles=(100.0,))
    torch.testing.assert_close(model(images, token_removal_percentile=100).token_mask, model(images).token_mask)


def test_pictures_use_stage2_grid(images, tmp_path):
    pytest.importorskip("matplotlib")
    from ifam_interventions.pictures import part_grid

    model = variant_model("half")
    path = part_grid(model, images[:2], tmp_path / "grid.png", interventions={"drop part 0": {"parts_to_drop": [0]}})
    assert path.is_file()


# --------------------------------------------------------------------------------------------------------------------
# config, save/load, Auto classes, trust_remote_code, from_dinov2


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(stage1_image_size=30), "multiple of stage 1's `patch_size`"),
        (dict(stage1_image_size=0), "positive int"),
        (dict(stage1_config=dict(model_type="vit", hidden_size=16)), "must be a DINOv2 config"),
        (dict(stage1_config=dict(SMALL_STAGE1, patch_size=4), stage1_image_size=26), "multiple of stage 1"),
    ],
)
def test_config_validation(overrides, match):
    with pytest.raises(Exception, match=match):
        tiny_config(**overrides)


def test_defaults_are_the_paper():
    config = IFAMConfig()
    assert config.stage1_image_size is None and config.stage1_config is None
    assert config.stage1_backbone_config is config


def test_pixel_values_must_tile_stage1_patches_at_full_resolution():
    model = tiny_model(image_size=IMAGE, stage1_config=dict(SMALL_STAGE1, patch_size=4, image_size=28))
    with pytest.raises(ValueError, match="multiple of stage 1.s patch size 4"):
        model(torch.randn(1, 3, 42, 42))  # 6 x 6 stage-2 patches, but 10.5 stage-1 patches
    model(torch.randn(1, 3, IMAGE, IMAGE))


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    for name in ("modeling_ifam", "configuration_ifam", "part_losses", "pipeline_ifam", "image_processing_ifam"):
        sys.modules[name] = None  # the package cannot be imported in this process
    import torch
    from transformers import AutoModelForImageClassification
    model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    pixel_values = torch.load(sys.argv[2])
    with torch.no_grad():
        outputs = model(pixel_values)
    print(json.dumps({"logits": outputs.logits.tolist(), "grid": list(outputs.part_maps.shape[-2:]),
                      "stage1_hidden": model.stage1.backbone.config.hidden_size}))
    """
)


def test_save_load_auto_classes_and_remote_code(images, tmp_path):
    model = variant_model("small_registers_other_patch")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["stage1_image_size"] == 32
    assert saved["stage1_config"]["model_type"] == "dinov2_with_registers"
    assert saved["stage1_config"]["hidden_size"] == 16 and saved["stage1_config"]["num_register_tokens"] == 2

    config = AutoConfig.from_pretrained(folder)
    assert type(config) is IFAMConfig and isinstance(config.stage1_config, Dinov2WithRegistersConfig)
    expected = model(images)
    for loaded in (IFAMForImageClassification.from_pretrained(folder),
                   AutoModelForImageClassification.from_pretrained(folder)):
        assert type(loaded) is IFAMForImageClassification
        assert isinstance(loaded.stage1.backbone, Dinov2WithRegistersModel)
        outputs = loaded(images)
        for name in ("logits", "stage1_logits", "part_maps", "token_mask"):
            torch.testing.assert_close(outputs[name], expected[name], atol=0, rtol=0)

    # the attention implementation reaches the separate stage-1 backbone too
    eager = IFAMForImageClassification.from_pretrained(folder, attn_implementation="eager")
    assert eager.stage1.backbone.config._attn_implementation == "eager"
    torch.testing.assert_close(eager(images).logits, expected.logits, atol=1e-5, rtol=0)

    # save_pretrained copied the code beside the weights (relative imports, register_for_auto_class)
    assert (folder / "modeling_ifam.py").is_file() and (folder / "configuration_ifam.py").is_file()
    torch.save(images, tmp_path / "images.pt")
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(folder), str(tmp_path / "images.pt")],
        capture_output=True, text=True, cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert remote["grid"] == [8, 8] and remote["stage1_hidden"] == 16
    torch.testing.assert_close(torch.tensor(remote["logits"]), expected.logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("stage1_registers", [False, True])
def test_from_dinov2_with_a_smaller_stage1(tmp_path, images, stage1_registers):
    torch.manual_seed(0)
    base = Dinov2Model(Dinov2Config(**{**TINY, "image_size": IMAGE}))
    base.save_pretrained(tmp_path / "base")
    small_kwargs = {key: value for key, value in SMALL_STAGE1.items() if key != "model_type"}
    if stage1_registers:
        small = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**small_kwargs, num_register_tokens=4))
    else:
        small = Dinov2Model(Dinov2Config(**small_kwargs))
    small.save_pretrained(tmp_path / "small")

    model = IFAMForImageClassification.from_dinov2(
        str(tmp_path / "base"), stage1=str(tmp_path / "small"), num_parts=2, id2label={0: "a", 1: "b"},
        stage1_image_size=28,
    )
    assert model.config.hidden_size == 32 and model.config.stage1_config.hidden_size == 16
    assert model.config.stage1_config.model_type == ("dinov2_with_registers" if stage1_registers else "dinov2")
    for stage, source in ((model.stage1, small), (model.stage2, base)):
        for key, value in source.state_dict().items():
            torch.testing.assert_close(stage.backbone.state_dict()[key], value, atol=0, rtol=0)
    model.eval()
    assert model(images).token_mask.shape == (4, GRID * GRID)

    same = IFAMForImageClassification.from_dinov2(str(tmp_path / "base"), stage1=str(tmp_path / "base"), num_parts=2)
    assert same.config.stage1_config is None  # the same checkpoint: the paper's layout


@pytest.mark.parametrize("registers", [0, 4])
def test_converter_puts_a_small_pdiscoformer_before_a_larger_dinov2(tmp_path, images, registers, capsys):
    """PDiscoFormer (width 16, stage 1 only) + a DINOv2 of width 32 for stage 2: stage 1 computes exactly what the
    equal-stage conversion (tested against the reference forward) computes, stage 2's backbone is the DINOv2
    checkpoint's, and the folder round-trips with `stage1_config` nested."""
    from safetensors.torch import save_file

    from modeling_ifam.convert_reference import convert_reference, main
    from test_convert_reference import reference_state_dict

    reference = reference_state_dict("timm", "pdiscoformer", width=16, depth=1, image=IMAGE, parts=2, classes=2,
                                     registers=registers, mlp_hidden=32)
    (tmp_path / "pdisco").mkdir()
    save_file({key: value.contiguous() for key, value in reference.items()}, tmp_path / "pdisco" / "model.safetensors")
    torch.manual_seed(0)
    base = Dinov2Model(Dinov2Config(**{**TINY, "image_size": IMAGE}))
    base.save_pretrained(tmp_path / "base")

    equal = convert_reference(tmp_path / "pdisco", num_attention_heads=2)
    model = convert_reference(tmp_path / "pdisco", num_attention_heads=2, stage2_backbone=str(tmp_path / "base"))
    stage1 = model.config.stage1_config
    assert (stage1.hidden_size, model.config.hidden_size) == (16, 32)
    assert stage1.model_type == ("dinov2_with_registers" if registers else "dinov2")
    assert model.stage1.num_prefix_tokens == 1 + registers and model.config.num_register_tokens == 0
    assert model.config.num_parts == 2 and model.config.num_labels == 2 and not model.training
    for key, value in base.state_dict().items():
        torch.testing.assert_close(model.stage2.backbone.state_dict()[key], value, atol=0, rtol=0)
    with torch.no_grad():
        expected, outputs = equal(images), model(images)
    torch.testing.assert_close(outputs.part_maps, expected.part_maps, atol=0, rtol=0)
    torch.testing.assert_close(outputs.stage1_logits, expected.stage1_logits, atol=0, rtol=0)
    assert torch.equal(outputs.token_mask, expected.token_mask)

    main([str(tmp_path / "pdisco"), "--output_dir", str(tmp_path / "out"), "--num_attention_heads", "2",
          "--stage2_backbone", str(tmp_path / "base")])
    assert "Stage 1 on its own backbone" in capsys.readouterr().out
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert loaded.config.stage1_config.hidden_size == 16
    with torch.no_grad():  # stage 2's head is freshly initialised by each conversion: compare what was converted
        reloaded = loaded(images)
    torch.testing.assert_close(reloaded.part_maps, outputs.part_maps, atol=1e-6, rtol=0)
    torch.testing.assert_close(reloaded.stage1_logits, outputs.stage1_logits, atol=1e-6, rtol=0)
    for key, value in base.state_dict().items():
        torch.testing.assert_close(loaded.stage2.backbone.state_dict()[key], value, atol=0, rtol=0)


def test_converter_refuses_stage2_backbone_for_a_two_stage_checkpoint(tmp_path):
    from modeling_ifam.convert_reference import convert_reference, convert_reference_state_dict
    from test_convert_reference import reference_state_dict

    with pytest.raises(ValueError, match="holds its own stage 2"):
        convert_reference(reference_state_dict("timm", "ifam"), num_attention_heads=2, stage2_backbone="unused")
    with pytest.raises(ValueError, match="stage2_backbone"):  # the state-dict level converts equal stages only
        convert_reference_state_dict({}, tiny_config(stage1_config=SMALL_STAGE1))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_prototype_initialisation_reads_stage1_own_grid(name, images):
    """`initialize_prototypes` reads the image as stage 1 sees it (its resolution, patch size and registers): of the
    K + 1 prototypes, the background one lies nearest the mean feature of stage 1's border patches, and a stage 1 at its
    own resolution gives the same prototypes from the already resized image."""
    model = variant_model(name)
    prototypes = model.initialize_prototypes(images)
    with torch.no_grad():
        features, (height, width) = model.stage1.patch_features(images)
    assert (height, width) == stage1_grid(model) and prototypes.shape[1] == model.stage1.prototypes.shape[1]
    border = torch.ones(height, width, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    background_side = features[:, border.flatten()]
    # the 2-means starts from the border; the background prototype is the mean of a set that holds the border's
    # nearest patches, so it lies nearer the border mean than the foreground prototypes do
    distance = torch.cdist(prototypes, background_side.reshape(-1, features.shape[-1]).mean(0, keepdim=True))[:, 0]
    assert distance.argmin() == model.config.num_parts
    size = model.config.stage1_image_size
    if size is not None:  # the image stage 1 sees, given already resized: the same prototypes
        resized = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        torch.testing.assert_close(model.initialize_prototypes(resized), prototypes, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------------------------------
# the explanation's consumers on stage 2's grid: post-processing, the pipeline, the part evaluation, training


def test_post_process_part_maps_draws_both_maps_on_stage2_grid(images):
    """Stage 1 at half the side: `segmentation` is the argmax on stage 2's grid, the one that made the stage-2 mask."""
    from modeling_ifam import IFAMImageProcessorPil

    model = variant_model("half").eval()
    with torch.no_grad():
        outputs = model(images)
    assert outputs.part_maps.shape[-2:] == (GRID // 2, GRID // 2)
    geometry = IFAMImageProcessorPil(do_resize=False, do_center_crop=False)
    maps = geometry.post_process_part_maps(outputs, target_sizes=[(IMAGE, IMAGE)] * len(images))
    on_grid, _ = resize_part_outputs(outputs.part_maps, None, (GRID, GRID))
    expected = F.interpolate(on_grid.argmax(1, keepdim=True).float(), scale_factor=PATCH, mode="nearest")[:, 0].long()
    num_parts = model.config.num_parts
    for index, result in enumerate(maps):
        assert torch.equal(result["stage2_mask"], patch_pixel_mask(outputs.token_mask)[index, 0])
        assert torch.equal(result["segmentation"], expected[index])
        assert torch.equal(result["segmentation"] != num_parts, result["stage2_mask"])  # no part dropped
    # the paper's layout is unchanged: the part maps' own grid
    same = tiny_model(image_size=IMAGE).eval()
    with torch.no_grad():
        plain = same(images)
    result = geometry.post_process_part_maps(plain, target_sizes=[(IMAGE, IMAGE)] * len(images))[0]
    expected = F.interpolate(plain.part_maps.argmax(1, keepdim=True).float(), scale_factor=PATCH, mode="nearest")
    assert torch.equal(result["segmentation"], expected[0, 0].long())


def test_explanation_pipeline_with_stage1_at_its_own_resolution(tmp_path):
    from PIL import Image
    from transformers import pipeline

    from modeling_ifam import IFAMImageProcessor
    from modeling_ifam.pipeline_ifam import TASK

    model = variant_model("small_half").eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor = IFAMImageProcessor(size={"shortest_edge": 64}, crop_size={"height": IMAGE, "width": IMAGE})
    processor.save_pretrained(folder)
    explain = pipeline(TASK, model=str(folder), device="cpu")
    array = torch.randint(0, 256, (60, 80, 3), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    image = Image.fromarray(array.numpy())
    result = explain(image)
    stage2 = torch.from_numpy(np.asarray(result["stage2_mask"]) > 0)
    assert stage2.shape == (60, 80)
    foreground = torch.zeros_like(stage2)
    for part in result["parts"][:-1]:
        foreground |= torch.from_numpy(np.asarray(part["mask"]) > 0)
    assert torch.equal(foreground, stage2)  # the parts drawn are the ones that made the mask
    # the model's own token mask for that input: its fraction of the crop is the pipeline's (up to pixel rounding)
    inputs = processor(image, return_tensors="pt")
    with torch.no_grad():
        token_mask = model(**inputs).token_mask
    assert token_mask.shape == (1, GRID * GRID)
    assert 0 < token_mask.sum() < token_mask.numel()
    inside = 1 - result["outside_fraction"]
    assert abs(result["stage2_fraction"] - token_mask.float().mean().item() * inside) < 0.02


def test_token_removal_rows_of_the_part_evaluation_on_stage2_grid(images):
    from ifam_interventions.evaluate_parts import maps_after_token_removal

    model = variant_model("half").eval()
    with torch.no_grad():
        stage1 = model.stage1(images)
        maps, distances = model.part_maps_on_grid(stage1, (GRID, GRID))
    assignment = maps.flatten(2).argmax(1)
    distance = distances.flatten(2).gather(1, assignment[:, None]).squeeze(1)
    levels = [float(distance[assignment == k].median()) if (assignment == k).any() else float("inf")
              for k in range(model.config.num_parts)]
    model.config.part_distance_thresholds = {"50": levels}
    kept, visible = maps_after_token_removal(model, stage1, None, (GRID, GRID))
    assert kept is stage1.part_maps and visible.shape == (4, GRID * GRID)  # NMI/ARI/Kp read stage 1's own maps
    removed_maps, visible = maps_after_token_removal(model, stage1, torch.tensor(levels), (GRID, GRID))
    with torch.no_grad():
        assert torch.equal(visible, model(images, token_removal_percentile=50).token_mask)  # what stage 2 sees
    assert removed_maps.shape[-2:] == (GRID, GRID)
    removed = (assignment != model.config.num_parts) & ~visible
    assert removed.any() and visible.any()
    flat, before = removed_maps.flatten(2).transpose(1, 2), maps.flatten(2).transpose(1, 2)
    assert (flat[removed][:, -1] == 1).all() and torch.equal(flat[~removed], before[~removed])


def test_train_calibrate_and_evaluate_parts_with_stage1_at_half_resolution(tmp_path):
    """`ifam-train --stage1_image_size`, then calibration and `evaluate_parts` (NMI, ARI, Kp, fg mIoU) on its folder."""
    from conftest import TINY_RUN, run_training
    from ifam_interventions import calibration, evaluate_parts

    folder = tmp_path / "run"
    run_training(folder, "--image_size", str(IMAGE), "--stage1_image_size", str(IMAGE // 2))
    config = json.loads((folder / "config.json").read_text())
    assert config["stage1_image_size"] == IMAGE // 2 and config["image_size"] == IMAGE
    data = ["--model_name_or_path", str(folder), *TINY_RUN[:6], "--image_size", str(IMAGE)]
    calibration.main([*data, "--percentiles", "90"])
    rows = evaluate_parts.main([*data, "--split", "test", "--output_dir", str(tmp_path / "out")])
    assert [row["percentile"] for row in rows][:2] == [None, 90.0]
    for row in rows:
        assert 0 <= row["nmi"] <= 1 and -1 <= row["ari"] <= 1 and 0 <= row["fg_miou"] <= 1
        assert row["keypoint_regression_error"] >= 0


def test_train_refuses_stage1_options_it_cannot_apply(tmp_path):
    from ifam_train import train

    with pytest.raises(ValueError, match="needs `--model_name_or_path`"):
        train.main(["--model_name_or_path", "scratch", "--stage1_model_name_or_path", "facebook/dinov2-small",
                    "--output_dir", str(tmp_path)])


def test_loss_grid_check_reads_stage1_grid(images):
    """The part losses are on stage 1's grid: with labels, that grid (not stage 2's 8 x 8) must be at least 4 x 4."""
    model = tiny_model(image_size=IMAGE, stage1_image_size=14).train()  # stage 1: 2 x 2 patches
    with pytest.raises(ValueError, match=r"stage1_image_size. 14x14\) gives a 2x2 patch grid"):
        model(images, labels=torch.tensor([0, 1, 2, 0]))
    model.eval()
    assert model(images).token_mask.shape == (4, GRID * GRID)  # inference needs no part loss
