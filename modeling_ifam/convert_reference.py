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

Command line::

    python -m modeling_ifam.convert_reference CHECKPOINT --output-dir DIR --num-parts K --num-labels C \
        [--num-register-tokens 4] [--base-config facebook/dinov2-base | FOLDER | config.json] [--image-size 518]

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
from transformers.utils import logging

from .configuration_ifam import IFAMConfig
from .image_processing_ifam import dinov2_image_processor
from .modeling_ifam import IFAMForImageClassification


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
# command line


def build_config(
    num_parts: int,
    num_labels: int | None = None,
    base_config: str | os.PathLike = "facebook/dinov2-base",
    num_register_tokens: int | None = None,
    image_size: int | None = None,
    id2label: dict | None = None,
    **overrides,
) -> IFAMConfig:
    """
    An `IFAMConfig` whose backbone options (size, patch size, SwiGLU, ...) come from `base_config`: a DINOv2 (or
    DINOv2-with-registers, or iFAM) config given as a Hub id, a local folder or a `config.json` file.
    """
    base_path = Path(base_config)
    if base_path.is_file():
        base = json.loads(base_path.read_text())
    else:
        from transformers import AutoConfig

        base = AutoConfig.from_pretrained(str(base_config)).to_dict()
    kwargs = IFAMConfig.dinov2_options(base)
    if num_register_tokens is not None:
        kwargs["num_register_tokens"] = num_register_tokens
    if image_size is not None:
        kwargs["image_size"] = image_size
    kwargs["num_parts"] = num_parts
    if id2label is not None:
        kwargs["id2label"] = {int(key): value for key, value in id2label.items()}
    elif num_labels is not None:
        kwargs["num_labels"] = num_labels
    kwargs.update(overrides)
    return IFAMConfig(**kwargs)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_ifam.convert_reference",
        description="Convert a reference iFAM / PDiscoFormer checkpoint into an IFAMForImageClassification folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("checkpoint", help="reference checkpoint: .pt/.pth (snapshot or state dict) or .safetensors")
    parser.add_argument("--output-dir", required=True, help="where `save_pretrained` writes the converted model")
    parser.add_argument("--num-parts", type=int, required=True, help="K, the number of foreground parts")
    parser.add_argument("--num-labels", type=int, help="C, the number of classes (or give --id2label)")
    parser.add_argument("--id2label", help="JSON file: a list of class names or a {index: name} mapping")
    parser.add_argument("--num-register-tokens", type=int, help="0 or 4 (default: from the base config, else 0)")
    parser.add_argument("--base-config", default="facebook/dinov2-base",
                        help="DINOv2 config of the backbone: Hub id, local folder or config.json")
    parser.add_argument("--image-size", type=int,
                        help="training resolution (the position table's); default: the base config's")
    parser.add_argument("--source", default="auto", choices=SOURCES)
    parser.add_argument("--no-processor", action="store_true", help="do not write a DINOv2 image processor")
    parser.add_argument("--remote-code", action="store_true",
                        help="kept for old commands: `save_pretrained` always writes the modeling code now")
    args = parser.parse_args(argv)
    if args.num_labels is None and args.id2label is None:
        parser.error("give --num-labels or --id2label")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = _parse_args(argv)
    id2label = None
    if args.id2label:
        labels = json.loads(Path(args.id2label).read_text())
        id2label = dict(enumerate(labels)) if isinstance(labels, list) else labels
        if args.num_labels is not None and len(id2label) != args.num_labels:
            raise SystemExit(f"--id2label has {len(id2label)} classes but --num-labels is {args.num_labels}.")
    config = build_config(
        args.num_parts,
        num_labels=args.num_labels,
        base_config=args.base_config,
        num_register_tokens=args.num_register_tokens,
        image_size=args.image_size,
        id2label=id2label,
    )
    model = load_reference_checkpoint(args.checkpoint, config, source=args.source)
    output_dir = Path(args.output_dir)
    model.save_pretrained(output_dir)
    if not args.no_processor:
        dinov2_image_processor(config.image_size).save_pretrained(output_dir)
    print(f"Wrote {output_dir}")
    return output_dir


if __name__ == "__main__":
    main()
