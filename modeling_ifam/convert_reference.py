"""Load checkpoints trained with the authors' reference code into [`IFAMForImageClassification`].

Supported sources (`source=`; `"auto"` detects the layout from the key names):

- `"ifam_hf"`: the reference iFAM, Hugging Face variant (`FullTwoStageModelDoubleClassifyHF` in
  `ananthu-aniraj/ifam`): one state dict with `stage_1.` (`DinoV2PDiscoHF`) and `stage_2.`
  (`DinoV2ModelAttnMask2Stage`) entries, backbones in the transformers 4 DINOv2 naming
  (`attention.attention.query`, `attention.output.dense`, `mlp.weights_in`, ...).
- `"ifam_timm"`: the reference iFAM, timm variant (`stage_1.blocks.0.attn.qkv.weight`, ...), converted like
  `"pdiscoformer_timm"` stage by stage.
- `"pdiscoformer_hf"`: `DinoV2PDiscoOrigHF` (`models/pdiscoformer_hf.py` in `ananthu-aniraj/ifam`), no prefix.
- `"pdiscoformer_timm"`: `IndividualLandmarkViT` of `ananthu-aniraj/pdiscoformer` (its snapshots and its Hub
  checkpoints): a timm ViT (`blocks.N.attn.qkv`, `ls1.gamma`, `pos_embed`, `reg_token`, ...) plus the part head.

A PDiscoFormer checkpoint is a stage-1 model only: stage 2's backbone is initialised from stage 1's (a copy, as
the reference two-stage training starts both stages from the same DINOv2) and stage 2's `fc_norm` and classifier stay
at their initialisation, so its `logits` mean nothing until stage 2 is fine-tuned; `stage1_logits` and the part maps
are the PDiscoFormer model's.

Checkpoints may be wrapped in a training snapshot (`{"model_state": ..., "optimizer_state": ..., ...}`) and carry
DDP (`module.`) or `torch.compile` (`_orig_mod.`) prefixes. Nothing is dropped silently: every key that cannot be
placed (unknown, wrong shape, not representable) and every target left unfilled is listed in one `ValueError`. The
only targets that may stay at their initialisation are the DINOv2 `mask_token`s (iFAM never masks patch inputs) and,
for PDiscoFormer sources, stage 2's head.

Exact equivalences used for the timm layout: the fused `qkv` projection is split into `q/k/v` (rows `[0:D]`,
`[D:2D]`, `[2D:3D]`); timm's `SwiGLUPacked` `fc1` (gate half first) into `gate_proj`/`up_proj`; a `pos_embed` without
a class-token row (`no_embed_class`, e.g. `vit_*_reg4_dinov2`, whose `cls_token` already holds its position) becomes
a zero class position; a `pos_embed` that also covers the register tokens has those rows folded into
`register_tokens` (transformers adds no position to registers).

Every size is read from the tensors (`infer_reference_config`): K from the prototypes, the classes from the heads, the
registers, width, depth, patch size and MLP from the backbone, the image size from the position table (1369 patches
of 14 px: 518 px; 256: 224 px); the heads are width / 64 as in every DINOv2, unless a base config says otherwise. A
folder or Hub repository as the authors publish it (`model.safetensors`, plus a `PyTorchModelHubMixin` `config.json`
for PDiscoFormer) converts with its name alone::

    python -m modeling_ifam.convert_reference ananthu-aniraj/ifam-cub-k8 --output_dir converted \
        [--id2label classes.json] [--num_parts 8 --num_labels 200 --num_register_tokens 4 --image_size 518] \
        [--base_config facebook/dinov2-base]

or `IFAMForImageClassification.from_reference(path_or_repo_id)`. The bracketed values are checks; the output folder
holds the weights, the config, DINOv2's image processor and the remote code, like a folder written by `train.py`.
A PDiscoFormer checkpoint can take a stage 2 of another size from a DINOv2 checkpoint (a cheaper stage 1, issue 16)::

    python -m modeling_ifam.convert_reference path/to/pdiscoformer-vit-small --output_dir converted \
        --stage2_backbone facebook/dinov2-base

This module is not part of the Hub remote code.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import Dinov2Config
from transformers.utils import logging

from .configuration_ifam import IFAMConfig
from .image_processing_ifam import dinov2_image_processor
from .modeling_ifam import IFAMForImageClassification, num_register_tokens


logger = logging.get_logger(__name__)

SOURCES = ("auto", "ifam_hf", "ifam_timm", "pdiscoformer_hf", "pdiscoformer_timm")
# Keys under which training scripts nest the model's state dict (the reference Snapshot uses `model_state`).
WRAPPER_KEYS = ("model_state", "state_dict", "model", "model_state_dict", "module", "ema_state")
STAGE1_HEAD_KEYS = (
    "fc_landmarks.weight", "modulation.weight", "modulation.bias", "modulation", "fc_class_landmarks.weight",
)
STAGE2_HEAD_KEYS = ("fc_norm.weight", "fc_norm.bias", "head.weight", "prefix_attn_mask")
TIMM_EMBEDDING_KEYS = ("cls_token", "reg_token", "pos_embed")


# --------------------------------------------------------------------------------------------------------------------
# checkpoint unwrapping


def unwrap_checkpoint(checkpoint) -> dict[str, torch.Tensor]:
    """
    The model state dict inside `checkpoint`: a state dict itself, a snapshot dict (`model_state`, `state_dict`, ...),
    an object with a `model_state` attribute (the reference `Snapshot` dataclass) or an `nn.Module`.
    """
    if isinstance(checkpoint, torch.nn.Module):
        return dict(checkpoint.state_dict())
    if not isinstance(checkpoint, Mapping) and hasattr(checkpoint, "model_state"):
        return unwrap_checkpoint(checkpoint.model_state)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"Expected a state dict (a mapping of names to tensors), got {type(checkpoint).__name__}.")
    if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return dict(checkpoint)
    for key in WRAPPER_KEYS:
        if isinstance(checkpoint.get(key), Mapping) or hasattr(checkpoint.get(key), "state_dict"):
            return unwrap_checkpoint(checkpoint[key])
    others = sorted(str(key) for key, value in checkpoint.items() if not isinstance(value, torch.Tensor))
    raise ValueError(
        "The checkpoint is neither a state dict nor a snapshot holding one under "
        f"{list(WRAPPER_KEYS)}; entries that are not tensors: {others}."
    )


def _strip_wrappers(key: str) -> str:
    """Drop leading DDP/DataParallel `module.` components and `torch.compile` `_orig_mod.` components anywhere."""
    parts = key.split(".")
    while len(parts) > 1 and parts[0] == "module":
        parts = parts[1:]
    return ".".join(part for part in parts if part != "_orig_mod")


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a `.safetensors` file or a `torch.save` file (`.pt`, `.pth`, `.bin`; loaded with `weights_only=True`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------------------------------------------------
# source detection


def detect_source(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The reference layout of an (unwrapped) state dict, from its key names; raises `ValueError` when unclear."""
    keys = [_strip_wrappers(key) for key in unwrap_checkpoint(state_dict)]
    stage_keys = [key.split(".", 1)[1] for key in keys if key.split(".", 1)[0] in ("stage_1", "stage_2") and "." in key]
    if stage_keys:
        layout = _backbone_layout(stage_keys)
        if layout is None:
            raise ValueError(
                "Found `stage_1.`/`stage_2.` keys (a reference iFAM checkpoint) but no DINOv2 backbone keys "
                "(`embeddings.`/`encoder.` or `blocks.`/`patch_embed.`) under them."
            )
        return f"ifam_{layout}"
    layout = _backbone_layout(keys)
    if layout is not None:
        return f"pdiscoformer_{layout}"
    if any(key.startswith(("stage1.", "stage2.")) for key in keys):
        raise ValueError(
            "This is already an `IFAMForImageClassification` state dict (`stage1.`/`stage2.` keys): load it with "
            "`model.load_state_dict` or `from_pretrained`, no conversion needed."
        )
    raise ValueError(
        f"Cannot tell the reference layout of this checkpoint from its keys (first ones: {sorted(keys)[:8]}); pass "
        f"`source=` one of {SOURCES[1:]}."
    )


def _backbone_layout(keys: list[str]) -> str | None:
    has_hf = any(key.startswith(("embeddings.", "encoder.layer.")) for key in keys)
    has_timm = any(key.startswith(("blocks.", "patch_embed.")) or key in TIMM_EMBEDDING_KEYS for key in keys)
    if has_hf and has_timm:
        raise ValueError("The checkpoint mixes transformers (`embeddings.`, `encoder.`) and timm (`blocks.`) keys.")
    return "hf" if has_hf else "timm" if has_timm else None


# --------------------------------------------------------------------------------------------------------------------
# conversion


class _Conversion:
    """Collects converted tensors, checking every target name and shape against a model built from the config."""

    def __init__(self, config: IFAMConfig):
        self.config = config
        with torch.device("meta"):
            reference_model = IFAMForImageClassification(config)
        self.expected = {key: tuple(value.shape) for key, value in reference_model.state_dict().items()}
        self.out: dict[str, torch.Tensor] = {}
        self.problems: list[str] = []
        self.ignored: list[str] = []
        self._filled_by: dict[str, str] = {}

    def refuse(self, source_key: str, reason: str) -> None:
        self.problems.append(f"{source_key}: {reason}")

    def put(self, source_key: str, target_key: str, tensor: torch.Tensor) -> None:
        if target_key not in self.expected:
            self.refuse(source_key, f"would go to `{target_key}`, which a model with this config does not have"
                        f"{self._hint(target_key)}")
        elif tuple(tensor.shape) != self.expected[target_key]:
            self.refuse(source_key, f"shape mismatch for `{target_key}`: checkpoint {tuple(tensor.shape)}, model "
                        f"{self.expected[target_key]}")
        elif target_key in self.out:
            self.refuse(source_key, f"`{target_key}` is already filled from {self._filled_by[target_key]}")
        else:
            self.out[target_key] = tensor.detach().clone().contiguous()
            self._filled_by[target_key] = source_key

    def _hint(self, target_key: str) -> str:
        config = self.config
        layer = re.search(r"\.encoder\.layer\.(\d+)\.", target_key)
        if layer and int(layer.group(1)) >= config.num_hidden_layers:
            return f" (config num_hidden_layers={config.num_hidden_layers})"
        if "register_tokens" in target_key:
            return f" (config num_register_tokens={config.num_register_tokens})"
        if ".mlp." in target_key:
            return f" (config use_swiglu_ffn={config.use_swiglu_ffn})"
        if "mask_token" in target_key:
            return f" (config use_mask_token={config.use_mask_token})"
        return ""

    def check_shape(self, source_key: str, tensor: torch.Tensor, shape: tuple, what: str) -> bool:
        if tuple(tensor.shape) != tuple(shape):
            self.refuse(source_key, f"shape mismatch: checkpoint {tuple(tensor.shape)}, expected {tuple(shape)} "
                        f"({what})")
            return False
        return True


# Renames of the transformers DINOv2 backbone (reference `layers/hf_dinov2_transformer_layers.py`, transformers 4
# naming; the transformers 5 names are accepted as they are). The value is the target suffix, or a callable for the
# keys that are split.
_LAYER = r"encoder\.layer\.(\d+)\."
_HF_BACKBONE_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"embeddings\.(cls_token|mask_token|position_embeddings|register_tokens)"), r"embeddings.\1"),
    (re.compile(r"embeddings\.patch_embeddings\.projection\.(weight|bias)"),
     r"embeddings.patch_embeddings.projection.\1"),
    (re.compile(_LAYER + r"(norm1|norm2)\.(weight|bias)"), r"encoder.layer.\1.\2.\3"),
    (re.compile(_LAYER + r"attention\.attention\.query\.(weight|bias)"), r"encoder.layer.\1.attention.q_proj.\2"),
    (re.compile(_LAYER + r"attention\.attention\.key\.(weight|bias)"), r"encoder.layer.\1.attention.k_proj.\2"),
    (re.compile(_LAYER + r"attention\.attention\.value\.(weight|bias)"), r"encoder.layer.\1.attention.v_proj.\2"),
    (re.compile(_LAYER + r"attention\.output\.dense\.(weight|bias)"), r"encoder.layer.\1.attention.o_proj.\2"),
    (re.compile(_LAYER + r"attention\.(q_proj|k_proj|v_proj|o_proj)\.(weight|bias)"),
     r"encoder.layer.\1.attention.\2.\3"),
    (re.compile(_LAYER + r"(layer_scale1|layer_scale2)\.lambda1"), r"encoder.layer.\1.\2.lambda1"),
    (re.compile(_LAYER + r"mlp\.(fc1|fc2|gate_proj|up_proj|down_proj)\.(weight|bias)"), r"encoder.layer.\1.mlp.\2.\3"),
    (re.compile(_LAYER + r"mlp\.weights_in\.(weight|bias)"), r"encoder.layer.\1.mlp.{gate_proj,up_proj}.\2"),
    (re.compile(_LAYER + r"mlp\.weights_out\.(weight|bias)"), r"encoder.layer.\1.mlp.down_proj.\2"),
    (re.compile(r"layernorm\.(weight|bias)"), r"layernorm.\1"),
]
# timm ViT (reference `models/individual_landmark_vit.py`); cls_token / reg_token / pos_embed are handled together.
_BLOCK = r"blocks\.(\d+)\."
_TIMM_BACKBONE_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"patch_embed\.proj\.(weight|bias)"), r"embeddings.patch_embeddings.projection.\1"),
    (re.compile(_BLOCK + r"(norm1|norm2)\.(weight|bias)"), r"encoder.layer.\1.\2.\3"),
    (re.compile(_BLOCK + r"attn\.qkv\.(weight|bias)"), r"encoder.layer.\1.attention.{q_proj,k_proj,v_proj}.\2"),
    (re.compile(_BLOCK + r"attn\.proj\.(weight|bias)"), r"encoder.layer.\1.attention.o_proj.\2"),
    (re.compile(_BLOCK + r"ls([12])\.gamma"), r"encoder.layer.\1.layer_scale\2.lambda1"),
    (re.compile(_BLOCK + r"mlp\.fc1\.(weight|bias)"), r"encoder.layer.\1.mlp.<fc1>.\2"),
    (re.compile(_BLOCK + r"mlp\.fc2\.(weight|bias)"), r"encoder.layer.\1.mlp.<fc2>.\2"),
    (re.compile(r"norm\.(weight|bias)"), r"layernorm.\1"),
]


def _split_targets(name: str) -> list[str]:
    """`a.{x,y}.b` -> [`a.x.b`, `a.y.b`]."""
    match = re.search(r"\{([^}]*)\}", name)
    if match is None:
        return [name]
    return [name[: match.start()] + part + name[match.end():] for part in match.group(1).split(",")]


def _convert_backbone(
    conversion: _Conversion, entries: dict[str, tuple[str, torch.Tensor]], layout: str, target_prefix: str
) -> None:
    """Backbone entries (`{key without stage prefix: (original key, tensor)}`) -> `{target_prefix}...`."""
    rules = _HF_BACKBONE_RULES if layout == "hf" else _TIMM_BACKBONE_RULES
    swiglu = conversion.config.use_swiglu_ffn
    embeddings = {}
    for key, (original, tensor) in entries.items():
        if layout == "timm" and key in TIMM_EMBEDDING_KEYS:
            embeddings[key] = (original, tensor)
            continue
        for pattern, replacement in rules:
            if pattern.fullmatch(key):
                target = pattern.sub(replacement, key)
                break
        else:
            head = "stage-1 part head" if target_prefix.startswith("stage1") else "stage-2 head"
            conversion.refuse(original, f"unknown key (neither a reference {head} key nor a {layout} DINOv2 "
                              "backbone key)")
            continue
        if "<fc1>" in target:  # timm: SwiGLUPacked packs [gate; up] in fc1, like the reference `weights_in`
            target = target.replace("<fc1>", "{gate_proj,up_proj}" if swiglu else "fc1")
        elif "<fc2>" in target:
            target = target.replace("<fc2>", "down_proj" if swiglu else "fc2")
        targets = [target_prefix + name for name in _split_targets(target)]
        if len(targets) == 1:
            conversion.put(original, targets[0], tensor)
            continue
        if tensor.shape[0] % len(targets):
            conversion.refuse(original, f"first dimension {tensor.shape[0]} does not split into {len(targets)} equal "
                              f"parts ({', '.join(targets)})")
            continue
        for name, part in zip(targets, tensor.chunk(len(targets), dim=0)):
            conversion.put(original, name, part)
    if embeddings:
        _convert_timm_embeddings(conversion, embeddings, target_prefix)


def _convert_timm_embeddings(
    conversion: _Conversion, entries: dict[str, tuple[str, torch.Tensor]], target_prefix: str
) -> None:
    """
    timm's `cls_token`, `reg_token` and `pos_embed` -> transformers' `cls_token`, `register_tokens` and
    `position_embeddings` (class position first; transformers adds no position to the registers).
    """
    config = conversion.config
    hidden, registers = config.hidden_size, config.num_register_tokens
    num_patches = (config.image_size // config.patch_size) ** 2
    prefix = target_prefix + "embeddings."
    cls_token = entries.get("cls_token")
    reg_token = entries.get("reg_token")
    if cls_token is not None:
        conversion.put(cls_token[0], prefix + "cls_token", cls_token[1])
    register_tokens = reg_token[1] if reg_token is not None else None
    if "pos_embed" in entries:
        original, pos = entries["pos_embed"]
        layouts = {num_patches + 1: "with a class-token row", num_patches: "without a class-token row (no_embed_class)"}
        if registers:
            layouts[num_patches + 1 + registers] = "with class-token and register rows"
        if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != hidden or pos.shape[1] not in layouts:
            expected = " or ".join(f"(1, {length}, {hidden}) {what}" for length, what in layouts.items())
            conversion.refuse(original, f"shape mismatch: checkpoint {tuple(pos.shape)}, expected {expected} for "
                              f"image_size={config.image_size}, patch_size={config.patch_size}")
        else:
            length = pos.shape[1]
            if length == num_patches:
                position = torch.cat([pos.new_zeros(1, 1, hidden), pos], dim=1)
            elif length == num_patches + 1:
                position = pos
            else:  # class row, register rows, patch rows
                position = torch.cat([pos[:, :1], pos[:, 1 + registers:]], dim=1)
                if register_tokens is not None and tuple(register_tokens.shape) == (1, registers, hidden):
                    register_tokens = register_tokens + pos[:, 1:1 + registers]
            conversion.put(original, prefix + "position_embeddings", position)
    if reg_token is not None:
        conversion.put(reg_token[0], prefix + "register_tokens", register_tokens)


def _convert_stage1_head(conversion: _Conversion, entries: dict[str, tuple[str, torch.Tensor]]) -> None:
    config = conversion.config
    parts, hidden = config.num_parts + 1, config.hidden_size
    for key, (original, tensor) in entries.items():
        if key == "fc_landmarks.weight":  # Conv2d(D, K+1, 1, bias=False): the prototypes, background last
            if conversion.check_shape(original, tensor, (parts, hidden, 1, 1), "1x1 conv of num_parts + 1 prototypes"):
                conversion.put(original, "stage1.prototypes", tensor[:, :, 0, 0])
        elif key in ("modulation.weight", "modulation.bias"):  # LayerNorm([D, K+1])
            conversion.put(original, "stage1." + key, tensor)
        elif key == "modulation":
            conversion.refuse(original, "a PDiscoNet-style multiplicative modulation (modulation_type='original'); "
                              "iFAM/PDiscoFormer use a LayerNorm([D, K+1]) modulation (`modulation.weight/bias`)")
        elif key == "fc_class_landmarks.weight":  # Linear(D, C, bias=False)
            conversion.put(original, "stage1.classifier.weight", tensor)


def _convert_stage2_head(conversion: _Conversion, entries: dict[str, tuple[str, torch.Tensor]]) -> None:
    for key, (original, tensor) in entries.items():
        if key in ("fc_norm.weight", "fc_norm.bias"):
            conversion.put(original, "stage2." + key, tensor)
        elif key == "head.weight":  # Linear(D, C, bias=False)
            conversion.put(original, "stage2.classifier.weight", tensor)
        elif key == "prefix_attn_mask":  # constant buffer of ones: the prefix tokens are never masked
            if tensor.ndim == 2 and tensor.shape[0] == 1 and bool((tensor == 1).all()):
                conversion.ignored.append(original)
            else:
                conversion.refuse(original, f"expected the constant all-ones (1, num_prefix_tokens) buffer, got "
                                  f"{tuple(tensor.shape)} with other values")


def convert_reference_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: IFAMConfig, source: str = "auto"
) -> dict[str, torch.Tensor]:
    """
    Convert a reference checkpoint (see the module docstring for `source`) to `IFAMForImageClassification` names.

    `state_dict` may be a snapshot dict; `module.`/`_orig_mod.` prefixes are stripped. Raises `ValueError` listing
    every key that cannot be placed (unknown key, shape mismatch, ...) and every target left unfilled. The result
    lacks only the `mask_token`s and, for PDiscoFormer sources, stage 2's `fc_norm` and `classifier`.
    """
    if source not in SOURCES:
        raise ValueError(f"`source` must be one of {SOURCES}, got {source!r}.")
    if getattr(config, "stage1_config", None) is not None:
        raise ValueError("`convert_reference_state_dict` converts into equal stages (a reference checkpoint holds one "
                         "backbone size); for a PDiscoFormer stage 1 with a DINOv2 stage 2 of another size use "
                         "`convert_reference(..., stage2_backbone=...)`.")
    raw = unwrap_checkpoint(state_dict)
    if source == "auto":
        source = detect_source(raw)
        logger.info(f"Detected a {source!r} checkpoint.")
    conversion = _Conversion(config)

    entries: dict[str, tuple[str, torch.Tensor]] = {}
    for original, tensor in raw.items():
        key = _strip_wrappers(original)
        if not isinstance(tensor, torch.Tensor):
            conversion.refuse(original, f"not a tensor ({type(tensor).__name__})")
        elif key in entries:
            conversion.refuse(original, f"same key as {entries[key][0]!r} once `module.`/`_orig_mod.` are stripped")
        else:
            entries[key] = (original, tensor)

    kind, layout = source.split("_")
    if kind == "ifam":
        stages = {"stage_1": {}, "stage_2": {}}
        for key, value in entries.items():
            stage, _, rest = key.partition(".")
            if stage in stages and rest:
                stages[stage][rest] = value
            else:
                conversion.refuse(value[0], "unknown key: a reference iFAM checkpoint holds only `stage_1.` and "
                                  "`stage_2.` entries")
    else:
        stages = {"stage_1": entries, "stage_2": {}}

    stage1, stage2 = stages["stage_1"], stages["stage_2"]
    _convert_stage1_head(conversion, {key: value for key, value in stage1.items() if key in STAGE1_HEAD_KEYS})
    _convert_backbone(conversion, {k: v for k, v in stage1.items() if k not in STAGE1_HEAD_KEYS}, layout,
                      "stage1.backbone.")
    _convert_stage2_head(conversion, {key: value for key, value in stage2.items() if key in STAGE2_HEAD_KEYS})
    _convert_backbone(conversion, {k: v for k, v in stage2.items() if k not in STAGE2_HEAD_KEYS}, layout,
                      "stage2.backbone.")

    allowed_missing = {key for key in conversion.expected if key.endswith(".embeddings.mask_token")}
    if kind == "pdiscoformer":
        # stage 2 starts from stage 1's backbone; its head stays at initialisation
        for key in list(conversion.out):
            if key.startswith("stage1.backbone."):
                conversion.out["stage2." + key[len("stage1."):]] = conversion.out[key].clone()
        stage2_head = ("stage2.fc_norm.", "stage2.classifier.")
        allowed_missing |= {key for key in conversion.expected if key.startswith(stage2_head)}
    unfilled = sorted(set(conversion.expected) - set(conversion.out) - allowed_missing)

    if conversion.problems or unfilled:
        lines = [
            f"Cannot convert the {source!r} checkpoint into IFAMForImageClassification (hidden_size="
            f"{config.hidden_size}, num_hidden_layers={config.num_hidden_layers}, num_parts={config.num_parts}, "
            f"num_labels={config.num_labels}, num_register_tokens={config.num_register_tokens}, image_size="
            f"{config.image_size}, patch_size={config.patch_size}, use_swiglu_ffn={config.use_swiglu_ffn})."
        ]
        if conversion.problems:
            lines.append(f"Checkpoint keys that cannot be placed ({len(conversion.problems)}):")
            lines += [f"  - {problem}" for problem in conversion.problems]
        if unfilled:
            lines.append(f"Model keys left unfilled ({len(unfilled)}):")
            lines += [f"  - {key}" for key in unfilled]
        raise ValueError("\n".join(lines))
    if conversion.ignored:
        logger.info(f"Ignored constant buffers: {conversion.ignored}.")
    return conversion.out


def load_reference_checkpoint(
    path_or_state_dict, config: IFAMConfig, source: str = "auto"
) -> IFAMForImageClassification:
    """
    Build `IFAMForImageClassification(config)` and load a reference checkpoint into it (a `.pt`/`.pth` file, a
    `.safetensors` file, or an in-memory state dict or snapshot); returns the model in eval mode.

    Only the `mask_token`s stay at their initialisation, plus, for a PDiscoFormer checkpoint, stage 2's `fc_norm` and
    `classifier` (stage 2's backbone is a copy of stage 1's): fine-tune stage 2 before trusting `logits`.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        path_or_state_dict = load_checkpoint_file(path_or_state_dict)
    raw = unwrap_checkpoint(path_or_state_dict)
    if source == "auto":
        source = detect_source(raw)
    state_dict = convert_reference_state_dict(raw, config, source=source)
    model = IFAMForImageClassification(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    allowed = {key for key in missing if key.endswith(".embeddings.mask_token")}
    if source.startswith("pdiscoformer"):
        allowed |= {key for key in missing if key.startswith(("stage2.fc_norm.", "stage2.classifier."))}
        logger.warning(
            "Loaded a PDiscoFormer (stage-1) checkpoint: stage 2's backbone is a copy of stage 1's and its `fc_norm` "
            "and `classifier` are freshly initialised; fine-tune stage 2 before using `logits`."
        )
    if unexpected or set(missing) - allowed:
        raise ValueError(f"Loading the converted weights failed: missing {sorted(set(missing) - allowed)}, "
                         f"unexpected {sorted(unexpected)}.")
    return model.eval()


# --------------------------------------------------------------------------------------------------------------------
# what the tensors determine


# The backbone options that the tensors fix: a base config that disagrees with them describes another backbone.
STRUCTURAL_FIELDS = ("hidden_size", "num_hidden_layers", "patch_size", "num_channels", "use_swiglu_ffn", "mlp_ratio",
                     "qkv_bias")
DINOV2_HEAD_SIZE = 64  # every DINOv2 (ViT-S/B/L/g, with or without registers, RAD-DINO) uses 64-dimensional heads


def _stages(raw: Mapping[str, torch.Tensor], source: str) -> tuple[dict, dict]:
    """`{key: tensor}` of stage 1 and stage 2 (prefixes and wrappers stripped); stage 2 is empty for PDiscoFormer."""
    entries = {_strip_wrappers(key): value for key, value in raw.items()}
    if source.startswith("pdiscoformer"):
        return entries, {}
    stage1 = {key[len("stage_1."):]: value for key, value in entries.items() if key.startswith("stage_1.")}
    stage2 = {key[len("stage_2."):]: value for key, value in entries.items() if key.startswith("stage_2.")}
    return stage1, stage2


def _square_side(length: int) -> int | None:
    side = int(round(length**0.5))
    return side if side > 0 and side * side == length else None


def _swiglu_mlp_ratio(hidden_size: int, swiglu_hidden: int) -> int | None:
    """The integer `mlp_ratio` for which transformers' `Dinov2SwiGLUFFN` has `swiglu_hidden` hidden features."""
    for ratio in (4, *range(1, 17)):
        if (int(int(hidden_size * ratio) * 2 / 3) + 7) // 8 * 8 == swiglu_hidden:
            return ratio
    return None


def infer_reference_config(state_dict, source: str = "auto") -> dict:
    """
    Everything that the tensors of a reference checkpoint determine, as `IFAMConfig` arguments: `num_parts` (K, from
    the K + 1 prototypes of `fc_landmarks`), `num_labels` (from the class heads), `hidden_size`, `num_hidden_layers`,
    `num_register_tokens`, `patch_size` and `num_channels` (from the patch-embedding kernel), `image_size` (from the
    position table: its patch rows form a square grid, e.g. 1369 = 37^2 patches of 14 px is 518 px, 256 = 16^2 is 224
    px), `use_swiglu_ffn`, `mlp_ratio` and `qkv_bias`. The number of attention heads is not in the tensors.
    Raises `ValueError` naming the missing or inconsistent tensors.
    """
    raw = unwrap_checkpoint(state_dict)
    if source == "auto":
        source = detect_source(raw)
    kind, layout = source.split("_")
    stage1, stage2 = _stages(raw, source)

    def need(entries: dict, key: str, what: str, where: str = "stage_1." if kind == "ifam" else "") -> torch.Tensor:
        if key not in entries:
            raise ValueError(f"Cannot infer {what}: the {source!r} checkpoint has no `{where}{key}`.")
        return entries[key]

    prototypes = need(stage1, "fc_landmarks.weight", "the number of parts")
    if prototypes.ndim != 4 or prototypes.shape[0] < 2:
        raise ValueError(f"`fc_landmarks.weight` should be a (K + 1, D, 1, 1) 1x1 convolution, "
                         f"got {tuple(prototypes.shape)}.")
    classifier = need(stage1, "fc_class_landmarks.weight", "the number of classes")
    inferred = {"num_parts": prototypes.shape[0] - 1, "num_labels": classifier.shape[0],
                "hidden_size": prototypes.shape[1]}
    if kind == "ifam":
        head = need(stage2, "head.weight", "the number of classes", "stage_2.")
        if head.shape[0] != classifier.shape[0]:
            raise ValueError(f"The stage-1 classifier has {classifier.shape[0]} classes but the stage-2 head "
                             f"`stage_2.head.weight` has {head.shape[0]}.")

    if layout == "timm":
        patch = need(stage1, "patch_embed.proj.weight", "the patch size")
        block = re.compile(r"blocks\.(\d+)\.")
        first, fc1, fc2 = "blocks.0.", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight"
        registers = stage1["reg_token"].shape[1] if "reg_token" in stage1 else 0
        position = need(stage1, "pos_embed", "the image size")
        rows = position.shape[1]
        # no_embed_class (patch rows only), a class row, or class + register rows
        grid = _square_side(rows) or _square_side(rows - 1) or (registers and _square_side(rows - 1 - registers))
        qkv_bias = f"{first}attn.qkv.bias" in stage1
        swiglu = fc1 in stage1 and fc2 in stage1 and stage1[fc1].shape[0] == 2 * stage1[fc2].shape[1]
        mlp_hidden = stage1[fc2].shape[1] if fc2 in stage1 else None
    else:
        patch = need(stage1, "embeddings.patch_embeddings.projection.weight", "the patch size")
        block = re.compile(r"encoder\.layer\.(\d+)\.")
        first = "encoder.layer.0."
        registers = stage1["embeddings.register_tokens"].shape[1] if "embeddings.register_tokens" in stage1 else 0
        position = need(stage1, "embeddings.position_embeddings", "the image size")
        rows = position.shape[1]
        grid = _square_side(rows - 1)
        qkv_bias = any(f"{first}attention.{name}.bias" in stage1 for name in ("attention.query", "q_proj"))
        swiglu = any(f"{first}mlp.{name}.weight" in stage1 for name in ("weights_in", "gate_proj"))
        out = next((f"{first}mlp.{name}.weight" for name in ("weights_out", "down_proj", "fc2")
                    if f"{first}mlp.{name}.weight" in stage1), None)
        mlp_hidden = stage1[out].shape[1] if out else None
    if not grid:
        raise ValueError(f"The position table has {rows} rows, which is no square grid of patches (with or without a "
                         f"class row and {registers} register rows): cannot infer the image size.")
    if patch.ndim != 4 or patch.shape[-1] != patch.shape[-2]:
        raise ValueError(f"The patch embedding should be a square (D, C, p, p) kernel, got {tuple(patch.shape)}.")
    layers = {int(match.group(1)) for key in stage1 if (match := block.match(key))}
    if not layers:
        raise ValueError("Cannot infer the depth: no transformer blocks in the checkpoint.")
    if mlp_hidden is None:
        raise ValueError(f"Cannot infer the MLP width: no `{first}mlp.` weights in the checkpoint.")
    hidden = inferred["hidden_size"]
    if swiglu:
        mlp_ratio = _swiglu_mlp_ratio(hidden, mlp_hidden)
    else:
        mlp_ratio = mlp_hidden // hidden if mlp_hidden % hidden == 0 else None
    if mlp_ratio is None:
        raise ValueError(f"An MLP of {mlp_hidden} hidden features ({'SwiGLU' if swiglu else 'GELU'}) on width {hidden} "
                         "matches no integer `mlp_ratio` of transformers' DINOv2.")
    inferred.update(
        num_hidden_layers=max(layers) + 1,
        num_register_tokens=registers,
        patch_size=patch.shape[-1],
        num_channels=patch.shape[1],
        image_size=grid * patch.shape[-1],
        use_swiglu_ffn=swiglu,
        mlp_ratio=mlp_ratio,
        qkv_bias=qkv_bias,
    )
    return inferred


# Arguments of the reference constructors that `PyTorchModelHubMixin` writes to `config.json` -> IFAMConfig
REFERENCE_CONFIG_OPTIONS = {
    "gumbel_softmax": "gumbel_softmax",
    "gumbel_softmax_temperature": "softmax_temperature",
    "softmax_temperature": "softmax_temperature",
    "part_dropout": "part_dropout",
    "part_dropout_stage_2": "part_dropout_stage2",
    "use_soft_masks": "use_soft_masks",
}


def _reference_config_options(reference_config: Mapping, inferred: Mapping) -> dict:
    """
    Check a reference `config.json` (`PyTorchModelHubMixin`: the constructor's JSON-able arguments) against the
    tensors and return the training options it carries; refuse the variants that iFAM does not implement.
    """
    problems = []
    for name, value in (("num_landmarks", inferred["num_parts"]), ("num_classes", inferred["num_labels"])):
        if name in reference_config and reference_config[name] != value:
            problems.append(f"config.json says {name}={reference_config[name]} but the tensors hold {value}")
    for name, supported in (("modulation_type", "layer_norm"), ("classifier_type", "linear")):
        if reference_config.get(name, supported) != supported:
            problems.append(f"{name}={reference_config[name]!r} is not supported (iFAM and PDiscoFormer use "
                            f"{supported!r})")
    if problems:
        raise ValueError("The reference config.json does not fit: " + "; ".join(problems) + ".")
    return {ours: reference_config[theirs] for theirs, ours in REFERENCE_CONFIG_OPTIONS.items()
            if theirs in reference_config}


def _read_base_config(base_config) -> dict:
    if isinstance(base_config, Mapping):
        return dict(base_config)
    if hasattr(base_config, "to_dict"):
        return base_config.to_dict()
    base_path = Path(base_config)
    if base_path.is_file():
        return json.loads(base_path.read_text())
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(base_config)).to_dict()


def build_config(
    inferred: Mapping,
    base_config=None,
    num_parts: int | None = None,
    num_labels: int | None = None,
    num_register_tokens: int | None = None,
    image_size: int | None = None,
    num_attention_heads: int | None = None,
    id2label=None,
    reference_config: Mapping | None = None,
    **overrides,
) -> IFAMConfig:
    """
    The `IFAMConfig` of a reference checkpoint: the tensors' values (`inferred`, from `infer_reference_config`), the
    options of `base_config` (a DINOv2 config as a Hub id, folder, `config.json`, dict or config object: heads,
    activation, ...; optional), the training options of the reference `config.json` and `overrides`.

    `num_parts`, `num_labels`, `num_register_tokens` and `image_size` are checks: a value that differs from the
    tensors' raises `ValueError`. The number of heads is `num_attention_heads`, else the base config's, else
    `hidden_size / 64` (DINOv2's head size).
    """
    checks = {"num_parts": num_parts, "num_labels": num_labels, "num_register_tokens": num_register_tokens,
              "image_size": image_size}
    if id2label is not None:
        id2label = normalize_id2label(id2label)
        checks["num_labels (from id2label)"] = len(id2label)
    mismatches = [f"{name}={value} given, but the checkpoint's tensors give {inferred[name.split(' ')[0]]}"
                  for name, value in checks.items() if value is not None and value != inferred[name.split(" ")[0]]]
    if mismatches:
        raise ValueError("The checkpoint does not match the values given: " + "; ".join(mismatches) + ".")

    kwargs = {}
    if base_config is not None:
        base = _read_base_config(base_config)
        kwargs = IFAMConfig.dinov2_options(base)
        conflicts = [f"{name}: base config {kwargs[name]!r}, checkpoint {inferred[name]!r}"
                     for name in STRUCTURAL_FIELDS if name in kwargs and kwargs[name] != inferred[name]]
        if conflicts:
            raise ValueError(f"The base config {base_config!r} describes another backbone than the checkpoint's: "
                             + "; ".join(conflicts) + ".")
    kwargs.update({name: value for name, value in inferred.items() if name != "num_labels"})
    if reference_config:
        kwargs.update(_reference_config_options(reference_config, inferred))
    if num_attention_heads is not None:
        kwargs["num_attention_heads"] = num_attention_heads
    elif base_config is None:
        if inferred["hidden_size"] % DINOV2_HEAD_SIZE:
            raise ValueError(f"Width {inferred['hidden_size']} is not a multiple of DINOv2's head size "
                             f"{DINOV2_HEAD_SIZE}: give the number of heads (num_attention_heads=) or a base config.")
        kwargs["num_attention_heads"] = inferred["hidden_size"] // DINOV2_HEAD_SIZE
    if id2label is not None:
        kwargs["id2label"] = id2label
    else:
        kwargs["num_labels"] = inferred["num_labels"]
    kwargs.update(overrides)
    return IFAMConfig(**kwargs)


def normalize_id2label(labels) -> dict[int, str]:
    """Class names as `{index: name}` from a list, a mapping (JSON keys are strings) or a `datasets.ClassLabel`."""
    if hasattr(labels, "names"):
        labels = labels.names
    if isinstance(labels, Mapping):
        id2label = {int(key): str(value) for key, value in labels.items()}
    else:
        id2label = dict(enumerate(str(name) for name in labels))
    if sorted(id2label) != list(range(len(id2label))):
        raise ValueError(f"Class indices must be 0..{len(id2label) - 1}, got {sorted(id2label)[:10]}...")
    return id2label


def load_id2label(path: str | os.PathLike) -> dict[int, str]:
    """
    Class names from a JSON file (a list of names or an `{index: name}` mapping) or from a dataset saved with
    `datasets`' `save_to_disk` whose `label` column is a `ClassLabel` (the first split of a `DatasetDict`).
    """
    path = Path(path)
    if path.is_file():
        return normalize_id2label(json.loads(path.read_text()))
    if path.is_dir():
        from datasets import load_from_disk

        dataset = load_from_disk(str(path))
        if hasattr(dataset, "keys"):  # DatasetDict
            dataset = dataset[next(iter(dataset.keys()))]
        label = dataset.features.get("label")
        if not hasattr(label, "names"):
            raise ValueError(f"The dataset at {path} has no `label` ClassLabel column to take class names from.")
        return normalize_id2label(label)
    raise FileNotFoundError(f"No id2label JSON file or saved dataset at {path}.")


# --------------------------------------------------------------------------------------------------------------------
# folders and Hub repositories


WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def resolve_reference(
    path_or_repo_id: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> tuple[Path, dict | None]:
    """
    The checkpoint file and the `config.json` (or `None`) of a reference model given as a file, a folder (as the
    authors publish: `model.safetensors`, with `config.json` for PDiscoFormer) or a Hub repository id, which is
    downloaded with `huggingface_hub.snapshot_download` (weights and JSON files only).
    """
    path = Path(path_or_repo_id)
    if not path.exists():
        if not _REPO_ID.match(str(path_or_repo_id)):
            raise FileNotFoundError(f"{str(path_or_repo_id)!r} is neither a file, a folder nor a Hub repository id.")
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(
            str(path_or_repo_id), revision=revision, cache_dir=cache_dir, token=token,
            local_files_only=local_files_only, allow_patterns=["*.json", *(f"*{s}" for s in WEIGHT_SUFFIXES)],
        ))
    if path.is_file():
        return path, None
    config_path = path / "config.json"
    reference_config = json.loads(config_path.read_text()) if config_path.is_file() else None
    for name in WEIGHT_NAMES:
        if (path / name).is_file():
            return path / name, reference_config
    candidates = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(candidates) != 1:
        found = [p.name for p in candidates] or "none"
        raise FileNotFoundError(f"Expected one checkpoint in {path} ({' or '.join(WEIGHT_NAMES)}, or a single "
                                f"{'/'.join(WEIGHT_SUFFIXES)} file); found {found}.")
    return candidates[0], reference_config


def convert_reference(
    path_or_repo_id,
    base_config=None,
    num_parts: int | None = None,
    num_labels: int | None = None,
    num_register_tokens: int | None = None,
    image_size: int | None = None,
    num_attention_heads: int | None = None,
    id2label=None,
    source: str = "auto",
    revision: str | None = None,
    cache_dir=None,
    token=None,
    local_files_only: bool = False,
    stage2_backbone=None,
    **config_overrides,
) -> IFAMForImageClassification:
    """
    `IFAMForImageClassification` (eval mode) from a reference checkpoint: a file, a folder, a Hub repository id, or
    a state dict / snapshot in memory. Every size comes from the tensors (`infer_reference_config`); the other
    arguments are optional (see `build_config`). A `config.json` beside the weights is read: a reference
    `PyTorchModelHubMixin` config is checked against the tensors and gives the training options; a transformers
    DINOv2 config serves as the base config when none is given.

    `stage2_backbone`: a DINOv2 checkpoint (Hub id or folder) for stage 2 when the checkpoint is a PDiscoFormer
    (stage 1 only), e.g. PDiscoFormer-small with `"facebook/dinov2-base"` (see `with_stage2_backbone`).
    """
    reference_config = None
    if isinstance(path_or_repo_id, (str, os.PathLike)):
        checkpoint_path, reference_config = resolve_reference(path_or_repo_id, revision, cache_dir, token,
                                                              local_files_only)
        state_dict = unwrap_checkpoint(load_checkpoint_file(checkpoint_path))
    else:
        state_dict = unwrap_checkpoint(path_or_repo_id)
    if reference_config is not None and "model_type" in reference_config:  # a transformers config
        if reference_config["model_type"] == "ifam":
            raise ValueError(f"{path_or_repo_id} is already an iFAM model folder: load it with `from_pretrained`.")
        if base_config is None:
            base_config = reference_config
        reference_config = None
    if source == "auto":
        source = detect_source(state_dict)
    inferred = infer_reference_config(state_dict, source)
    config = build_config(inferred, base_config=base_config, num_parts=num_parts, num_labels=num_labels,
                          num_register_tokens=num_register_tokens, image_size=image_size,
                          num_attention_heads=num_attention_heads, id2label=id2label,
                          reference_config=reference_config, **config_overrides)
    if stage2_backbone is not None and not source.startswith("pdiscoformer"):
        raise ValueError(f"`stage2_backbone` is for PDiscoFormer checkpoints (stage 1 only); this {source!r} "
                         "checkpoint holds its own stage 2.")
    model = load_reference_checkpoint(state_dict, config, source=source)
    return model if stage2_backbone is None else with_stage2_backbone(model, stage2_backbone)


def with_stage2_backbone(model: IFAMForImageClassification, stage2_backbone) -> IFAMForImageClassification:
    """
    A converted PDiscoFormer (`model`, whose stage 2 is only a copy of stage 1's backbone) with stage 2 taken from a
    DINOv2 checkpoint of any size instead (issue 16: e.g. PDiscoFormer-small for stage 1, DINOv2-base for stage 2).
    Stage 1 (backbone and part head) is `model`'s, kept as a separate backbone in `config.stage1_config`; the iFAM
    options (K, classes, temperatures, ...) are `model`'s; stage 2's `fc_norm` and classifier stay at their
    initialisation, as for any PDiscoFormer conversion, until stage 2 is fine-tuned.
    """
    backbone = IFAMForImageClassification._load_dinov2(stage2_backbone)
    stage1_config = IFAMConfig.dinov2_options(model.config)
    registers = stage1_config.pop("num_register_tokens")
    stage1_config["model_type"] = "dinov2_with_registers" if registers else "dinov2"
    if registers:
        stage1_config["num_register_tokens"] = registers
    own = set(IFAMConfig.__dataclass_fields__) - set(Dinov2Config.__dataclass_fields__) - {"stage1_config",
                                                                                           "num_register_tokens"}
    options = {name: getattr(model.config, name) for name in own}
    config = IFAMConfig.from_dinov2_config(backbone.config, stage1_config=stage1_config,
                                           id2label=dict(model.config.id2label), **options)
    combined = IFAMForImageClassification(config).to(model.dtype)
    combined.stage1.load_state_dict(model.stage1.state_dict())
    combined.stage2.backbone.load_state_dict(backbone.state_dict())
    return combined.eval()


def save_converted(model: IFAMForImageClassification, output_dir, processor: bool = True) -> Path:
    """
    Write a folder like `ifam-train`'s: weights, config and modeling code (`save_pretrained`, through
    `register_for_auto_class`) and DINOv2's image processor at the model's resolution.
    """
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    if processor:
        dinov2_image_processor(model.config.image_size).save_pretrained(output_dir)
    return output_dir


# --------------------------------------------------------------------------------------------------------------------
# command line


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_ifam.convert_reference",
        description="Convert a reference iFAM / PDiscoFormer checkpoint (file, folder or Hub repository id) into an "
                    "IFAMForImageClassification folder. Every size is read from the tensors; the optional values "
                    "below are checked against them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("checkpoint", help="reference checkpoint: a .safetensors/.pt/.pth file, a folder holding one "
                        "(and config.json), or a Hub repository id such as ananthu-aniraj/ifam-cub-k8")
    parser.add_argument("--output_dir", "--output-dir", required=True, help="where the converted model is written")
    parser.add_argument("--num_parts", "--num-parts", type=int, help="check: K, the number of foreground parts")
    parser.add_argument("--num_labels", "--num-labels", type=int, help="check: the number of classes")
    parser.add_argument("--id2label", help="class names: a JSON file (list or {index: name}) or a dataset folder "
                        "saved by `datasets` with a ClassLabel `label` column; default LABEL_0, LABEL_1, ...")
    parser.add_argument("--num_register_tokens", "--num-register-tokens", type=int, help="check: register tokens")
    parser.add_argument("--image_size", "--image-size", type=int, help="check: the position table's resolution")
    parser.add_argument("--num_attention_heads", type=int,
                        help="attention heads (default: the base config's, else width / 64 as in every DINOv2)")
    parser.add_argument("--base_config", "--base-config",
                        help="optional DINOv2 config (Hub id, folder or config.json) for what the tensors do not fix")
    parser.add_argument("--stage2_backbone", "--stage2-backbone",
                        help="for a PDiscoFormer checkpoint: a DINOv2 checkpoint (Hub id or folder) of any size for "
                        "stage 2, e.g. facebook/dinov2-base with PDiscoFormer-small as stage 1")
    parser.add_argument("--source", default="auto", choices=SOURCES)
    parser.add_argument("--revision", help="Hub revision")
    parser.add_argument("--no_processor", "--no-processor", action="store_true",
                        help="do not write DINOv2's image processor")
    parser.add_argument("--remote_code", "--remote-code", action="store_true",
                        help="kept for older command lines: `save_pretrained` always writes the modeling code")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = _parse_args(argv)
    id2label = load_id2label(args.id2label) if args.id2label else None
    try:
        model = convert_reference(
            args.checkpoint, base_config=args.base_config, num_parts=args.num_parts, num_labels=args.num_labels,
            num_register_tokens=args.num_register_tokens, image_size=args.image_size,
            num_attention_heads=args.num_attention_heads, id2label=id2label, source=args.source,
            revision=args.revision, stage2_backbone=args.stage2_backbone,
        )
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from error
    output_dir = save_converted(model, args.output_dir, processor=not args.no_processor)
    config = model.config
    print(f"Converted: K={config.num_parts} parts, {config.num_labels} classes, {config.num_register_tokens} register "
          f"tokens, width {config.hidden_size}, depth {config.num_hidden_layers}, {config.num_attention_heads} heads, "
          f"patch {config.patch_size}, {config.image_size} px")
    if config.stage1_config is not None:
        stage1 = config.stage1_config
        print(f"Stage 1 on its own backbone: {num_register_tokens(stage1)} register tokens, width "
              f"{stage1.hidden_size}, depth {stage1.num_hidden_layers}, {stage1.num_attention_heads} heads, patch "
              f"{stage1.patch_size}, {stage1.image_size} px; stage 2 from {args.stage2_backbone} (its head untrained)")
    if id2label is None:
        print(f"No class names given (--id2label): the labels are LABEL_0 ... LABEL_{config.num_labels - 1}.")
    print(f"Wrote {output_dir}")
    return output_dir


if __name__ == "__main__":
    main()
