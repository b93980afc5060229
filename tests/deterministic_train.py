"""`python tests/deterministic_train.py ARGS` = `ifam-train ARGS` with the random draws of a training step made
deterministic, for tests/test_training_recipes.py's one-process/two-process comparison.

Several processes draw from their own RNG streams, one process with gradient accumulation from one stream, so the
random crop and flip, the Gumbel noise and the equivariance transform would differ between the two runs. Here the crop
is the central one, the Gumbel-softmax is the plain softmax and the equivariance transform is the same fixed draw at
every step (the term stays on). Dropouts are switched off by the caller's flags (`--part_dropout 0 ...`).
"""

import sys

import torch
import torch.nn.functional as F

from ifam_train import data, train
from modeling_ifam import part_losses


def centre_crop(batch: dict, crop: tuple[int, int]) -> dict:
    height, width = batch["pixel_values"].shape[-2:]
    top, left = (height - crop[0]) // 2, (width - crop[1]) // 2
    window = (..., slice(top, top + crop[0]), slice(left, left + crop[1]))
    out = {**batch, "pixel_values": batch["pixel_values"][window]}
    if "mask" in batch:
        out["mask"] = batch["mask"][window]
    return out


def replace_everywhere(original, replacement) -> None:
    """Replace `original` in every loaded module that imported it by name (wherever the training loop lives)."""
    for module in list(sys.modules.values()):
        for name, value in list(getattr(module, "__dict__", {}).items()):
            if value is original:
                setattr(module, name, replacement)


replace_everywhere(data.random_crop_flip, centre_crop)
F.gumbel_softmax = lambda logits, tau=1.0, hard=False, eps=1e-10, dim=-1: (logits / tau).softmax(dim)
_sample = part_losses.RandomAffine.sample.__func__
part_losses.RandomAffine.sample = classmethod(
    lambda cls, *args, **kwargs: _sample(cls, *args, **{**kwargs, "generator": torch.Generator().manual_seed(0)})
)

if __name__ == "__main__":
    train.main(sys.argv[1:])
