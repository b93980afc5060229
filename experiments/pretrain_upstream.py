"""Pretrain the small DINOv2-architecture backbone once, on the upstream collection (`ifam_data/upstream.py`).

    python experiments/pretrain_upstream.py      # the shipped recipe -> pretrained/dinov2-tiny-upstream
    python experiments/pretrain_upstream.py --method shape --output_dir /tmp/shape

This stands in for DINOv2's pretraining at CPU scale: a broad, procedurally generated image collection that is not the
benchmark's training split (no ood test background kind in it, no stripe-orientation label), one training run, one
checkpoint folder (`config.json` + `model.safetensors`) that every later task starts from.

Methods (`--method`); none is trained on object masks:

* `pseudo` -- unsupervised per-patch saliency pseudo-labels, FOUND's assumption (the background is the image's
  dominant region, the one that touches the border): a patch is called background when its simple colour/texture
  statistics (mean and spread of its colour, mean horizontal and vertical intensity change) lie close to at least
  `--border_k` of the image's border patches, and foreground otherwise (:func:`saliency_pseudo_labels`). The backbone
  learns them per patch through a linear head on its last patch tokens; with `--self_train_rounds R` the labels are
  then replaced by the backbone's own (spatially smoothed) predictions and training continues, R times.
* `shape` -- supervised upstream pretraining on the object's shape (8 classes), a label that is not the downstream
  one, from the CLS token (as ImageNet pretraining is for the paper's ViT-B baseline).
* `shape+pseudo` -- both losses.
* `cutpaste` -- a self-supervised pretext task with no annotation of any kind (as in CutPaste and in Remez et al.'s
  "learning to segment via cut-and-paste"): a random region (a random shape of the generator, drawn afresh for every
  batch) of another upstream image is pasted into the image, and the backbone predicts per patch which fraction of it
  was pasted. The region is made by the training loop; the images' own object masks are not used.

The object masks that the generator also returns are used only to *report* how good the pseudo-labels are.
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from transformers import Dinov2Config, Dinov2Model, get_scheduler

from ifam_data.upstream import SHAPES, make_upstream_images

ROOT = Path(__file__).resolve().parents[1]

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
SMALL_BACKBONE = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=4)


# --------------------------------------------------------------------------------------------
# unsupervised saliency pseudo-labels (no masks)
# --------------------------------------------------------------------------------------------
def patch_statistics(images: np.ndarray, patch_size: int) -> np.ndarray:
    """uint8 [N, S, S, 3] -> per-patch statistics [N, h * w, 8]: mean RGB, std RGB, mean |d/dx|, mean |d/dy|.

    The intensity change at a pixel is to its right (below) neighbour, so an edge on a patch's last column (row) also
    counts in that patch: patches just outside an object's outline tend to be called foreground too (the shipped
    backbone was made with these statistics; a within-patch variant moved the pseudo-labels' IoU by only 0.6).
    """
    x = images.astype(np.float32) / 255.0
    n, s = x.shape[:2]
    h = s // patch_size
    gray = x.mean(-1)
    dx = np.abs(np.diff(gray, axis=2, append=gray[:, :, -1:]))
    dy = np.abs(np.diff(gray, axis=1, append=gray[:, -1:, :]))

    def blocks(a):  # [N, S, S, C] -> [N, h*w, p*p, C]
        a = a.reshape(n, h, patch_size, h, patch_size, -1).transpose(0, 1, 3, 2, 4, 5)
        return a.reshape(n, h * h, patch_size * patch_size, -1)

    colour = blocks(x)
    texture = blocks(np.stack([dx, dy], -1))
    return np.concatenate([colour.mean(2), colour.std(2), texture.mean(2)], -1)


def saliency_pseudo_labels(images: np.ndarray, patch_size: int, border_k: int = 4, ratio: float = 2.5,
                           floor: float = 0.6) -> np.ndarray:
    """FOUND-style figure/ground pseudo-labels [N, h * w] (bool) from the pixels alone.

    The image's border patches model its background (the dominant region touching the border). A patch's saliency
    is the distance of its statistics (standardised over the whole collection) to its `border_k`-th nearest border
    patch; the background's own spread is the median of the same distance among the border patches (leaving the
    patch itself out). Foreground: saliency above `ratio` times that spread and above `floor`.
    """
    stats = patch_statistics(images, patch_size)
    stats = stats / (stats.reshape(-1, stats.shape[-1]).std(0) + 1e-6)
    n, num = stats.shape[:2]
    h = int(math.isqrt(num))
    grid = np.arange(num).reshape(h, h)
    border = np.unique(np.concatenate([grid[0], grid[-1], grid[:, 0], grid[:, -1]]))
    distance = np.sqrt(((stats[:, :, None, :] - stats[:, None, border, :]) ** 2).sum(-1))  # [N, P, B]
    saliency = np.sort(distance, axis=2)[:, :, border_k - 1]
    # the border patches' own k-th nearest neighbour among the other border patches (index k: 0 is itself)
    spread = np.median(np.sort(distance[:, border, :], axis=2)[:, :, border_k], axis=1)  # [N]
    return saliency > np.maximum(ratio * spread, floor)[:, None]


def token_masks(masks: np.ndarray, patch_size: int) -> np.ndarray:
    """pixel masks [N, S, S] -> [N, h * w] (at least half of the patch is object); for evaluation only."""
    n, s = masks.shape[:2]
    h = s // patch_size
    return masks.reshape(n, h, patch_size, h, patch_size).mean((2, 4)).reshape(n, -1) >= 0.5


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    return 100.0 * float((predicted & truth).sum() / max(1, (predicted | truth).sum()))


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def to_pixels(images_uint8: torch.Tensor) -> torch.Tensor:
    return ((images_uint8.permute(0, 3, 1, 2).float() / 255.0) - MEAN) / STD


def augment(pixels: torch.Tensor, labels: torch.Tensor, grid: int, generator: torch.Generator):
    """Random horizontal/vertical flips and colour-channel permutation; labels [B, h*w] follow the flips."""
    lab = labels.view(-1, grid, grid)
    if torch.rand(1, generator=generator).item() < 0.5:
        pixels, lab = pixels.flip(3), lab.flip(2)
    if torch.rand(1, generator=generator).item() < 0.5:
        pixels, lab = pixels.flip(2), lab.flip(1)
    pixels = pixels[:, torch.randperm(3, generator=generator)]
    return pixels, lab.reshape(len(lab), -1)


def cut_paste(pixels: torch.Tensor, rng: np.random.Generator, patch_size: int):
    """Paste a random shape-shaped region of another image of the batch into each image.

    Returns the composite and the per-patch fraction of pasted pixels [B, h * w] (the soft target)."""
    from ifam_data.upstream import SHAPES, _shape

    b, _, s, _ = pixels.shape
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    names = rng.integers(0, len(SHAPES), b)
    region = np.zeros((b, s, s), dtype=bool)
    for k, name in enumerate(SHAPES):
        idx = np.nonzero(names == k)[0]
        if len(idx):
            region[idx] = _shape(name, len(idx), s, rng, xx[None], yy[None])
    region = torch.from_numpy(region).float()
    donors = pixels.roll(int(rng.integers(1, max(2, b))), 0)
    composite = pixels * (1 - region[:, None]) + donors * region[:, None]
    h = s // patch_size
    fraction = region.view(b, h, patch_size, h, patch_size).mean((2, 4)).reshape(b, -1)
    return composite, fraction


@torch.no_grad()
def predict_patches(backbone, head, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    backbone.eval()
    out = [torch.sigmoid(head(backbone(to_pixels(b)).last_hidden_state[:, 1:]).squeeze(-1))
           for b in images.split(batch_size)]
    backbone.train()
    return torch.cat(out)


def smooth(probabilities: torch.Tensor, grid: int) -> torch.Tensor:
    """3 x 3 average of per-patch probabilities (a little spatial regularisation for self-training labels)."""
    p = probabilities.view(-1, 1, grid, grid)
    return F.avg_pool2d(F.pad(p, (1, 1, 1, 1), mode="replicate"), 3, 1).flatten(1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="pseudo", choices=["pseudo", "shape", "shape+pseudo", "cutpaste"])
    parser.add_argument("--num_images", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=3, help="Epochs per round (rounds: 1 + self_train_rounds).")
    parser.add_argument("--self_train_rounds", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--border_k", type=int, default=4)
    parser.add_argument("--ratio", type=float, default=2.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="Torch threads (the shipped run: 1, on a loaded 2-core machine).")
    parser.add_argument("--output_dir", type=Path, default=ROOT / "pretrained" / "dinov2-tiny-upstream")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.time()

    config = Dinov2Config(**SMALL_BACKBONE, patch_size=7, image_size=56)
    grid = config.image_size // config.patch_size
    data = make_upstream_images(args.num_images, config.image_size, seed=args.seed)
    truth = token_masks(data["mask"], config.patch_size)  # evaluation only
    log = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "generation_seconds": round(time.time() - start, 1)}
    use_pseudo, use_shape = "pseudo" in args.method, "shape" in args.method
    use_cutpaste = args.method == "cutpaste"
    use_patch_loss = use_pseudo or use_cutpaste
    paste_rng = np.random.default_rng(args.seed + 1)
    targets = torch.zeros(args.num_images, grid * grid)
    if use_pseudo:
        pseudo = np.concatenate([saliency_pseudo_labels(chunk, config.patch_size, args.border_k, args.ratio)
                                 for chunk in np.array_split(data["image"], max(1, args.num_images // 1000))])
        targets = torch.from_numpy(pseudo).float()
        log["pseudo_label_iou_vs_object_masks"] = iou(pseudo, truth)
        log["pseudo_label_foreground_share"] = 100.0 * float(pseudo.mean())
        print(f"pseudo-labels: IoU {log['pseudo_label_iou_vs_object_masks']:.1f} against the object masks "
              f"(evaluation only), {log['pseudo_label_foreground_share']:.1f}% foreground", flush=True)
    images = torch.from_numpy(data["image"])
    shapes = torch.from_numpy(data["shape"])

    backbone = Dinov2Model(config).train()
    patch_head = nn.Linear(config.hidden_size, 1)
    shape_head = nn.Linear(config.hidden_size, len(SHAPES))
    parameters = [*backbone.parameters(), *patch_head.parameters(), *shape_head.parameters()]
    rounds = 1 + args.self_train_rounds
    steps_per_epoch = math.ceil(args.num_images / args.batch_size)
    total = rounds * args.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=0.05)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=total // 20, num_training_steps=total)
    progress = tqdm(total=total, desc=f"pretrain ({args.method})", mininterval=5)
    log["rounds"] = []
    for round_index in range(rounds):
        if round_index > 0:  # self-training: the backbone's own smoothed predictions become the labels
            probabilities = smooth(predict_patches(backbone, patch_head, images), grid)
            targets = (probabilities > 0.5).float()
            log["rounds"][-1]["next_label_iou_vs_object_masks"] = iou(targets.bool().numpy(), truth)
        for _ in range(args.epochs):
            totals = {"patch": 0.0, "shape": 0.0, "n": 0}
            for index in torch.randperm(args.num_images, generator=generator).split(args.batch_size):
                pixels, labels = augment(to_pixels(images[index]), targets[index], grid, generator)
                if use_cutpaste:
                    pixels, labels = cut_paste(pixels, paste_rng, config.patch_size)
                hidden = backbone(pixels).last_hidden_state
                loss = 0.0
                if use_patch_loss:
                    patch_loss = F.binary_cross_entropy_with_logits(patch_head(hidden[:, 1:]).squeeze(-1), labels)
                    loss = loss + patch_loss
                    totals["patch"] += patch_loss.item()
                if use_shape:
                    shape_loss = F.cross_entropy(shape_head(hidden[:, 0]), shapes[index])
                    loss = loss + shape_loss
                    totals["shape"] += shape_loss.item()
                totals["n"] += 1
                loss.backward()
                torch.nn.utils.clip_grad_norm_(parameters, 2.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                progress.update()
            progress.set_postfix(patch=totals["patch"] / totals["n"], shape=totals["shape"] / totals["n"])
        entry = {"round": round_index, "patch_loss": totals["patch"] / totals["n"],
                 "shape_loss": totals["shape"] / totals["n"]}
        if use_patch_loss:
            predicted = predict_patches(backbone, patch_head, images[:4000]).numpy() > 0.5
            entry["head_iou_vs_object_masks_first4000"] = iou(predicted, truth[:4000])
        log["rounds"].append(entry)
        print(json.dumps(entry), flush=True)
    progress.close()
    log["seconds"] = round(time.time() - start, 1)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(args.output_dir)
    (args.output_dir / "pretraining.json").write_text(json.dumps(log, indent=2) + "\n")
    print(f"saved {args.output_dir} after {log['seconds']:.0f} s", flush=True)
    return args.output_dir


if __name__ == "__main__":
    main()
