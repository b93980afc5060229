"""Loading the authors' reference checkpoints (iFAM and PDiscoFormer, Hugging Face and timm layouts).

The reference state dicts are built from key tables written out here from the reference modules
(`ananthu-aniraj/ifam`, `ananthu-aniraj/pdiscoformer`), not from the converter's mapping, with random tensors; the
converted model's part distances, part maps, token mask and both stages' logits are compared with a torch-only
re-implementation of the reference forward computed from the reference weights alone.
"""

import json
import math

import pytest
import torch
from torch.nn import functional as F

from conftest import tiny_config
from modeling_ifam import IFAMForImageClassification
from modeling_ifam.convert_reference import (
    build_config,
    convert_reference,
    convert_reference_state_dict,
    detect_source,
    infer_reference_config,
    load_id2label,
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


# --- the reference layouts, written out from the authors' modules ----------------------------------------------------
#
# Key names and shapes of the Hugging Face variant, as the reference modules define them (`ananthu-aniraj/ifam`:
# `layers/hf_dinov2_transformer_layers.py`, `models/individual_landmark_vit_2_stage_mod_hf.py`,
# `models/attn_mask_vit_2_stage_hf.py`, `models/pdiscoformer_hf.py`), stated here literally: nothing below is derived
# from the converter's mapping or from our model's names. `D` width, `H` MLP hidden features, `K1` = K + 1 prototypes,
# `C` classes, `N1` = patches + 1 position rows, `R` registers (transformers' DINOv2-with-registers naming).

HF_EMBEDDING_KEYS = {
    "embeddings.cls_token": ("1", "1", "D"),
    "embeddings.position_embeddings": ("1", "N1", "D"),
    "embeddings.patch_embeddings.projection.weight": ("D", "3", "P", "P"),
    "embeddings.patch_embeddings.projection.bias": ("D",),
}
HF_LAYER_KEYS = {  # encoder.layer.{i}.
    "norm1.weight": ("D",), "norm1.bias": ("D",),
    "attention.attention.query.weight": ("D", "D"), "attention.attention.query.bias": ("D",),
    "attention.attention.key.weight": ("D", "D"), "attention.attention.key.bias": ("D",),
    "attention.attention.value.weight": ("D", "D"), "attention.attention.value.bias": ("D",),
    "attention.output.dense.weight": ("D", "D"), "attention.output.dense.bias": ("D",),
    "layer_scale1.lambda1": ("D",),
    "norm2.weight": ("D",), "norm2.bias": ("D",),
    "layer_scale2.lambda1": ("D",),
}
HF_MLP_KEYS = {"mlp.fc1.weight": ("H", "D"), "mlp.fc1.bias": ("H",), "mlp.fc2.weight": ("D", "H"), "mlp.fc2.bias": ("D",)}
HF_SWIGLU_KEYS = {"mlp.weights_in.weight": ("2H", "D"), "mlp.weights_in.bias": ("2H",),
                  "mlp.weights_out.weight": ("D", "H"), "mlp.weights_out.bias": ("D",)}
HF_FINAL_KEYS = {"layernorm.weight": ("D",), "layernorm.bias": ("D",)}
PART_HEAD_KEYS = {
    "fc_landmarks.weight": ("K1", "D", "1", "1"),  # Conv2d(D, K + 1, 1, bias=False)
    "modulation.weight": ("D", "K1"), "modulation.bias": ("D", "K1"),  # LayerNorm([D, K + 1])
    "fc_class_landmarks.weight": ("C", "D"),  # Linear(D, C, bias=False)
}
STAGE2_HEAD_KEYS = {"fc_norm.weight": ("D",), "fc_norm.bias": ("D",), "head.weight": ("C", "D")}
# timm `VisionTransformer` (`vit_*_reg4_dinov2`: no_embed_class, so pos_embed has patch rows only)
TIMM_EMBEDDING_KEYS = {"cls_token": ("1", "1", "D"), "pos_embed": ("1", "N", "D"),
                       "patch_embed.proj.weight": ("D", "3", "P", "P"), "patch_embed.proj.bias": ("D",)}
TIMM_BLOCK_KEYS = {  # blocks.{i}.
    "norm1.weight": ("D",), "norm1.bias": ("D",),
    "attn.qkv.weight": ("3D", "D"), "attn.qkv.bias": ("3D",),  # rows: q, k, v
    "attn.proj.weight": ("D", "D"), "attn.proj.bias": ("D",),
    "ls1.gamma": ("D",),
    "norm2.weight": ("D",), "norm2.bias": ("D",),
    "mlp.fc1.weight": ("H", "D"), "mlp.fc1.bias": ("H",), "mlp.fc2.weight": ("D", "H"), "mlp.fc2.bias": ("D",),
    "ls2.gamma": ("D",),
}
TIMM_FINAL_KEYS = {"norm.weight": ("D",), "norm.bias": ("D",)}


def _shape(symbols: tuple, sizes: dict) -> tuple:
    return tuple(int(symbol) if symbol.isdigit() else sizes[symbol] for symbol in symbols)


def _random(name: str, shape: tuple, generator: torch.Generator) -> torch.Tensor:
    """Random values that keep a forward pass tame: norms and layer scales near their usual ranges."""
    if name.endswith(("norm1.weight", "norm2.weight", "layernorm.weight", "norm.weight", "modulation.weight")):
        return 1 + 0.2 * torch.randn(shape, generator=generator)
    if name.endswith(("lambda1", "gamma")):
        return 0.5 + 0.2 * torch.randn(shape, generator=generator)
    return 0.3 * torch.randn(shape, generator=generator)


def reference_state_dict(layout: str, kind: str, seed: int = 0, *, width=32, depth=2, patch=7, image=28, parts=3,
                         classes=3, registers=0, mlp_hidden=64, swiglu=False) -> dict:
    """
    A random `state_dict()` of a reference model, built from the key tables above. layout: "hf" or "timm"; kind:
    "pdiscoformer" (stage 1 alone, no prefix) or "ifam" (`stage_1.` + `stage_2.`).
    """
    generator = torch.Generator().manual_seed(seed)
    patches = (image // patch) ** 2
    sizes = {"D": width, "H": mlp_hidden, "2H": 2 * mlp_hidden, "3D": 3 * width, "P": patch, "N": patches,
             "N1": patches + 1, "K1": parts + 1, "C": classes, "R": registers}
    if layout == "hf":
        backbone = dict(HF_EMBEDDING_KEYS)
        if registers:
            backbone["embeddings.register_tokens"] = ("1", "R", "D")
        layer = {**HF_LAYER_KEYS, **(HF_SWIGLU_KEYS if swiglu else HF_MLP_KEYS)}
        for i in range(depth):
            backbone |= {f"encoder.layer.{i}.{name}": shape for name, shape in layer.items()}
        backbone |= HF_FINAL_KEYS
    else:
        backbone = dict(TIMM_EMBEDDING_KEYS)
        if registers:
            backbone["reg_token"] = ("1", "R", "D")
        for i in range(depth):
            block = dict(TIMM_BLOCK_KEYS)
            if swiglu:  # timm SwiGLUPacked: fc1 packs [gate; up]
                block |= {"mlp.fc1.weight": ("2H", "D"), "mlp.fc1.bias": ("2H",)}
            backbone |= {f"blocks.{i}.{name}": shape for name, shape in block.items()}
        backbone |= TIMM_FINAL_KEYS
    stage1 = backbone | PART_HEAD_KEYS
    if kind == "pdiscoformer":
        table = stage1
    else:
        table = {f"stage_1.{name}": shape for name, shape in stage1.items()}
        table |= {f"stage_2.{name}": shape for name, shape in (backbone | STAGE2_HEAD_KEYS).items()}
    out = {name: _random(name, _shape(shape, sizes), generator) for name, shape in table.items()}
    if kind == "ifam":  # DinoV2ModelAttnMask2Stage / AttnMaskViT2Stage: constant buffer over the prefix tokens
        out["stage_2.prefix_attn_mask"] = torch.ones(1, 1 if layout == "hf" else 1 + registers)
    return out


def reference_config(**overrides):
    """Our config for the sizes of `reference_state_dict` (hidden 32 with 2 heads: a base config gives the heads)."""
    return tiny_config(**overrides)


# --- the reference forward, torch only, from the reference weights ---------------------------------------------------


def _block_weights(sd: dict, layout: str, i: int, width: int) -> dict:
    if layout == "hf":
        w = split(sd, f"encoder.layer.{i}.")
        out = {name: w[key] for name, key in [
            ("norm1.weight", "norm1.weight"), ("norm1.bias", "norm1.bias"), ("norm2.weight", "norm2.weight"),
            ("norm2.bias", "norm2.bias"), ("ls1", "layer_scale1.lambda1"), ("ls2", "layer_scale2.lambda1"),
            ("proj.weight", "attention.output.dense.weight"), ("proj.bias", "attention.output.dense.bias")]}
        for p, name in (("q", "query"), ("k", "key"), ("v", "value")):
            out[f"{p}.weight"], out[f"{p}.bias"] = (w[f"attention.attention.{name}.{t}"] for t in ("weight", "bias"))
        if "mlp.weights_in.weight" in w:
            out |= {"swiglu": True, "in.weight": w["mlp.weights_in.weight"], "in.bias": w["mlp.weights_in.bias"],
                    "out.weight": w["mlp.weights_out.weight"], "out.bias": w["mlp.weights_out.bias"]}
        else:
            out |= {"swiglu": False, "in.weight": w["mlp.fc1.weight"], "in.bias": w["mlp.fc1.bias"],
                    "out.weight": w["mlp.fc2.weight"], "out.bias": w["mlp.fc2.bias"]}
        return out
    w = split(sd, f"blocks.{i}.")
    out = {"norm1.weight": w["norm1.weight"], "norm1.bias": w["norm1.bias"], "norm2.weight": w["norm2.weight"],
           "norm2.bias": w["norm2.bias"], "ls1": w["ls1.gamma"], "ls2": w["ls2.gamma"],
           "proj.weight": w["attn.proj.weight"], "proj.bias": w["attn.proj.bias"],
           "in.weight": w["mlp.fc1.weight"], "in.bias": w["mlp.fc1.bias"],
           "out.weight": w["mlp.fc2.weight"], "out.bias": w["mlp.fc2.bias"],
           "swiglu": w["mlp.fc1.weight"].shape[0] == 2 * w["mlp.fc2.weight"].shape[1]}
    for index, p in enumerate("qkv"):  # timm Attention: qkv(x).reshape(B, N, 3, heads, head_dim)
        out[f"{p}.weight"] = w["attn.qkv.weight"][index * width:(index + 1) * width]
        out[f"{p}.bias"] = w["attn.qkv.bias"][index * width:(index + 1) * width]
    return out


def reference_backbone(sd: dict, layout: str, pixel_values, heads: int, key_mask=None, eps=1e-6):
    """The reference backbone (either layout), final norm applied; `key_mask` [B, T] hides keys as the reference
    stage 2 does (`attn_mask` over the keys, prefix tokens always visible). Returns (tokens, number of prefix tokens)."""
    if layout == "hf":
        weight, bias = sd["embeddings.patch_embeddings.projection.weight"], sd["embeddings.patch_embeddings.projection.bias"]
    else:
        weight, bias = sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"]
    width, patch = weight.shape[0], weight.shape[-1]
    x = F.conv2d(pixel_values, weight, bias, stride=patch).flatten(2).transpose(1, 2)
    batch = x.shape[0]
    if layout == "hf":  # Dinov2Embeddings: cat(cls, patches) + position; registers after the class token, no position
        x = torch.cat([sd["embeddings.cls_token"].expand(batch, -1, -1), x], dim=1) + sd["embeddings.position_embeddings"]
        if "embeddings.register_tokens" in sd:
            x = torch.cat([x[:, :1], sd["embeddings.register_tokens"].expand(batch, -1, -1), x[:, 1:]], dim=1)
        norm = ("layernorm.weight", "layernorm.bias")
        depth = 1 + max(int(key.split(".")[2]) for key in sd if key.startswith("encoder.layer."))
    else:  # timm _pos_embed, no_embed_class: patches + position, then cat(cls, reg, patches)
        prefix = [sd["cls_token"].expand(batch, -1, -1)] + ([sd["reg_token"].expand(batch, -1, -1)] if "reg_token" in sd else [])
        x = torch.cat(prefix + [x + sd["pos_embed"]], dim=1)
        norm = ("norm.weight", "norm.bias")
        depth = 1 + max(int(key.split(".")[1]) for key in sd if key.startswith("blocks."))
    num_prefix = x.shape[1] - (pixel_values.shape[-1] // patch) * (pixel_values.shape[-2] // patch)
    bias_mask = None
    if key_mask is not None:
        keep = torch.cat([torch.ones(batch, num_prefix, dtype=torch.bool), key_mask], dim=1)
        bias_mask = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))[:, None, None, :]
    for i in range(depth):
        w = _block_weights(sd, layout, i, width)
        h = F.layer_norm(x, (width,), w["norm1.weight"], w["norm1.bias"], eps)
        q, k, v = (F.linear(h, w[f"{p}.weight"], w[f"{p}.bias"]).unflatten(-1, (heads, -1)).transpose(1, 2) for p in "qkv")
        scores = q @ k.transpose(-2, -1) / math.sqrt(width // heads)
        if bias_mask is not None:
            scores = scores + bias_mask
        h = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
        x = x + w["ls1"] * F.linear(h, w["proj.weight"], w["proj.bias"])
        h = F.linear(F.layer_norm(x, (width,), w["norm2.weight"], w["norm2.bias"], eps), w["in.weight"], w["in.bias"])
        if w["swiglu"]:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h)
        x = x + w["ls2"] * F.linear(h, w["out.weight"], w["out.bias"])
    return F.layer_norm(x, (width,), sd[norm[0]], sd[norm[1]], eps), num_prefix


def reference_forward(sd: dict, layout: str, kind: str, pixel_values, heads: int):
    """
    The reference model in eval mode (softmax part maps): stage-1 distances [B, K+1, N], part maps, stage-1 logits,
    and for iFAM the stage-2 logits of the image seen through the hard foreground mask (argmax not the background).
    """
    stage1 = sd if kind == "pdiscoformer" else split(sd, "stage_1.")
    tokens, num_prefix = reference_backbone(stage1, layout, pixel_values, heads)
    x = tokens[:, num_prefix:]  # [B, N, D]
    prototypes = stage1["fc_landmarks.weight"][:, :, 0, 0]
    distances = (x.pow(2).sum(-1, keepdim=True) - 2 * x @ prototypes.T + prototypes.pow(2).sum(-1)).transpose(1, 2)
    maps = (-distances).softmax(dim=1)  # [B, K+1, N]
    features = torch.einsum("bkn,bnd->bdk", maps, x) / x.shape[1]
    features = F.layer_norm(features, features.shape[1:], stage1["modulation.weight"], stage1["modulation.bias"], 1e-5)
    logits1 = (features[..., :-1].transpose(1, 2) @ stage1["fc_class_landmarks.weight"].T).mean(dim=1)
    out = {"distances": distances, "maps": maps, "stage1_logits": logits1}
    if kind == "ifam":
        stage2 = split(sd, "stage_2.")
        foreground = maps.argmax(dim=1) != maps.shape[1] - 1
        tokens, _ = reference_backbone(stage2, layout, pixel_values, heads, key_mask=foreground)
        cls = F.layer_norm(tokens[:, 0], (tokens.shape[-1],), stage2["fc_norm.weight"], stage2["fc_norm.bias"], 1e-5)
        out |= {"logits": cls @ stage2["head.weight"].T, "token_mask": foreground}
    return out


def assert_matches_reference(model, reference, layout, kind, pixel_values, heads):
    expected = reference_forward(reference, layout, kind, pixel_values, heads)
    with torch.no_grad():
        output = model(pixel_values)
    torch.testing.assert_close(output.part_distances.flatten(2), expected["distances"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(output.part_maps.flatten(2), expected["maps"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(output.stage1_logits, expected["stage1_logits"], atol=1e-5, rtol=1e-4)
    if kind == "ifam":
        assert torch.equal(output.token_mask, expected["token_mask"])
        assert 0 < expected["token_mask"].float().mean() < 1, "the test needs a mask that hides something"
        torch.testing.assert_close(output.logits, expected["logits"], atol=1e-5, rtol=1e-4)


def split(state_dict: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


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


# --- both layouts against the reference forward ---------------------------------------------------------------------


HEADS = 2  # the tiny references are 32 wide with 16-dimensional heads, not DINOv2's 64: the heads are given


@pytest.mark.parametrize("kind", ["ifam", "pdiscoformer"])
@pytest.mark.parametrize("layout, registers, swiglu", [("hf", 0, False), ("hf", 4, False), ("hf", 0, True),
                                                       ("timm", 4, False), ("timm", 0, True)])
def test_conversion_matches_the_reference_forward(kind, layout, registers, swiglu, pixel_values):
    reference = reference_state_dict(layout, kind, registers=registers, swiglu=swiglu)
    assert detect_source(reference) == f"{kind}_{layout}"
    model = convert_reference(reference, num_attention_heads=HEADS)
    assert not model.training
    config = model.config
    assert (config.num_parts, config.num_labels, config.num_register_tokens, config.hidden_size,
            config.num_hidden_layers, config.patch_size, config.image_size, config.use_swiglu_ffn) == (
        3, 3, registers, 32, 2, 7, 28, swiglu)
    assert_matches_reference(model, reference, layout, kind, pixel_values, HEADS)
    if kind == "pdiscoformer":  # stage 2 starts as a copy of stage 1's backbone
        stage1, stage2 = model.stage1.backbone.state_dict(), model.stage2.backbone.state_dict()
        assert all(torch.equal(stage1[key], stage2[key]) for key in stage1)


def test_swapped_query_and_key_do_not_match_the_reference(pixel_values):
    """The control: the reference forward does tell q from k (a converter that swapped them would fail above)."""
    reference = reference_state_dict("hf", "ifam")
    swapped = dict(reference)
    for stage in ("stage_1", "stage_2"):
        for kind in ("weight", "bias"):
            query, key = f"{stage}.encoder.layer.0.attention.attention.query.{kind}", f"{stage}.encoder.layer.0.attention.attention.key.{kind}"
            swapped[query], swapped[key] = reference[key], reference[query]
    model = convert_reference(swapped, num_attention_heads=HEADS)
    with pytest.raises(AssertionError):
        assert_matches_reference(model, reference, "hf", "ifam", pixel_values, HEADS)


def test_every_reference_tensor_is_placed_once():
    """A bijection on the HF layout: each reference tensor appears in exactly one converted tensor (or is the buffer)."""
    reference = reference_state_dict("hf", "ifam", registers=4)
    converted = convert_reference_state_dict(reference, reference_config(num_register_tokens=4))
    placed = {key: sum(torch.equal(value, tensor) for tensor in converted.values()) for key, value in reference.items()
              if key != "stage_2.prefix_attn_mask" and not key.endswith("fc_landmarks.weight")}
    assert all(count == 1 for count in placed.values()), {k: v for k, v in placed.items() if v != 1}
    assert torch.equal(converted["stage1.prototypes"], reference["stage_1.fc_landmarks.weight"][:, :, 0, 0])
    assert not any(key.endswith("mask_token") for key in converted)


def test_inferred_sizes():
    for layout in ("hf", "timm"):
        reference = reference_state_dict(layout, "ifam", width=64, depth=3, patch=4, image=24, parts=5, classes=7,
                                          registers=4 if layout == "timm" else 0, mlp_hidden=256)
        inferred = infer_reference_config(reference)
        assert inferred == dict(num_parts=5, num_labels=7, hidden_size=64, num_hidden_layers=3,
                                num_register_tokens=4 if layout == "timm" else 0, patch_size=4, num_channels=3,
                                image_size=24, use_swiglu_ffn=False, mlp_ratio=4, qkv_bias=True), layout
        config = build_config(inferred)
        assert config.num_attention_heads == 1 and config.id2label == {i: f"LABEL_{i}" for i in range(7)}


def test_image_size_from_the_position_table():
    """timm tables: patch rows only (no_embed_class), a class row, or class + register rows; 1369 rows -> 518 px."""
    reference = reference_state_dict("timm", "pdiscoformer", registers=4)
    patches = reference["pos_embed"]
    for table in (patches, torch.cat([patches[:, :1], patches], 1), torch.cat([patches[:, :5], patches], 1)):
        assert infer_reference_config({**reference, "pos_embed": table})["image_size"] == 28
    big = torch.zeros(1, 1369, 32)
    assert infer_reference_config({**reference, "pos_embed": big})["image_size"] == 37 * 7
    hf = reference_state_dict("hf", "pdiscoformer", patch=14, image=224)
    assert hf["embeddings.position_embeddings"].shape[1] == 257
    assert infer_reference_config(hf)["image_size"] == 224
    with pytest.raises(ValueError, match="no square grid"):
        infer_reference_config({**reference, "pos_embed": torch.zeros(1, 20, 32)})


def test_checks_and_base_config_conflicts():
    reference = reference_state_dict("timm", "ifam", registers=4)
    with pytest.raises(ValueError, match=r"num_parts=5 given, but the checkpoint's tensors give 3"):
        convert_reference(reference, num_parts=5, num_attention_heads=HEADS)
    with pytest.raises(ValueError, match=r"num_labels=10 given.*give 3.*image_size=56 given.*give 28"):
        convert_reference(reference, num_labels=10, image_size=56, num_attention_heads=HEADS)
    with pytest.raises(ValueError, match=r"num_labels \(from id2label\)=2 given"):
        convert_reference(reference, id2label=["a", "b"], num_attention_heads=HEADS)
    with pytest.raises(ValueError, match=r"another backbone.*hidden_size: base config 64, checkpoint 32"):
        convert_reference(reference, base_config=dict(hidden_size=64, num_attention_heads=2))
    with pytest.raises(ValueError, match="not a multiple of DINOv2's head size 64"):
        convert_reference(reference_state_dict("timm", "ifam", width=48, mlp_hidden=96))
    model = convert_reference(reference, base_config=dict(hidden_size=32, num_attention_heads=HEADS, image_size=518),
                              num_parts=3, num_labels=3, num_register_tokens=4, image_size=28)
    assert model.config.image_size == 28 and model.config.num_attention_heads == HEADS  # the tensors' resolution wins


def test_snapshot_ddp_and_compile_prefixes_are_unwrapped():
    reference = reference_state_dict("hf", "ifam")
    snapshot = {  # reference `Snapshot` saved with asdict(); keys as DDP + torch.compile would leave them
        "model_state": {f"module._orig_mod.{key}": value for key, value in reference.items()},
        "optimizer_state": {"state": {}, "param_groups": []},
        "finished_epoch": 7,
        "epoch_test_accuracies": [50.0, 60.0],
    }
    assert detect_source(snapshot) == "ifam_hf"
    config = reference_config()
    converted = convert_reference_state_dict(snapshot, config)
    plain = convert_reference_state_dict(reference, config)
    assert converted.keys() == plain.keys()
    assert all(torch.equal(converted[key], plain[key]) for key in plain)


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


# --- refusals --------------------------------------------------------------------------------------------------------


def test_unknown_key_and_wrong_shape_are_all_listed():
    config = reference_config()
    reference = reference_state_dict("hf", "ifam")
    reference["stage_1.encoder.layer.0.attention.attention.query_extra.weight"] = torch.zeros(3)
    reference["stage_2.some_new_head.weight"] = torch.zeros(3)
    reference["extra_top_level"] = torch.zeros(1)
    reference["stage_1.fc_class_landmarks.weight"] = torch.zeros(config.num_labels + 1, config.hidden_size)
    reference["stage_2.encoder.layer.1.attention.attention.key.weight"] = torch.zeros(4, 4)
    with pytest.raises(ValueError) as error:
        convert_reference_state_dict(reference, config)
    message = str(error.value)
    for key in ["stage_1.encoder.layer.0.attention.attention.query_extra.weight", "stage_2.some_new_head.weight",
                "extra_top_level", "stage_1.fc_class_landmarks.weight", "stage_2.encoder.layer.1.attention.attention.key.weight"]:
        assert key in message
    assert "shape mismatch" in message and "unknown key" in message
    # the refused tensors leave their targets unfilled, and that is listed too
    assert "stage1.classifier.weight" in message.split("left unfilled")[1]


def test_missing_keys_are_listed():
    reference = reference_state_dict("hf", "ifam")
    del reference["stage_2.head.weight"], reference["stage_1.encoder.layer.1.norm2.bias"]
    with pytest.raises(ValueError, match="left unfilled") as error:
        load_reference_checkpoint(reference, reference_config())
    assert "stage2.classifier.weight" in str(error.value)
    assert "stage1.backbone.encoder.layer.1.norm2.bias" in str(error.value)
    with pytest.raises(ValueError, match=r"no `stage_2.head.weight`"):
        infer_reference_config(reference)


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
    config = reference_config()
    reference = reference_state_dict("hf", "ifam")
    reference["stage_2.prefix_attn_mask"] = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="stage_2.prefix_attn_mask"):
        convert_reference_state_dict(reference, config)
    pdisconet = reference_state_dict("timm", "pdiscoformer")
    del pdisconet["modulation.weight"], pdisconet["modulation.bias"]
    pdisconet["modulation"] = torch.ones(1, config.hidden_size, config.num_parts + 1)
    with pytest.raises(ValueError, match="PDiscoNet"):
        convert_reference_state_dict(pdisconet, config)
    with pytest.raises(ValueError, match="already an `IFAMForImageClassification`"):
        convert_reference_state_dict(random_model().state_dict(), config)
    with pytest.raises(ValueError, match="source"):
        convert_reference_state_dict(reference, config, source="timm")
    with pytest.raises(ValueError, match="unknown key"):  # a timm checkpoint read as the HF layout
        convert_reference_state_dict(reference_state_dict("timm", "pdiscoformer"), config, source="pdiscoformer_hf")


# --- files, folders, Hub ids and the command line -------------------------------------------------------------------


WIDE = dict(width=128, mlp_hidden=256, registers=4)  # 64-dimensional heads, as every DINOv2: nothing to type
PDISCOFORMER_HUB_CONFIG = {  # PyTorchModelHubMixin: the JSON-able constructor arguments of IndividualLandmarkViT
    "num_landmarks": 3, "num_classes": 3, "part_dropout": 0.3, "return_transformer_qkv": False,
    "modulation_type": "layer_norm", "gumbel_softmax": True, "gumbel_softmax_temperature": 1.0,
    "gumbel_softmax_hard": False, "modulation_orth": True, "classifier_type": "linear", "noise_variance": 0.0,
}


def published_folder(folder, kind: str, layout: str = "timm", **sizes) -> dict:
    """A folder as the authors publish it: `model.safetensors` (+ `config.json` for PDiscoFormer)."""
    from safetensors.torch import save_file

    reference = reference_state_dict(layout, kind, **{**WIDE, **sizes})
    folder.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in reference.items()}, folder / "model.safetensors")
    if kind == "pdiscoformer":
        (folder / "config.json").write_text(json.dumps(PDISCOFORMER_HUB_CONFIG))
    return reference


def test_load_from_pt_and_safetensors_files(tmp_path, pixel_values):
    reference = published_folder(tmp_path / "hub", "ifam")
    torch.save({"model_state": reference, "optimizer_state": {}, "finished_epoch": 1}, tmp_path / "snapshot_best.pt")
    for path in (tmp_path / "snapshot_best.pt", tmp_path / "hub" / "model.safetensors", tmp_path / "hub"):
        model = IFAMForImageClassification.from_reference(path)
        assert model.config.num_attention_heads == 2 and model.config.num_register_tokens == 4
        assert_matches_reference(model, reference, "timm", "ifam", pixel_values, 2)


@pytest.mark.parametrize("kind, layout", [("ifam", "timm"), ("pdiscoformer", "timm"), ("ifam", "hf")])
def test_command_line_converts_a_published_folder_with_its_path_alone(kind, layout, tmp_path, pixel_values, capsys):
    from transformers import AutoModelForImageClassification

    registers = 4 if layout == "timm" else 0
    reference = published_folder(tmp_path / "hub", kind, layout, registers=registers)
    main([str(tmp_path / "hub"), "--output_dir", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert f"K=3 parts, 3 classes, {registers} register tokens, width 128, depth 2, 2 heads, patch 7, 28 px" in printed
    assert "the labels are LABEL_0 ... LABEL_2" in printed
    out = tmp_path / "out"
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "modeling_ifam.py"} <= {
        p.name for p in out.iterdir()}
    loaded = IFAMForImageClassification.from_pretrained(out).eval()
    assert loaded.config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    if kind == "pdiscoformer":  # the training options of the reference config.json
        assert loaded.config.gumbel_softmax is True and loaded.config.part_dropout == 0.3
    assert_matches_reference(loaded, reference, layout, kind, pixel_values, 2)
    auto = AutoModelForImageClassification.from_pretrained(out).eval()
    assert type(auto) is IFAMForImageClassification


def test_converted_folder_works_with_pipeline_and_trust_remote_code(tmp_path):
    import subprocess
    import sys

    from PIL import Image
    from transformers import pipeline

    from test_hub_integration import REMOTE_CODE_SCRIPT

    (tmp_path / "names.json").write_text(json.dumps(["cat", "dog", "bird"]))
    published_folder(tmp_path / "hub", "ifam")
    main([str(tmp_path / "hub"), "--output-dir", str(tmp_path / "out"), "--id2label", str(tmp_path / "names.json"),
          "--num-parts", "3", "--num_labels", "3", "--num_register_tokens", "4", "--image_size", "28"])
    image_path = tmp_path / "image.png"
    Image.fromarray((torch.rand(40, 36, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()).save(image_path)
    classifier = pipeline("image-classification", model=str(tmp_path / "out"), device="cpu")
    assert {p["label"] for p in classifier(str(image_path), top_k=3)} == {"cat", "dog", "bird"}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_SCRIPT, str(tmp_path / "out"), str(image_path)],
        capture_output=True, text=True, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
                                                           "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert {p["label"] for p in remote["pipeline"]} == {"cat", "dog", "bird"}


def test_a_hub_repository_id_is_downloaded_with_snapshot_download(tmp_path, monkeypatch, pixel_values):
    import huggingface_hub

    reference = published_folder(tmp_path / "snapshot", "pdiscoformer")
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = IFAMForImageClassification.from_reference("ananthu-aniraj/pdiscoformer_cub_k_3", revision="main")
    assert calls[0][0] == "ananthu-aniraj/pdiscoformer_cub_k_3" and calls[0][1]["revision"] == "main"
    assert "*.safetensors" in calls[0][1]["allow_patterns"] and "*.json" in calls[0][1]["allow_patterns"]
    assert_matches_reference(model, reference, "timm", "pdiscoformer", pixel_values, 2)
    with pytest.raises(FileNotFoundError, match="neither a file, a folder nor a Hub repository id"):
        IFAMForImageClassification.from_reference(str(tmp_path / "missing" / "x" / "y"))


def test_command_line_checks_fail_with_a_clear_message(tmp_path):
    published_folder(tmp_path / "hub", "pdiscoformer")
    with pytest.raises(SystemExit, match=r"error: .*num_parts=8 given, but the checkpoint's tensors give 3"):
        main([str(tmp_path / "hub"), "--output_dir", str(tmp_path / "out"), "--num_parts", "8"])
    (tmp_path / "hub" / "config.json").write_text(json.dumps({**PDISCOFORMER_HUB_CONFIG, "num_landmarks": 4}))
    with pytest.raises(SystemExit, match=r"config.json says num_landmarks=4 but the tensors hold 3"):
        main([str(tmp_path / "hub"), "--output_dir", str(tmp_path / "out")])
    (tmp_path / "hub" / "config.json").write_text(json.dumps({**PDISCOFORMER_HUB_CONFIG, "modulation_type": "original"}))
    with pytest.raises(SystemExit, match=r"modulation_type='original' is not supported"):
        main([str(tmp_path / "hub"), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_class_names_from_a_saved_dataset(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"x": Value("int32"), "label": ClassLabel(names=["albatross", "bunting", "crow"])})
    DatasetDict({"train": Dataset.from_dict({"x": [0], "label": [1]}, features=features)}).save_to_disk(tmp_path / "ds")
    assert load_id2label(tmp_path / "ds") == {0: "albatross", 1: "bunting", 2: "crow"}
    (tmp_path / "names.json").write_text(json.dumps({"0": "a", "1": "b"}))
    assert load_id2label(tmp_path / "names.json") == {0: "a", 1: "b"}


def test_vit_b14_reg4_at_518_px(tmp_path):
    """The published size: PDiscoFormer on vit_base_patch14_reg4_dinov2 at 518 px, K=8, 200 classes (random weights).
    A full forward at 518 px is too slow for the suite: the sizes, every tensor's placement by spot checks, and the
    embeddings (patch projection, class and register tokens, position table) against the reference computation."""
    from safetensors.torch import save_file

    reference = reference_state_dict("timm", "pdiscoformer", width=768, depth=12, patch=14, image=518, parts=8,
                                      classes=200, registers=4, mlp_hidden=3072)
    assert reference["pos_embed"].shape == (1, 1369, 768)
    (tmp_path / "hub").mkdir()
    save_file(reference, tmp_path / "hub" / "model.safetensors")
    (tmp_path / "hub" / "config.json").write_text(json.dumps({**PDISCOFORMER_HUB_CONFIG, "num_landmarks": 8,
                                                              "num_classes": 200}))
    model = IFAMForImageClassification.from_reference(tmp_path / "hub")
    config = model.config
    assert (config.num_parts, config.num_labels, config.num_register_tokens, config.hidden_size,
            config.num_hidden_layers, config.num_attention_heads, config.patch_size, config.image_size,
            config.mlp_ratio, config.use_swiglu_ffn) == (8, 200, 4, 768, 12, 12, 14, 518, 4, False)
    layer = model.stage1.backbone.encoder.layer[11]
    qkv = reference["blocks.11.attn.qkv.weight"]
    assert torch.equal(layer.attention.q_proj.weight, qkv[:768]) and torch.equal(layer.attention.k_proj.weight, qkv[768:1536])
    assert torch.equal(layer.attention.v_proj.weight, qkv[1536:])
    assert torch.equal(layer.mlp.fc1.weight, reference["blocks.11.mlp.fc1.weight"])
    assert torch.equal(model.stage1.prototypes, reference["fc_landmarks.weight"][:, :, 0, 0])
    pixel_values = torch.randn(1, 3, 518, 518, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        embeddings = model.stage1.backbone.embeddings(pixel_values)
    patches = F.conv2d(pixel_values, reference["patch_embed.proj.weight"], reference["patch_embed.proj.bias"], stride=14)
    expected = torch.cat([reference["cls_token"], reference["reg_token"],
                          patches.flatten(2).transpose(1, 2) + reference["pos_embed"]], dim=1)
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=1e-5)


def test_part_evaluation_of_a_converted_reference_checkpoint(tmp_path):
    """A published iFAM folder, converted with its path and class names alone, goes through `evaluate_parts`."""
    from ifam_interventions import evaluate_parts

    published_folder(tmp_path / "hub", "ifam", classes=2)
    (tmp_path / "labels.json").write_text(json.dumps(["stripes_0deg", "stripes_90deg"]))
    main([str(tmp_path / "hub"), "--output_dir", str(tmp_path / "converted"), "--id2label", str(tmp_path / "labels.json")])
    rows = evaluate_parts.main(["--model_name_or_path", str(tmp_path / "converted"), "--synthetic_num_train", "32",
                                "--image_size", "28", "--max_eval_samples", "16", "--split", "test",
                                "--output_dir", str(tmp_path / "out")])
    assert [row["percentile"] for row in rows] == [None]  # not calibrated: no token-removal rows
    assert 0 <= rows[0]["nmi"] <= 1 and rows[0]["keypoint_regression_error"] >= 0 and 0 <= rows[0]["fg_miou"] <= 1
    assert (tmp_path / "out" / "part_evaluation.md").read_text().startswith("| intervention | NMI")
