"""Self-supervised pretraining of a small DINOv2-architecture backbone by masked-patch pixel regression.

No pretrained DINOv2 can be downloaded here; this stands in for it on the built-in benchmark: the backbone sees the
unlabeled training images with 60% of the patches replaced by DINOv2's mask token and learns to predict their
(per-patch normalized) pixels, as in SimMIM. The result is saved as a `Dinov2Model` folder that
`IFAMForImageClassification.from_dinov2` and train.py's `--model_name_or_path` take.
"""

import math
from pathlib import Path

import torch
from torch import nn
from transformers import Dinov2Config, Dinov2Model, get_scheduler


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, C * p * p], each patch normalized to zero mean and unit variance."""
    patches = pixel_values.unfold(2, patch_size, patch_size).unfold(3, patch_size, patch_size)  # B C h w p p
    patches = patches.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)
    mean, std = patches.mean(-1, keepdim=True), patches.std(-1, keepdim=True)
    return (patches - mean) / (std + 1e-6)


def pretrain(
    images: torch.Tensor,
    config: Dinov2Config,
    output_dir: str | Path,
    epochs: int = 6,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    mask_ratio: float = 0.6,
    seed: int = 0,
) -> Path:
    """Pretrain on `images` ([N, 3, H, W], already normalized) and save the backbone to `output_dir`."""
    torch.manual_seed(seed)
    backbone = Dinov2Model(config).train()
    patch = config.patch_size
    decoder = nn.Linear(config.hidden_size, config.num_channels * patch * patch)
    parameters = list(backbone.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.05)
    steps = epochs * math.ceil(len(images) / batch_size)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=steps // 20, num_training_steps=steps)
    num_patches = (images.shape[-1] // patch) ** 2
    for _ in range(epochs):
        for batch in images[torch.randperm(len(images))].split(batch_size):
            masked = torch.rand(len(batch), num_patches) < mask_ratio
            hidden = backbone(batch, bool_masked_pos=masked).last_hidden_state[:, 1:]
            prediction = decoder(hidden)
            loss = (prediction - patchify(batch, patch)).pow(2).mean(-1)[masked].mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 2.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    output_dir = Path(output_dir)
    backbone.save_pretrained(output_dir)
    summary = f"masked-patch regression, {epochs} epochs, final loss {loss.item():.4f}\n"
    (output_dir / "pretraining.txt").write_text(summary)
    return output_dir
