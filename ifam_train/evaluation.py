"""Evaluation of a classifier on one split, with the project's `evaluate` modules."""

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from ifam_data.synthetic import mask_to_token_mask
from ifam_metrics import load_metric


@torch.no_grad()
def predict(
    model, dataloader, accelerator: Accelerator, token_mask_source: str = "stage1", **forward_kwargs
) -> dict[str, np.ndarray]:
    """
    Run `model` over `dataloader` (gathered across processes). Returns `predictions`, `references`, `scores` (softmax)
    and, where available, `stage1_predictions`, `groups`, `coverage` (fraction of patches stage 2 saw) and the
    discovered/ground-truth pixel masks `predicted_masks`/`reference_masks`. `token_mask_source` other than "stage1"
    gives stage 2 a fixed selection instead of stage 1's (`given_token_mask`).
    """
    model.eval()
    patch_size = accelerator.unwrap_model(model).config.patch_size  # stage 2's (a wrapped model has no `config`)
    collected: dict[str, list] = {}

    def keep(name, tensor):
        collected.setdefault(name, []).append(accelerator.gather_for_metrics(tensor).cpu())

    for batch in dataloader:
        if token_mask_source != "stage1":
            forward_kwargs["token_mask"] = given_token_mask(token_mask_source, batch, patch_size)
        outputs = model(pixel_values=batch["pixel_values"], **forward_kwargs)
        keep("predictions", outputs.logits.argmax(-1))
        keep("scores", outputs.logits.float().softmax(-1))
        keep("references", batch["labels"])
        if "group" in batch:
            keep("groups", batch["group"])
        token_mask = getattr(outputs, "token_mask", None)
        if token_mask is not None:
            keep("stage1_predictions", outputs.stage1_logits.argmax(-1))
            keep("coverage", token_mask.float().mean(-1))
            if "mask" in batch:
                height, width = batch["mask"].shape[-2:]
                side = [size // patch_size for size in batch["pixel_values"].shape[-2:]]  # stage 2's grid
                grid = token_mask.view(-1, 1, *side).float()
                keep("predicted_masks", F.interpolate(grid, size=(height, width), mode="nearest")[:, 0].bool())
                keep("reference_masks", batch["mask"])
    return {name: torch.cat(chunks).numpy() for name, chunks in collected.items()}


def given_token_mask(source: str, batch: dict, patch_size: int) -> torch.Tensor:
    """
    The `token_mask` ([B, N], bool) that replaces stage 1's selection: "ground_truth", the patches at least half inside
    the batch's `mask` (the paper's early-masking upper bound); "center", the central square of half the patch grid's
    side whatever the image shows (a control: what a positional prior alone achieves).
    """
    if source == "ground_truth":
        return mask_to_token_mask(batch["mask"], patch_size, threshold=0.5)
    if source == "center":
        height, width = batch["pixel_values"].shape[-2:]
        rows, columns = height // patch_size, width // patch_size
        top, left = (rows - rows // 2) // 2, (columns - columns // 2) // 2
        block = torch.zeros(rows, columns, dtype=torch.bool)
        block[top: top + rows // 2, left: left + columns // 2] = True
        return block.flatten().expand(batch["pixel_values"].shape[0], -1).to(batch["pixel_values"].device)
    raise ValueError(f"Unknown token_mask_source {source!r}: expected 'stage1', 'ground_truth' or 'center'.")


def compute_metrics(results: dict[str, np.ndarray], worst_group_auc: bool = False) -> dict[str, float]:
    """Accuracy (stage 2 and stage 1), group accuracies, ROC AUC for binary tasks, foreground mIoU."""
    references = results["references"]
    metrics = {"accuracy": load_metric("accuracy").compute(predictions=results["predictions"], references=references)[
        "accuracy"
    ]}
    if "stage1_predictions" in results:
        metrics["stage1_accuracy"] = load_metric("accuracy").compute(
            predictions=results["stage1_predictions"], references=references
        )["accuracy"]
        metrics["coverage"] = float(results["coverage"].mean())
    if "groups" in results:
        groups = load_metric("group_accuracy").compute(
            predictions=results["predictions"], references=references, groups=results["groups"]
        )
        keys = ("average_accuracy", "worst_group_accuracy", "mean_group_accuracy")
        metrics.update({key: groups[key] for key in keys})
        metrics["per_group_accuracy"] = {str(k): v for k, v in groups["per_group_accuracy"].items()}
    if results["scores"].shape[1] == 2 and len(np.unique(references)) == 2:
        auc = load_metric("roc_auc").compute(
            prediction_scores=results["scores"][:, 1], references=references,
            groups=results["groups"] if worst_group_auc and "groups" in results else None,
        )
        metrics.update({key: value for key, value in auc.items() if key in ("roc_auc", "worst_group_roc_auc")})
    if "predicted_masks" in results:
        miou = load_metric("foreground_miou").compute(
            predictions=list(results["predicted_masks"]), references=list(results["reference_masks"])
        )
        metrics["fg_miou"] = miou["foreground_miou"]
    return metrics
