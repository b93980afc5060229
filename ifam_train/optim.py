"""The paper's optimisation recipe: what trains, and at which learning rate (Appendix A)."""

import math

import torch

from modeling_ifam import IFAMForImageClassification

TOKEN_NAMES = ("cls_token", "register_tokens", "position_embeddings")


def set_trainable(
    model: IFAMForImageClassification, freeze_stage1_backbone: bool, freeze_stage2_backbone: bool
) -> None:
    """
    Set which backbone weights train. DINOv2's mask token is never used by iFAM and never trains (it would stall DDP as
    an unused weight).

    Args:
        model (`IFAMForImageClassification`):
            The model, changed in place.
        freeze_stage1_backbone (`bool`):
            Freeze stage 1's backbone but for its CLS, register and position tokens (PDiscoFormer, the paper's recipe).
        freeze_stage2_backbone (`bool`):
            Freeze stage 2's backbone the same way (the recipe fine-tunes it fully).
    """
    for stage, frozen in ((model.stage1, freeze_stage1_backbone), (model.stage2, freeze_stage2_backbone)):
        for name, parameter in stage.backbone.named_parameters():
            is_token = name.split(".")[-1] in TOKEN_NAMES
            parameter.requires_grad_(not frozen or is_token)
        if stage.backbone.embeddings.mask_token is not None:
            stage.backbone.embeddings.mask_token.requires_grad_(False)


HEAD_NAMES = ("modulation", "classifier", "fc_norm")


def parameter_groups(
    model: torch.nn.Module,
    backbone_lr: float,
    prototype_lr: float,
    head_lr: float,
    weight_decay: float,
    effective_batch_size: int,
    reference_batch_size: int = 16,
) -> list[dict]:
    """
    The AdamW parameter groups of the paper's recipe; every rate is scaled by sqrt(effective batch / reference batch),
    and biases, norms, tokens and prototypes get no weight decay. Works for a plain `Dinov2ForImageClassification` too
    (backbone and classifier).

    Args:
        model (`torch.nn.Module`):
            iFAM or a DINOv2 classifier; only parameters that require gradients are grouped.
        backbone_lr (`float`):
            Backbone tokens and layers.
        prototype_lr (`float`):
            The part prototypes.
        head_lr (`float`):
            The modulation and classifier heads of both stages.
        weight_decay (`float`):
            For the weight matrices.
        effective_batch_size (`int`):
            Per-device batch x processes x accumulation steps.
        reference_batch_size (`int`, *optional*, defaults to 16):
            The batch size the rates are given at.

    Returns:
        `list[dict]`: groups with `params`, `lr`, `weight_decay` and `name` (`backbone`, `prototypes`, `heads`).
    """
    scale = math.sqrt(effective_batch_size / reference_batch_size)
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name == "stage1.prototypes":
            role = "prototypes"
        elif any(part in HEAD_NAMES for part in name.split(".")):
            role = "heads"
        else:
            role = "backbone"
        no_decay = parameter.ndim < 2 or name.split(".")[-1] in TOKEN_NAMES or role == "prototypes"
        groups.setdefault((role, no_decay), []).append(parameter)
    rates = {"backbone": backbone_lr, "prototypes": prototype_lr, "heads": head_lr}
    return [
        {"params": params, "lr": rates[role] * scale, "weight_decay": 0.0 if no_decay else weight_decay, "name": role}
        for (role, no_decay), params in groups.items()
    ]
