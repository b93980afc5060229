"""The paper's optimisation recipe: what trains, and at which learning rate (Appendix A)."""

import math

import torch

from modeling_ifam import IFAMForImageClassification

TOKEN_NAMES = ("cls_token", "register_tokens", "position_embeddings")


def set_trainable(
    model: IFAMForImageClassification, freeze_stage1_backbone: bool, freeze_stage2_backbone: bool
) -> None:
    """
    Stage 1's backbone is frozen but for its CLS, register and position tokens (PDiscoFormer); stage 2 is fully
    fine-tuned. DINOv2's mask token is never used by iFAM and never trains (it would stall DDP as an unused weight).
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
    AdamW groups: backbone tokens and layers at `backbone_lr`, the part prototypes at `prototype_lr`, modulation and
    classifier heads of both stages at `head_lr`; every rate scaled by sqrt(effective batch / reference batch).
    No weight decay on biases, norms and tokens. Works for a plain `Dinov2ForImageClassification` too (backbone and
    classifier).
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
