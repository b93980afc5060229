"""Loading the authors' reference checkpoints (iFAM HF variant, PDiscoFormer HF and timm layouts).

The reference state dicts are built here with the reference key names (from `ananthu-aniraj/ifam` and
`ananthu-aniraj/pdiscoformer`) and random tensors; the timm layout is also checked functionally against a
timm-free re-implementation of the reference PDiscoFormer forward pass from the fused weights.
"""

import pytest
import torch
from torch.nn import functional as F

from conftest import tiny_config
from modeling_ifam import IFAMForImageClassification
from modeling_ifam.convert_reference import (
    convert_reference_state_dict,
    detect_source,
    load_reference_checkpoint,
    main,
)


def random_model(**overrides) -> IFAMForImageClassification:
    """A tiny iFAM whose every parameter is random (not the structured init), so that misplacements show."""
    torch.manual_seed(0)
    model = IFAMForImageClassification(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.3)
    return model


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny tensors: one intra-op thread is much faster than several on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def pixel_values():
    return torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))


# --- reference layouts, written out by hand -------------------------------------------------------------------------

HF_LAYER_NAMES = {  # ours -> reference `layers/hf_dinov2_transformer_layers.py`
    "attention.q_proj": "attention.attention.query",
    "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value",
    "attention.o_proj": "attention.output.dense",
    "mlp.down_proj": "mlp.weights_out",
}


def to_reference_hf_backbone(backbone: dict, prefix: str) -> dict:
    """Our `Dinov2Model` tensors -> the reference HF variant's names (`embeddings.`, `encoder.layer.N.`, `layernorm.`)."""
    out = {}
    for key, value in backbone.items():
        if key.endswith("mask_token"):  # the reference embeddings have none
            continue
        if ".mlp.gate_proj." in key:  # SwiGLU: reference `weights_in` = [gate; up]
            out[prefix + key.replace("gate_proj", "weights_in")] = torch.cat([value, backbone[key.replace("gate", "up")]])
            continue
        if ".mlp.up_proj." in key:
            continue
        for ours, theirs in HF_LAYER_NAMES.items():
            key = key.replace(ours, theirs)
        out[prefix + key] = value
    return out


def split(state_dict: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def to_reference_ifam_hf(model: IFAMForImageClassification) -> dict:
    """`FullTwoStageModelDoubleClassifyHF.state_dict()` of a model equal to `model`."""
    sd = model.state_dict()
    out = to_reference_hf_backbone(split(sd, "stage1.backbone."), "stage_1.")
    out |= to_reference_hf_backbone(split(sd, "stage2.backbone."), "stage_2.")
    out |= {
        "stage_1.fc_landmarks.weight": sd["stage1.prototypes"][:, :, None, None],  # Conv2d(D, K+1, 1)
        "stage_1.modulation.weight": sd["stage1.modulation.weight"],
        "stage_1.modulation.bias": sd["stage1.modulation.bias"],
        "stage_1.fc_class_landmarks.weight": sd["stage1.classifier.weight"],
        "stage_2.fc_norm.weight": sd["stage2.fc_norm.weight"],
        "stage_2.fc_norm.bias": sd["stage2.fc_norm.bias"],
        "stage_2.head.weight": sd["stage2.classifier.weight"],
        "stage_2.prefix_attn_mask": torch.ones(1, 1),
    }
    return out


def part_head(sd: dict, prefix: str = "") -> dict:
    return {
        prefix + "fc_landmarks.weight": sd["stage1.prototypes"][:, :, None, None],
        prefix + "modulation.weight": sd["stage1.modulation.weight"],
        prefix + "modulation.bias": sd["stage1.modulation.bias"],
        prefix + "fc_class_landmarks.weight": sd["stage1.classifier.weight"],
    }


def to_reference_timm(model: IFAMForImageClassification, pos_layout: str, stage: str = "stage1") -> dict:
    """
    `IndividualLandmarkViT.state_dict()` (PDiscoFormer repo, timm backbone) computing the same stage 1 as `model`.
    pos_layout: "cls_row" (pos_embed has a class row), "no_embed_class" (timm `*_reg4_dinov2`: the class position is
    folded into `cls_token`), "register_rows" (pos_embed also covers the registers).
    """
    config = model.config
    sd = model.state_dict()
    bb = split(sd, f"{stage}.backbone.")
    cls, pos = bb["embeddings.cls_token"], bb["embeddings.position_embeddings"]
    out = {"patch_embed.proj.weight": bb["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": bb["embeddings.patch_embeddings.projection.bias"]}
    reg = bb.get("embeddings.register_tokens")
    if pos_layout == "cls_row":
        out |= {"cls_token": cls, "pos_embed": pos}
    elif pos_layout == "no_embed_class":
        out |= {"cls_token": cls + pos[:, :1], "pos_embed": pos[:, 1:]}
    else:
        reg_pos = torch.randn_like(reg)
        out |= {"cls_token": cls, "pos_embed": torch.cat([pos[:, :1], reg_pos, pos[:, 1:]], dim=1)}
        reg = reg - reg_pos
    if reg is not None:
        out["reg_token"] = reg
    for i in range(config.num_hidden_layers):
        layer = split(bb, f"encoder.layer.{i}.")
        block = f"blocks.{i}."
        for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"):
            out[block + name] = layer[name]
        for kind in ("weight", "bias"):
            out[block + f"attn.qkv.{kind}"] = torch.cat([layer[f"attention.{p}_proj.{kind}"] for p in "qkv"])
            out[block + f"attn.proj.{kind}"] = layer[f"attention.o_proj.{kind}"]
            if config.use_swiglu_ffn:  # timm SwiGLUPacked: fc1 = [gate; up]
                out[block + f"mlp.fc1.{kind}"] = torch.cat([layer[f"mlp.gate_proj.{kind}"], layer[f"mlp.up_proj.{kind}"]])
                out[block + f"mlp.fc2.{kind}"] = layer[f"mlp.down_proj.{kind}"]
            else:
                out[block + f"mlp.fc1.{kind}"] = layer[f"mlp.fc1.{kind}"]
                out[block + f"mlp.fc2.{kind}"] = layer[f"mlp.fc2.{kind}"]
        out[block + "ls1.gamma"] = layer["layer_scale1.lambda1"]
        out[block + "ls2.gamma"] = layer["layer_scale2.lambda1"]
    out |= {"norm.weight": bb["layernorm.weight"], "norm.bias": bb["layernorm.bias"]}
    return out | part_head(sd) if stage == "stage1" else out


def timm_reference_stage1(sd: dict, pixel_values: torch.Tensor, config) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference PDiscoFormer forward (timm ViT + part head, eval softmax) from timm-layout weights alone."""
    dim, heads, eps = config.hidden_size, config.num_attention_heads, config.layer_norm_eps
    x = F.conv2d(pixel_values, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=config.patch_size)
    x = x.flatten(2).transpose(1, 2)
    batch, patches, _ = x.shape
    prefix = [sd["cls_token"].expand(batch, -1, -1)]
    if "reg_token" in sd:
        prefix.append(sd["reg_token"].expand(batch, -1, -1))
    if sd["pos_embed"].shape[1] == patches:  # no_embed_class: add, then concat
        x = torch.cat(prefix + [x + sd["pos_embed"]], dim=1)
    else:
        x = torch.cat(prefix + [x], dim=1) + sd["pos_embed"]
    for i in range(config.num_hidden_layers):
        w = split(sd, f"blocks.{i}.")
        h = F.layer_norm(x, (dim,), w["norm1.weight"], w["norm1.bias"], eps)
        qkv = F.linear(h, w["attn.qkv.weight"], w["attn.qkv.bias"]).reshape(batch, -1, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attention = (q * (dim // heads) ** -0.5 @ k.transpose(-2, -1)).softmax(dim=-1)
        h = (attention @ v).transpose(1, 2).reshape(batch, -1, dim)
        x = x + w["ls1.gamma"] * F.linear(h, w["attn.proj.weight"], w["attn.proj.bias"])
        h = F.linear(F.layer_norm(x, (dim,), w["norm2.weight"], w["norm2.bias"], eps), w["mlp.fc1.weight"], w["mlp.fc1.bias"])
        if config.use_swiglu_ffn:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h)
        x = x + w["ls2.gamma"] * F.linear(h, w["mlp.fc2.weight"], w["mlp.fc2.bias"])
    num_prefix = sum(tokens.shape[1] for tokens in prefix)
    x = F.layer_norm(x, (dim,), sd["norm.weight"], sd["norm.bias"], eps)[:, num_prefix:]
    prototypes = sd["fc_landmarks.weight"][:, :, 0, 0]
    distances = x.pow(2).sum(-1, keepdim=True) - 2 * x @ prototypes.T + prototypes.pow(2).sum(-1)  # [B, N, K+1]
    maps = (-distances).softmax(dim=-1)
    features = torch.einsum("bnk,bnd->bdk", maps, x) / patches
    features = F.layer_norm(features, features.shape[1:], sd["modulation.weight"], sd["modulation.bias"], 1e-5)
    logits = (features[..., :-1].transpose(1, 2) @ sd["fc_class_landmarks.weight"].T).mean(dim=1)
    return distances, logits


# --- iFAM, Hugging Face variant --------------------------------------------------------------------------------------


@pytest.mark.parametrize("registers", [0, 4])
def test_ifam_hf_round_trip_places_every_tensor(registers, pixel_values):
    model = random_model(num_register_tokens=registers)
    reference = to_reference_ifam_hf(model)
    assert detect_source(reference) == "ifam_hf"
    converted = convert_reference_state_dict(reference, model.config)
    expected = {key: value for key, value in model.state_dict().items() if not key.endswith("mask_token")}
    assert converted.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(converted[key], value), key

    loaded = load_reference_checkpoint(reference, model.config)
    assert not loaded.training
    ours, theirs = model(pixel_values), loaded(pixel_values)
    torch.testing.assert_close(theirs.logits, ours.logits)
    torch.testing.assert_close(theirs.stage1_logits, ours.stage1_logits)


def test_ifam_hf_key_mapping_spot_checks():
    model = random_model()
    reference = to_reference_ifam_hf(model)
    converted = convert_reference_state_dict(reference, model.config, source="ifam_hf")
    assert torch.equal(converted["stage1.prototypes"], reference["stage_1.fc_landmarks.weight"][:, :, 0, 0])
    assert torch.equal(converted["stage1.classifier.weight"], reference["stage_1.fc_class_landmarks.weight"])
    assert torch.equal(converted["stage1.modulation.weight"], reference["stage_1.modulation.weight"])
    assert torch.equal(converted["stage2.classifier.weight"], reference["stage_2.head.weight"])
    assert torch.equal(converted["stage2.fc_norm.bias"], reference["stage_2.fc_norm.bias"])
    layer = "encoder.layer.1."
    for ours, theirs in [("attention.q_proj", "attention.attention.query"), ("attention.k_proj", "attention.attention.key"),
                         ("attention.v_proj", "attention.attention.value"), ("attention.o_proj", "attention.output.dense")]:
        for stage, ref_stage in [("stage1", "stage_1"), ("stage2", "stage_2")]:
            assert torch.equal(converted[f"{stage}.backbone.{layer}{ours}.weight"], reference[f"{ref_stage}.{layer}{theirs}.weight"])
    assert torch.equal(converted["stage2.backbone.embeddings.position_embeddings"],
                       reference["stage_2.embeddings.position_embeddings"])


def test_ifam_hf_swiglu_weights_in_split_is_functional():
    model = random_model(use_swiglu_ffn=True)
    reference = to_reference_ifam_hf(model)
    weights_in = reference["stage_1.encoder.layer.0.mlp.weights_in.weight"]
    bias_in = reference["stage_1.encoder.layer.0.mlp.weights_in.bias"]
    assert weights_in.shape[0] == 2 * model.stage1.backbone.encoder.layer[0].mlp.gate_proj.out_features
    loaded = load_reference_checkpoint(reference, model.config)
    x = torch.randn(2, 5, model.config.hidden_size)
    # reference Dinov2SwiGLUFFN: x1, x2 = weights_in(x).chunk(2); weights_out(silu(x1) * x2)
    x1, x2 = F.linear(x, weights_in, bias_in).chunk(2, dim=-1)
    expected = F.linear(F.silu(x1) * x2, reference["stage_1.encoder.layer.0.mlp.weights_out.weight"],
                        reference["stage_1.encoder.layer.0.mlp.weights_out.bias"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.stage1.backbone.encoder.layer[0].mlp(x), expected)


def test_snapshot_ddp_and_compile_prefixes_are_unwrapped():
    model = random_model()
    reference = to_reference_ifam_hf(model)
    snapshot = {  # reference `Snapshot` saved with asdict(); keys as DDP + torch.compile would leave them
        "model_state": {f"module._orig_mod.{key}": value for key, value in reference.items()},
        "optimizer_state": {"state": {}, "param_groups": []},
        "finished_epoch": 7,
        "epoch_test_accuracies": [50.0, 60.0],
    }
    assert detect_source(snapshot) == "ifam_hf"
    converted = convert_reference_state_dict(snapshot, model.config)
    plain = convert_reference_state_dict(reference, model.config)
    assert converted.keys() == plain.keys()
    assert all(torch.equal(converted[key], plain[key]) for key in plain)


# --- PDiscoFormer ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "registers, pos_layout, swiglu",
    [(4, "no_embed_class", False), (0, "cls_row", False), (4, "register_rows", False), (0, "no_embed_class", True)],
)
def test_pdiscoformer_timm_matches_reference_forward(registers, pos_layout, swiglu, pixel_values):
    model = random_model(num_register_tokens=registers, use_swiglu_ffn=swiglu)
    config = model.config
    reference = to_reference_timm(model, pos_layout)
    assert detect_source(reference) == "pdiscoformer_timm"
    loaded = load_reference_checkpoint(reference, config)

    # the fused qkv is split into q / k / v, rows [0:D], [D:2D], [2D:3D]
    converted = convert_reference_state_dict(reference, config)
    dim = config.hidden_size
    qkv_weight, qkv_bias = reference["blocks.1.attn.qkv.weight"], reference["blocks.1.attn.qkv.bias"]
    for index, name in enumerate(("q_proj", "k_proj", "v_proj")):
        rows = slice(index * dim, (index + 1) * dim)
        assert torch.equal(converted[f"stage1.backbone.encoder.layer.1.attention.{name}.weight"], qkv_weight[rows])
        assert torch.equal(converted[f"stage1.backbone.encoder.layer.1.attention.{name}.bias"], qkv_bias[rows])
    assert torch.equal(converted["stage1.backbone.encoder.layer.0.layer_scale1.lambda1"], reference["blocks.0.ls1.gamma"])
    assert torch.equal(converted["stage1.backbone.layernorm.weight"], reference["norm.weight"])
    assert torch.equal(converted["stage1.prototypes"], reference["fc_landmarks.weight"][:, :, 0, 0])

    # functional: the reference forward from the timm weights alone
    distances, logits = timm_reference_stage1(reference, pixel_values, config)
    with torch.no_grad():
        output = loaded(pixel_values)
    grid = output.part_distances.flatten(2).transpose(1, 2)
    torch.testing.assert_close(grid, distances, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(output.stage1_logits, logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(output.stage1_logits, model(pixel_values).stage1_logits, atol=1e-5, rtol=1e-4)

    # stage 2: backbone copied from stage 1, head left at init
    stage1, stage2 = loaded.stage1.backbone.state_dict(), loaded.stage2.backbone.state_dict()
    assert all(torch.equal(stage1[key], stage2[key]) for key in stage1)
    assert stage2["embeddings.cls_token"].data_ptr() != stage1["embeddings.cls_token"].data_ptr()
    assert "stage2.classifier.weight" not in converted and "stage2.fc_norm.weight" not in converted
    assert output.logits.shape == (2, config.num_labels) and torch.isfinite(output.logits).all()


@pytest.mark.parametrize("registers", [0, 4])
def test_pdiscoformer_hf(registers, pixel_values):
    model = random_model(num_register_tokens=registers)
    sd = model.state_dict()
    reference = to_reference_hf_backbone(split(sd, "stage1.backbone."), "") | part_head(sd)  # DinoV2PDiscoOrigHF
    assert detect_source(reference) == "pdiscoformer_hf"
    converted = convert_reference_state_dict(reference, model.config)
    for key, value in sd.items():
        if key.startswith("stage1.") and not key.endswith("mask_token"):
            assert torch.equal(converted[key], value), key
            if key.startswith("stage1.backbone."):
                assert torch.equal(converted["stage2." + key[len("stage1."):]], value), key
    loaded = load_reference_checkpoint(reference, model.config)
    torch.testing.assert_close(loaded(pixel_values).stage1_logits, model(pixel_values).stage1_logits)


def test_ifam_timm_variant(pixel_values):
    """The timm-based reference iFAM (`AttnMaskViT2Stage` with a re-initialised `fc_norm`): stage by stage."""
    model = random_model(num_register_tokens=4)
    sd = model.state_dict()
    reference = {f"stage_1.{key}": value for key, value in to_reference_timm(model, "no_embed_class").items()}
    reference |= {f"stage_2.{key}": value for key, value in to_reference_timm(model, "no_embed_class", "stage2").items()}
    reference |= {"stage_2.fc_norm.weight": sd["stage2.fc_norm.weight"], "stage_2.fc_norm.bias": sd["stage2.fc_norm.bias"],
                  "stage_2.head.weight": sd["stage2.classifier.weight"], "stage_2.prefix_attn_mask": torch.ones(1, 5)}
    assert detect_source(reference) == "ifam_timm"
    loaded = load_reference_checkpoint(reference, model.config)
    ours, theirs = model(pixel_values), loaded(pixel_values)
    torch.testing.assert_close(theirs.logits, ours.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(theirs.stage1_logits, ours.stage1_logits, atol=1e-5, rtol=1e-4)


# --- refusals --------------------------------------------------------------------------------------------------------


def test_unknown_key_and_wrong_shape_are_all_listed():
    model = random_model()
    reference = to_reference_ifam_hf(model)
    reference["stage_1.encoder.layer.0.attention.attention.query_extra.weight"] = torch.zeros(3)
    reference["stage_2.some_new_head.weight"] = torch.zeros(3)
    reference["extra_top_level"] = torch.zeros(1)
    reference["stage_1.fc_class_landmarks.weight"] = torch.zeros(model.config.num_labels + 1, model.config.hidden_size)
    reference["stage_2.encoder.layer.1.attention.attention.key.weight"] = torch.zeros(4, 4)
    with pytest.raises(ValueError) as error:
        convert_reference_state_dict(reference, model.config)
    message = str(error.value)
    for key in ["stage_1.encoder.layer.0.attention.attention.query_extra.weight", "stage_2.some_new_head.weight",
                "extra_top_level", "stage_1.fc_class_landmarks.weight", "stage_2.encoder.layer.1.attention.attention.key.weight"]:
        assert key in message
    assert "shape mismatch" in message and "unknown key" in message
    # the refused tensors leave their targets unfilled, and that is listed too
    assert "stage1.classifier.weight" in message.split("left unfilled")[1]


def test_missing_keys_are_listed():
    model = random_model()
    reference = to_reference_ifam_hf(model)
    del reference["stage_2.head.weight"], reference["stage_1.encoder.layer.1.norm2.bias"]
    with pytest.raises(ValueError, match="left unfilled") as error:
        load_reference_checkpoint(reference, model.config)
    assert "stage2.classifier.weight" in str(error.value)
    assert "stage1.backbone.encoder.layer.1.norm2.bias" in str(error.value)


def test_config_mismatches_are_refused():
    model = random_model(num_register_tokens=4)
    reference = to_reference_timm(model, "no_embed_class")
    with pytest.raises(ValueError) as error:  # registers in the checkpoint, none in the config
        convert_reference_state_dict(reference, tiny_config(num_register_tokens=0))
    assert "reg_token" in str(error.value) and "num_register_tokens=0" in str(error.value)
    with pytest.raises(ValueError) as error:  # a position table for another resolution
        convert_reference_state_dict(reference, tiny_config(num_register_tokens=4, image_size=35))
    assert "pos_embed" in str(error.value) and "image_size=35" in str(error.value)
    with pytest.raises(ValueError) as error:  # another K
        convert_reference_state_dict(reference, tiny_config(num_register_tokens=4, num_parts=5))
    assert "fc_landmarks.weight" in str(error.value) and "modulation.weight" in str(error.value)
    reference["blocks.0.attn.qkv.weight"] = reference["blocks.0.attn.qkv.weight"][:-1]
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.weight"):
        convert_reference_state_dict(reference, model.config)


def test_other_refusals():
    model = random_model()
    reference = to_reference_ifam_hf(model)
    reference["stage_2.prefix_attn_mask"] = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="stage_2.prefix_attn_mask"):
        convert_reference_state_dict(reference, model.config)
    pdisconet = to_reference_timm(model, "cls_row")
    del pdisconet["modulation.weight"], pdisconet["modulation.bias"]
    pdisconet["modulation"] = torch.ones(1, model.config.hidden_size, model.config.num_parts + 1)
    with pytest.raises(ValueError, match="PDiscoNet"):
        convert_reference_state_dict(pdisconet, model.config)
    with pytest.raises(ValueError, match="already an `IFAMForImageClassification`"):
        convert_reference_state_dict(model.state_dict(), model.config)
    with pytest.raises(ValueError, match="source"):
        convert_reference_state_dict(reference, model.config, source="timm")
    with pytest.raises(ValueError, match="unknown key"):  # a timm checkpoint read as the HF layout
        convert_reference_state_dict(to_reference_timm(model, "cls_row"), model.config, source="pdiscoformer_hf")


# --- files and command line ------------------------------------------------------------------------------------------


def test_load_from_pt_and_safetensors_files(tmp_path, pixel_values):
    from safetensors.torch import save_file

    model = random_model(num_register_tokens=4)
    reference = to_reference_ifam_hf(model)
    torch.save({"model_state": reference, "optimizer_state": {}, "finished_epoch": 1}, tmp_path / "snapshot_best.pt")
    save_file({key: value.contiguous() for key, value in reference.items()}, tmp_path / "model.safetensors")
    expected = model(pixel_values).logits
    for name in ("snapshot_best.pt", "model.safetensors"):
        loaded = load_reference_checkpoint(tmp_path / name, model.config)
        torch.testing.assert_close(loaded(pixel_values).logits, expected)


def test_command_line_writes_a_pretrained_folder(tmp_path, pixel_values):
    from transformers import Dinov2WithRegistersConfig

    from conftest import TINY

    model = random_model(num_register_tokens=4)
    Dinov2WithRegistersConfig(**TINY).save_pretrained(tmp_path / "base")
    torch.save({"model_state": to_reference_ifam_hf(model)}, tmp_path / "ckpt.pth")
    main([str(tmp_path / "ckpt.pth"), "--output-dir", str(tmp_path / "out"), "--num-parts", "3", "--num-labels", "3",
          "--base-config", str(tmp_path / "base" / "config.json")])
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "preprocessor_config.json").is_file()
    loaded = IFAMForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert loaded.config.num_register_tokens == 4 and loaded.config.num_parts == 3
    torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits)
