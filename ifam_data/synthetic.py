"""A built-in, download-free Waterbirds-like benchmark with a controlled spurious background.

Every image shows one object (a wobbly, rotated ellipse of random size, position and colours)
on a textured background.

* The **class** is carried only by a stripe pattern painted *inside* the object: class ``c`` has
  stripes at ``c * 180 / num_classes`` degrees (class 0 horizontal, class 1 vertical for two
  classes), with random colours, jittered orientation, jittered period and soft (sinusoidal)
  profile. The period is a fraction of the ViT patch size, so the pattern is visible inside every
  object patch. The outline and the colours of the object carry no class information.
* The **background kind** is a (colour family, texture) pair: smooth gradient, low-frequency
  blotches, a rotated lattice of dots, a rotated checker, fine speckle, or parallel lines at one
  of the class orientations, each in its own hue family. It is an easy cue (colour), deliberately
  easier than the stripes.

Regimes
-------
``"correlated"`` (Waterbirds analogue): ``num_classes`` background kinds, kind ``c`` is the
majority background of class ``c``. In *train*, exactly ``round(correlation * n_c)`` images of
class ``c`` lie on kind ``c`` and the rest are spread evenly over the other kinds. *validation*
and *test* are balanced over all ``num_classes x num_classes`` (class, background) groups.

``"ood"`` (CUB -> Waterbird200 analogue): ``num_train_backgrounds`` kinds (default 6) drawn
independently of the class for *train* and *validation*; *test* uses ``num_test_backgrounds``
kinds (default 6) never seen during training: four new colour/texture pairs and the two line
kinds, clutter that looks like the class cue (as natural backgrounds hold bird-like textures), so
that a model reading the whole image is misled where one reading the object is not. Validation /
test are balanced over their (class, kind) groups.

Columns
-------
``image`` (``datasets.Image``, PIL RGB), ``label`` (``ClassLabel``), ``background`` (``ClassLabel``
over the kinds of the regime, an int), ``group`` (``ClassLabel``, ``label * num_kinds +
background`` where ``num_kinds`` is the number of background kinds used by the regime:
``num_classes`` for "correlated", ``num_train_backgrounds + num_test_backgrounds`` for "ood"),
``mask`` (``datasets.Image(mode="L")``, uint8 ground-truth foreground with values 0/1 at pixel
resolution; PIL "L" so that it follows the same geometric transforms as the image), ``keypoints``
(five landmarks per object, ``[x, y, visible]`` each in pixel coordinates with the origin at the image's top-left
corner, see :data:`KEYPOINT_NAMES`: the ellipse's centre and the ends of its two axes; an end outside the image is
invisible, ``visible = 0``) and ``bbox`` (``[x, y, width, height]``, the tight box of the object's mask pixels), the
layout of CUB's ``parts/part_locs.txt`` and ``bounding_boxes.txt``. They are derived from the drawn geometry, with no
extra random draw: the images are those of generator version 2.

Use :func:`mask_to_token_mask` to turn a pixel mask into a per-patch boolean foreground mask.
"""

from __future__ import annotations

import colorsys
import hashlib
import inspect
import io
import json
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image as PILImage

import datasets
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

__all__ = [
    "BACKGROUND_KINDS",
    "KEYPOINT_NAMES",
    "make_synthetic_benchmark",
    "mask_to_token_mask",
    "synthetic_config",
]

GENERATOR_VERSION = 3  # 3: keypoints and bbox columns (same images as 2)

#: The landmarks of every object, in the order of the ``keypoints`` column. The ellipse is drawn rotated by an angle
#: in [0, 180) degrees, so "end 1" of the major axis is the one lower in the image (or the right one when the axis is
#: horizontal) and "end 1" of the minor axis the one to the left (or the upper one when it is vertical).
KEYPOINT_NAMES: Tuple[str, ...] = ("centre", "major_axis_end_1", "major_axis_end_2", "minor_axis_end_1",
                                   "minor_axis_end_2")

# (name, texture, hue in [0, 1)). Kinds 0/1 are the "water"/"land" analogues of the correlated
# two-class regime; the "ood" regime trains on the first kinds and tests on the last ones.
# Version 2: stripe contrast 0.35 -> 0.6 (a from-scratch ViT learned 0.35 too unreliably) and the line kinds.
BACKGROUND_KINDS: Tuple[Tuple[str, str, float], ...] = (
    ("blue_gradient", "gradient", 0.60),
    ("green_blotch", "blotch", 0.33),
    ("orange_dots", "dots", 0.08),
    ("purple_checker", "checker", 0.78),
    ("red_speckle", "speckle", 0.00),
    ("yellow_gradient", "gradient", 0.16),
    ("cyan_dots", "dots", 0.50),
    ("magenta_blotch", "blotch", 0.89),
    ("teal_checker", "checker", 0.43),
    ("indigo_speckle", "speckle", 0.70),
    ("olive_lines_0deg", "lines_0", 0.20),
    ("pink_lines_90deg", "lines_90", 0.95),
)

_CHUNK = 256


# --------------------------------------------------------------------------------------------
# token masks
# --------------------------------------------------------------------------------------------
def mask_to_token_mask(mask, patch_size: int, threshold: float = 0.5):
    """Pixel foreground mask -> boolean per-patch foreground mask (row-major ``[h * w]``).

    ``mask`` is a PIL image, numpy array or torch tensor of shape ``[H, W]`` (or batched
    ``[B, H, W]``, giving ``[B, h * w]``); non-zero pixels are foreground. A patch is foreground
    when at least ``threshold`` of its pixels are. ``H`` and ``W`` must be multiples of
    ``patch_size``.
    """
    import torch

    if isinstance(mask, PILImage.Image):
        if mask.mode not in ("L", "1", "I", "F", "I;16"):
            mask = mask.convert("L")
        mask = np.asarray(mask)
    m = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.array(mask, copy=True))
    batched = m.dim() == 3
    if not batched:
        m = m.unsqueeze(0)
    if m.dim() != 3:
        raise ValueError(f"mask must be [H, W] or [B, H, W], got shape {tuple(m.shape)}")
    b, height, width = m.shape
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"mask size {height}x{width} is not a multiple of patch_size={patch_size}"
        )
    h, w = height // patch_size, width // patch_size
    frac = (m != 0).float().reshape(b, h, patch_size, w, patch_size).mean(dim=(2, 4))
    out = (frac >= threshold).reshape(b, h * w)
    return out if batched else out[0]


# --------------------------------------------------------------------------------------------
# configuration / caching
# --------------------------------------------------------------------------------------------
def synthetic_config(**kwargs) -> Dict[str, Any]:
    """The full argument set of :func:`make_synthetic_benchmark` (defaults filled in)."""
    cfg = dict(_DEFAULTS)
    unknown = set(kwargs) - set(cfg)
    if unknown:
        raise TypeError(f"unknown synthetic benchmark argument(s): {sorted(unknown)}")
    cfg.update(kwargs)
    return cfg


def _cache_key(cfg: Dict[str, Any]) -> str:
    payload = json.dumps({"version": GENERATOR_VERSION, **cfg}, sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# rendering helpers (vectorised over a chunk of N images)
# --------------------------------------------------------------------------------------------
def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.array([colorsys.hsv_to_rgb(float(a) % 1.0, float(b), float(c)) for a, b, c in zip(h, s, v)],
                    dtype=np.float32).reshape(len(h), 3)


def _interp_matrix(size: int, grid: int) -> np.ndarray:
    """[size, grid] bilinear interpolation weights from a grid of control points to pixels."""
    pos = (np.arange(size, dtype=np.float32) + 0.5) / size * (grid - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, grid - 2)
    frac = pos - lo
    m = np.zeros((size, grid), dtype=np.float32)
    m[np.arange(size), lo] = 1.0 - frac
    m[np.arange(size), lo + 1] = frac
    return m


def _rotated(xx, yy, angle):
    """Rotate pixel coordinates by per-image angles: returns u, v of shape [N, S, S]."""
    c = np.cos(angle)[:, None, None]
    s = np.sin(angle)[:, None, None]
    return xx * c + yy * s, -xx * s + yy * c


def _texture(kind_texture: str, n: int, size: int, rng: np.random.Generator, xx, yy) -> np.ndarray:
    """Texture map t in [0, 1], shape [n, size, size]."""
    if kind_texture == "gradient":
        ang = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
        u, _ = _rotated(xx - size / 2, yy - size / 2, ang)
        t = u / (size * 0.75) + 0.5
        # a faint low-frequency wobble so that the gradient is not perfectly linear
        g = rng.uniform(-1, 1, (n, 3, 3)).astype(np.float32)
        m = _interp_matrix(size, 3)
        t = t + 0.08 * np.einsum("hg,ngk,wk->nhw", m, g, m)
    elif kind_texture == "blotch":
        grid = 6
        g = rng.uniform(0, 1, (n, grid, grid)).astype(np.float32)
        m = _interp_matrix(size, grid)
        t = np.einsum("hg,ngk,wk->nhw", m, g, m)
        lo = t.min(axis=(1, 2), keepdims=True)
        hi = t.max(axis=(1, 2), keepdims=True)
        t = (t - lo) / np.maximum(hi - lo, 1e-6)
    elif kind_texture == "dots":
        cell = rng.uniform(0.08, 0.13, n).astype(np.float32)[:, None, None] * size
        rad = cell * rng.uniform(0.18, 0.3, n).astype(np.float32)[:, None, None]
        ang = rng.uniform(0, np.pi / 2, n).astype(np.float32)
        u, v = _rotated(xx, yy, ang)
        u = u + rng.uniform(0, size, n).astype(np.float32)[:, None, None]
        v = v + rng.uniform(0, size, n).astype(np.float32)[:, None, None]
        du = np.mod(u, cell) - cell / 2
        dv = np.mod(v, cell) - cell / 2
        t = (du * du + dv * dv < rad * rad).astype(np.float32)
    elif kind_texture == "checker":
        cell = rng.uniform(0.09, 0.18, n).astype(np.float32)[:, None, None] * size
        ang = rng.uniform(0, np.pi / 2, n).astype(np.float32)
        u, v = _rotated(xx, yy, ang)
        u = u + rng.uniform(0, size, n).astype(np.float32)[:, None, None]
        v = v + rng.uniform(0, size, n).astype(np.float32)[:, None, None]
        t = np.mod(np.floor(u / cell) + np.floor(v / cell), 2).astype(np.float32)
    elif kind_texture.startswith("lines_"):
        # parallel lines like the objects' class stripes (period and jitter alike), at a fixed orientation:
        # clutter that resembles the class cue, the way natural backgrounds hold bird-like textures
        angle = np.deg2rad(float(kind_texture.split("_")[1]) + rng.uniform(-15, 15, n)).astype(np.float32)
        period = rng.uniform(0.055, 0.08, n).astype(np.float32)[:, None, None] * size
        _, v = _rotated(xx, yy, angle)
        phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]
        t = 0.5 + 0.5 * np.sin(2 * np.pi * v / period + phase)
    elif kind_texture == "speckle":
        t = rng.random((n, size, size), dtype=np.float32)
        # 2x2 box smoothing keeps it high-frequency but less harsh than pure pixel noise
        t = 0.25 * (t + np.roll(t, 1, 1) + np.roll(t, 1, 2) + np.roll(np.roll(t, 1, 1), 1, 2))
        t = np.clip((t - 0.5) * 2.5 + 0.5, 0, 1)
    else:  # pragma: no cover - guarded by BACKGROUND_KINDS
        raise ValueError(kind_texture)
    return np.clip(t, 0.0, 1.0)


def _render_chunk(labels: np.ndarray, kinds: np.ndarray, cfg: Dict[str, Any],
                  rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Render ``len(labels)`` images. Returns (uint8 [N, S, S, 3], uint8 [N, S, S] in {0, 1}, keypoints float32
    [N, 5, 3] as ``[x, y, visible]``, boxes float32 [N, 4] as ``[x, y, width, height]``)."""
    n = len(labels)
    size = cfg["image_size"]
    num_classes = cfg["num_classes"]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    xx = xx[None]
    yy = yy[None]

    # ---------------- background ----------------
    bg = np.empty((n, size, size, 3), dtype=np.float32)
    hue_jitter = cfg["background_hue_jitter"]
    for kind in np.unique(kinds):
        idx = np.nonzero(kinds == kind)[0]
        k = len(idx)
        _, texture, hue = BACKGROUND_KINDS[int(kind)]
        h1 = hue + rng.uniform(-hue_jitter, hue_jitter, k)
        s1 = rng.uniform(0.45, 0.85, k)
        v1 = rng.uniform(0.55, 0.95, k)
        h2 = h1 + rng.uniform(-0.03, 0.03, k)
        s2 = np.clip(s1 * rng.uniform(0.7, 1.2, k), 0, 1)
        v2 = v1 * rng.uniform(0.35, 0.7, k)
        c1 = _hsv_to_rgb(h1, s1, v1)[:, None, None, :]
        c2 = _hsv_to_rgb(h2, s2, v2)[:, None, None, :]
        t = _texture(texture, k, size, rng, xx, yy)[..., None]
        bg[idx] = c1 * (1.0 - t) + c2 * t

    # ---------------- object mask (wobbly rotated ellipse) ----------------
    lo_s, hi_s = cfg["object_scale"]
    a = rng.uniform(lo_s, hi_s, n).astype(np.float32) * size
    b = a * rng.uniform(0.65, 1.0, n).astype(np.float32)
    cx = rng.uniform(0.3, 0.7, n).astype(np.float32) * size
    cy = rng.uniform(0.3, 0.7, n).astype(np.float32) * size
    rot = rng.uniform(0, np.pi, n).astype(np.float32)
    wob_amp = rng.uniform(0.0, 0.12, n).astype(np.float32)[:, None, None]
    wob_k = rng.integers(2, 6, n).astype(np.float32)[:, None, None]
    wob_ph = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]
    u, v = _rotated(xx - cx[:, None, None], yy - cy[:, None, None], rot)
    u = u / a[:, None, None]
    v = v / b[:, None, None]
    r = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    mask = r < 1.0 + wob_amp * np.sin(wob_k * phi + wob_ph)

    # ---------------- class pattern: stripes inside the object ----------------
    jitter = np.deg2rad(min(cfg["stripe_orientation_jitter"], 0.45 * 180.0 / num_classes))
    alpha = labels.astype(np.float32) * np.pi / num_classes + rng.uniform(-jitter, jitter, n)
    # stripes run along direction alpha, so intensity varies along the normal (-sin, cos)
    nx = (-np.sin(alpha)).astype(np.float32)[:, None, None]
    ny = np.cos(alpha).astype(np.float32)[:, None, None]
    pj = cfg["stripe_period_jitter"]
    period = cfg["patch_size"] * cfg["stripe_period"] * rng.uniform(1 - pj, 1 + pj, n)
    period = np.maximum(period, 2.5).astype(np.float32)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]
    s = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * nx + yy * ny) / period + phase)
    s = s[..., None]

    contrast = cfg["stripe_contrast"]
    base = rng.uniform(0.1, 0.9, (n, 3)).astype(np.float32)
    towards = (base.mean(axis=1, keepdims=True) < 0.5).astype(np.float32)  # white if dark
    tint = rng.uniform(-0.25, 0.25, (n, 3)).astype(np.float32)
    other = np.clip((1 - contrast) * base + contrast * (towards + tint), 0, 1)
    obj = base[:, None, None, :] * (1 - s) + other[:, None, None, :] * s

    img = np.where(mask[..., None], obj, bg)
    if cfg["noise_std"] > 0:
        img = img + np.float32(cfg["noise_std"]) * rng.standard_normal(img.shape, dtype=np.float32)
    img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return img, mask.astype(np.uint8), _landmarks(cx, cy, a, b, rot, size), _boxes(mask)


def _landmarks(cx, cy, a, b, rot, size: int) -> np.ndarray:
    """[N, 5, 3] ``[x, y, visible]``: centre, then the ends of the major (``a``) and minor (``b``) axes."""
    major = np.stack([np.cos(rot), np.sin(rot)], axis=-1) * a[:, None]  # the u axis of `_rotated`
    minor = np.stack([-np.sin(rot), np.cos(rot)], axis=-1) * b[:, None]  # the v axis
    centre = np.stack([cx, cy], axis=-1)
    points = np.stack([centre, centre + major, centre - major, centre + minor, centre - minor], axis=1)
    visible = ((points >= 0) & (points < size)).all(axis=-1, keepdims=True)
    return np.concatenate([points, visible], axis=-1).astype(np.float32)


def _boxes(mask: np.ndarray) -> np.ndarray:
    """[N, 4] tight ``[x, y, width, height]`` of each mask's foreground pixels (zeros for an empty mask)."""
    boxes = np.zeros((len(mask), 4), dtype=np.float32)
    for i, m in enumerate(mask):
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        if len(rows):
            boxes[i] = (cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0])
    return boxes


def _png(arr: np.ndarray) -> Dict[str, Any]:
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return {"bytes": buf.getvalue(), "path": None}


# --------------------------------------------------------------------------------------------
# label / background assignment
# --------------------------------------------------------------------------------------------
def _balanced(n: int, num_classes: int, kinds: Sequence[int], rng) -> Tuple[np.ndarray, np.ndarray]:
    """n samples spread as evenly as possible over all (class, kind) groups, shuffled."""
    groups = [(c, k) for c in range(num_classes) for k in kinds]
    order = rng.permutation(len(groups))  # which groups get the remainder
    reps = np.full(len(groups), n // len(groups))
    reps[order[: n % len(groups)]] += 1
    labels = np.repeat([g[0] for g in groups], reps)
    bgs = np.repeat([g[1] for g in groups], reps)
    perm = rng.permutation(n)
    return labels[perm].astype(np.int64), bgs[perm].astype(np.int64)


def _correlated_train(n: int, num_classes: int, correlation: float, rng):
    """Balanced classes; class c on kind c for exactly round(correlation * n_c) images."""
    counts = np.full(num_classes, n // num_classes)
    counts[rng.permutation(num_classes)[: n % num_classes]] += 1
    labels, bgs = [], []
    for c in range(num_classes):
        n_major = int(round(correlation * counts[c]))
        others = [k for k in range(num_classes) if k != c]
        minor = [others[i % len(others)] for i in range(counts[c] - n_major)] if others else []
        labels += [c] * counts[c]
        bgs += [c] * n_major + minor
    perm = rng.permutation(n)
    return np.asarray(labels, dtype=np.int64)[perm], np.asarray(bgs, dtype=np.int64)[perm]


def _independent(n: int, num_classes: int, kinds: Sequence[int], rng):
    """Balanced classes; background drawn uniformly from ``kinds`` independently of the class."""
    labels = np.arange(n) % num_classes
    bgs = np.asarray(kinds)[np.arange(n) % len(kinds)]
    labels = labels[rng.permutation(n)]
    bgs = bgs[rng.permutation(n)]
    return labels.astype(np.int64), bgs.astype(np.int64)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def make_synthetic_benchmark(
    regime: str = "correlated",
    num_train: int = 3000,
    num_validation: int = 600,
    num_test: int = 1200,
    image_size: int = 112,
    patch_size: int = 14,
    num_classes: int = 2,
    correlation: float = 0.95,
    seed: int = 0,
    cache_dir: Optional[str] = None,
    *,
    stripe_contrast: float = 0.6,
    stripe_period: float = 0.5,
    stripe_period_jitter: float = 0.3,
    stripe_orientation_jitter: float = 20.0,
    noise_std: float = 0.04,
    object_scale: Tuple[float, float] = (0.25, 0.38),
    background_hue_jitter: float = 0.04,
    num_train_backgrounds: int = 6,
    num_test_backgrounds: int = 6,
) -> DatasetDict:
    """Generate (or load from ``cache_dir``) the synthetic spurious-background benchmark.

    Args:
        regime: ``"correlated"`` (train background tied to the class with probability
            ``correlation``; balanced validation/test) or ``"ood"`` (class-independent
            backgrounds from ``num_train_backgrounds`` kinds in train/validation; test on
            ``num_test_backgrounds`` unseen kinds).
        num_train / num_validation / num_test: split sizes.
        image_size: square image side in pixels. patch_size: ViT patch size; the stripe period is
            expressed relative to it and ``mask_to_token_mask`` uses it.
        num_classes: number of stripe orientations (classes). The line kinds are at 0 and 90
            degrees, the two-class orientations.
        correlation: P(background kind == class | class) in the correlated training split.
        seed: everything is a deterministic function of the arguments; each split has its own
            random stream, so changing one split's size does not change the others.
        cache_dir: when given, the DatasetDict is saved under
            ``cache_dir/synthetic_<hash of the arguments>`` and re-loaded from there next time.
        stripe_contrast: 0..1, how far stripe colour departs from the object's base colour.
        stripe_period: stripe period as a fraction of ``patch_size`` (0.5 -> 2 periods/patch).
        stripe_period_jitter: relative +-jitter of the period.
        stripe_orientation_jitter: +- degrees around the class orientation (capped at 45% of the
            angular gap between classes).
        noise_std: std of additive Gaussian pixel noise (on a 0..1 scale).
        object_scale: range of the ellipse semi-major axis as a fraction of ``image_size``.
        background_hue_jitter: +- hue jitter within a kind's colour family (hue in 0..1).
    """
    cfg = synthetic_config(
        regime=regime, num_train=num_train, num_validation=num_validation, num_test=num_test,
        image_size=image_size, patch_size=patch_size, num_classes=num_classes,
        correlation=correlation, seed=seed, stripe_contrast=stripe_contrast,
        stripe_period=stripe_period, stripe_period_jitter=stripe_period_jitter,
        stripe_orientation_jitter=stripe_orientation_jitter, noise_std=noise_std,
        object_scale=tuple(float(x) for x in object_scale),
        background_hue_jitter=background_hue_jitter,
        num_train_backgrounds=num_train_backgrounds, num_test_backgrounds=num_test_backgrounds,
    )
    _validate(cfg)

    cache_path = None
    if cache_dir is not None:
        cache_path = os.path.join(os.fspath(cache_dir), f"synthetic_{_cache_key(cfg)}")
        if os.path.isfile(os.path.join(cache_path, "dataset_dict.json")):
            return datasets.load_from_disk(cache_path)

    if regime == "correlated":
        kinds_all = list(range(num_classes))
    else:
        kinds_all = list(range(num_train_backgrounds + num_test_backgrounds))
    num_kinds = len(kinds_all)
    class_names = [f"stripes_{round(c * 180.0 / num_classes)}deg" for c in range(num_classes)]
    kind_names = [BACKGROUND_KINDS[k][0] for k in kinds_all]
    features = Features({
        "image": Image(),
        "label": ClassLabel(names=class_names),
        "background": ClassLabel(names=kind_names),
        "group": ClassLabel(names=[f"{c}/{k}" for c in class_names for k in kind_names]),
        "mask": Image(mode="L"),
        "keypoints": datasets.List(datasets.List(datasets.Value("float32"), length=3), length=len(KEYPOINT_NAMES)),
        "bbox": datasets.List(datasets.Value("float32"), length=4),
    })

    seeds = np.random.SeedSequence(seed).spawn(3)
    out = {}
    for split, n, ss in zip(("train", "validation", "test"), (num_train, num_validation, num_test), seeds):
        assign_rng, render_rng = [np.random.default_rng(s) for s in ss.spawn(2)]
        if regime == "correlated":
            if split == "train":
                labels, bgs = _correlated_train(n, num_classes, correlation, assign_rng)
            else:
                labels, bgs = _balanced(n, num_classes, kinds_all, assign_rng)
        else:
            train_kinds = kinds_all[:num_train_backgrounds]
            test_kinds = kinds_all[num_train_backgrounds:]
            if split == "train":
                labels, bgs = _independent(n, num_classes, train_kinds, assign_rng)
            elif split == "validation":
                labels, bgs = _balanced(n, num_classes, train_kinds, assign_rng)
            else:
                labels, bgs = _balanced(n, num_classes, test_kinds, assign_rng)
        images, masks, keypoints, boxes = [], [], [], []
        for start in range(0, n, _CHUNK):
            img, msk, kps, box = _render_chunk(labels[start:start + _CHUNK], bgs[start:start + _CHUNK], cfg,
                                               render_rng)
            images += [_png(a) for a in img]
            masks += [_png(m) for m in msk]
            keypoints += kps.tolist()
            boxes += box.tolist()
        ds = Dataset.from_dict(
            {
                "image": images,
                "label": labels.tolist(),
                "background": bgs.tolist(),
                "group": (labels * num_kinds + bgs).tolist(),
                "mask": masks,
                "keypoints": keypoints,
                "bbox": boxes,
            },
            features=features,
            split=split,
        )
        ds.info.description = json.dumps({"ifam_synthetic": cfg}, default=str)
        out[split] = ds
    dd = DatasetDict(out)
    if cache_path is not None:
        tmp = cache_path + f".tmp{os.getpid()}"
        dd.save_to_disk(tmp)
        try:
            os.replace(tmp, cache_path)
        except OSError:  # another process won the race
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        return datasets.load_from_disk(cache_path)
    return dd


# every generation argument with its default (cache_dir only says where to store the result)
_DEFAULTS: Dict[str, Any] = {
    name: p.default
    for name, p in inspect.signature(make_synthetic_benchmark).parameters.items()
    if name != "cache_dir"
}


def _validate(cfg: Dict[str, Any]) -> None:
    if cfg["regime"] not in ("correlated", "ood"):
        raise ValueError(f"regime must be 'correlated' or 'ood', got {cfg['regime']!r}")
    if cfg["num_classes"] < 2:
        raise ValueError("num_classes must be >= 2")
    if cfg["image_size"] % cfg["patch_size"]:
        raise ValueError(f"image_size={cfg['image_size']} must be a multiple of patch_size={cfg['patch_size']}")
    if cfg["regime"] == "correlated" and cfg["num_classes"] > len(BACKGROUND_KINDS):
        raise ValueError(f"the correlated regime supports at most {len(BACKGROUND_KINDS)} classes")
    if cfg["regime"] == "ood":
        if cfg["num_train_backgrounds"] < 1 or cfg["num_test_backgrounds"] < 1:
            raise ValueError("num_train_backgrounds and num_test_backgrounds must be >= 1")
        if cfg["num_train_backgrounds"] + cfg["num_test_backgrounds"] > len(BACKGROUND_KINDS):
            raise ValueError(f"at most {len(BACKGROUND_KINDS)} background kinds are available")
    if not 0.0 <= cfg["correlation"] <= 1.0:
        raise ValueError("correlation must be in [0, 1]")
    for key in ("num_train", "num_validation", "num_test"):
        if cfg[key] < 0:
            raise ValueError(f"{key} must be >= 0")
