"""A broad, procedurally generated *upstream* image collection for pretraining a small backbone once.

This stands in, at CPU scale, for the large and varied image collection that DINOv2 was pretrained on. It is **not**
the built-in benchmark's training split (:mod:`ifam_data.synthetic`): it has its own object shapes, object textures,
colours and background kinds, drawn from its own random streams.

Every image shows one object on a textured background:

* **object shape** (:data:`SHAPES`): ellipse, polygon (3-8 sides), star (4-8 points), blob (random radial
  Fourier outline), ring, rounded rectangle, cross, crescent; random size, aspect ratio, rotation and position.
  The shape index is the image's ``shape`` label (the only label meant for training).
* **object texture** (:data:`OBJECT_TEXTURES`): plain, stripes (orientation uniform over 180 degrees, never a
  label), dots, checker, gradient, speckle, blotch, rings; random colours.
* **background kind** (:data:`UPSTREAM_BACKGROUNDS`): a texture family with a hue drawn uniformly at random, except
  that **the ood regime's test background kinds never occur**: there are no parallel-line backgrounds at all (the
  test's two line kinds, which also look like the benchmark's class cue), and for the texture families the test kinds
  share with the upstream collection (dots, blotch, checker, speckle) the hue is drawn outside a window of
  +- :data:`TEST_HUE_EXCLUSION` around the test kind's hue (cyan dots, magenta blotch, teal checker, indigo speckle).
  The generator's own check, :func:`is_ood_test_kind`, is applied to every image and tested.

:func:`make_upstream_images` returns numpy arrays; the ``mask`` it also returns is the object's pixel mask, for
*evaluation only* (how good a pseudo-label is): the shipped backbone is never trained on it.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from .synthetic import BACKGROUND_KINDS, _interp_matrix, _rotated

__all__ = [
    "OBJECT_TEXTURES",
    "SHAPES",
    "TEST_HUE_EXCLUSION",
    "UPSTREAM_BACKGROUNDS",
    "is_ood_test_kind",
    "make_upstream_images",
    "ood_test_kinds",
]

SHAPES: Tuple[str, ...] = ("ellipse", "polygon", "star", "blob", "ring", "rounded_rectangle", "cross", "crescent")
OBJECT_TEXTURES: Tuple[str, ...] = ("plain", "stripes", "dots", "checker", "gradient", "speckle", "blotch", "rings")
# background texture families; "lines" (parallel straight lines) is deliberately absent
UPSTREAM_BACKGROUNDS: Tuple[str, ...] = (
    "plain", "gradient", "blotch", "multicolour_blotch", "dots", "checker", "speckle", "noise", "cells", "rings",
    "radial", "two_tone", "waves",
)
TEST_HUE_EXCLUSION = 0.1


def ood_test_kinds(num_train_backgrounds: int = 6, num_test_backgrounds: int = 6):
    """The (name, texture, hue) background kinds of the ood regime's test split (defaults of the benchmark)."""
    return BACKGROUND_KINDS[num_train_backgrounds:num_train_backgrounds + num_test_backgrounds]


def _hue_distance(a, b):
    d = np.abs((np.asarray(a) - b) % 1.0)
    return np.minimum(d, 1.0 - d)


def is_ood_test_kind(texture: str, hue, exclusion: float = TEST_HUE_EXCLUSION) -> np.ndarray:
    """Whether a background of this texture family and hue(s) is one of the ood test kinds (within `exclusion`)."""
    hue = np.asarray(hue, dtype=np.float64)
    out = np.zeros(hue.shape, dtype=bool)
    for _, test_texture, test_hue in ood_test_kinds():
        if test_texture.startswith("lines_") and texture == "lines":
            return np.ones(hue.shape, dtype=bool)
        if texture == test_texture:
            out |= _hue_distance(hue, test_hue) < exclusion
    return out


# --------------------------------------------------------------------------------------------
# colour helpers
# --------------------------------------------------------------------------------------------
def hsv_to_rgb(h, s, v) -> np.ndarray:
    """Vectorised HSV -> RGB, arrays of shape [N] -> [N, 3] float32 in [0, 1]."""
    h = np.asarray(h, dtype=np.float32) % 1.0
    s, v = np.asarray(s, dtype=np.float32), np.asarray(v, dtype=np.float32)
    k = (np.array([5.0, 3.0, 1.0], dtype=np.float32)[None] + h[:, None] * 6.0) % 6.0
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _two_colours(rng, n, hue, s_range=(0.3, 0.95), v_range=(0.35, 0.98)):
    """Two related colours per image ([N, 3] each) around the given hues."""
    s1 = rng.uniform(*s_range, n)
    v1 = rng.uniform(*v_range, n)
    h2 = hue + rng.uniform(-0.06, 0.06, n)
    s2 = np.clip(s1 * rng.uniform(0.6, 1.3, n), 0, 1)
    v2 = np.clip(v1 * rng.uniform(0.3, 0.75, n), 0, 1)
    c1, c2 = hsv_to_rgb(hue, s1, v1), hsv_to_rgb(h2, s2, v2)
    swap = rng.random(n) < 0.5
    c1[swap], c2[swap] = c2[swap].copy(), c1[swap].copy()
    return c1, c2


# --------------------------------------------------------------------------------------------
# textures: maps t in [0, 1] of shape [n, S, S]
# --------------------------------------------------------------------------------------------
def _smooth_noise(rng, n, size, grid):
    m = _interp_matrix(size, grid)
    g = rng.uniform(0, 1, (n, grid, grid)).astype(np.float32)
    return np.einsum("hg,ngk,wk->nhw", m, g, m)


def _normalise(t):
    lo = t.min(axis=(1, 2), keepdims=True)
    hi = t.max(axis=(1, 2), keepdims=True)
    return (t - lo) / np.maximum(hi - lo, 1e-6)


def _texture(name: str, n: int, size: int, rng: np.random.Generator, xx, yy) -> np.ndarray:
    f32 = np.float32
    if name == "plain":
        t = np.zeros((n, size, size), f32) + rng.uniform(0, 0.15, n).astype(f32)[:, None, None]
    elif name == "gradient":
        ang = rng.uniform(0, 2 * np.pi, n).astype(f32)
        u, _ = _rotated(xx - size / 2, yy - size / 2, ang)
        t = u / (size * rng.uniform(0.5, 1.0, n).astype(f32)[:, None, None]) + 0.5
    elif name == "blotch":
        t = _normalise(_smooth_noise(rng, n, size, int(rng.integers(4, 9))))
    elif name == "noise":  # multi-scale value noise
        t = sum(w * _smooth_noise(rng, n, size, g) for w, g in ((0.5, 4), (0.3, 9), (0.2, 17)))
        t = _normalise(t)
    elif name == "dots":
        cell = rng.uniform(0.08, 0.2, n).astype(f32)[:, None, None] * size
        rad = cell * rng.uniform(0.15, 0.35, n).astype(f32)[:, None, None]
        u, v = _rotated(xx, yy, rng.uniform(0, np.pi / 2, n).astype(f32))
        du = np.mod(u + rng.uniform(0, size, n).astype(f32)[:, None, None], cell) - cell / 2
        dv = np.mod(v + rng.uniform(0, size, n).astype(f32)[:, None, None], cell) - cell / 2
        t = (du * du + dv * dv < rad * rad).astype(f32)
    elif name == "checker":
        cell = rng.uniform(0.07, 0.22, n).astype(f32)[:, None, None] * size
        u, v = _rotated(xx, yy, rng.uniform(0, np.pi / 2, n).astype(f32))
        u = u + rng.uniform(0, size, n).astype(f32)[:, None, None]
        v = v + rng.uniform(0, size, n).astype(f32)[:, None, None]
        t = np.mod(np.floor(u / cell) + np.floor(v / cell), 2).astype(f32)
    elif name == "speckle":
        t = rng.random((n, size, size), dtype=f32)
        if rng.random() < 0.5:
            t = 0.25 * (t + np.roll(t, 1, 1) + np.roll(t, 1, 2) + np.roll(np.roll(t, 1, 1), 1, 2))
            t = np.clip((t - 0.5) * 2.5 + 0.5, 0, 1)
    elif name == "stripes":  # object texture only: orientation uniform, never a label
        ang = rng.uniform(0, np.pi, n).astype(f32)
        period = rng.uniform(2.5, 9.0, n).astype(f32)[:, None, None]
        _, v = _rotated(xx, yy, ang)
        phase = rng.uniform(0, 2 * np.pi, n).astype(f32)[:, None, None]
        t = 0.5 + 0.5 * np.sin(2 * np.pi * v / period + phase)
    elif name == "rings":  # concentric circles around a random point
        cx = rng.uniform(-0.5, 1.5, n).astype(f32)[:, None, None] * size
        cy = rng.uniform(-0.5, 1.5, n).astype(f32)[:, None, None] * size
        period = rng.uniform(3.0, 10.0, n).astype(f32)[:, None, None]
        r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * r / period)
    elif name == "waves":  # strongly curved (warped) bands
        ang = rng.uniform(0, np.pi, n).astype(f32)
        u, v = _rotated(xx, yy, ang)
        amp = rng.uniform(4, 10, n).astype(f32)[:, None, None]
        freq = rng.uniform(1.5, 4, n).astype(f32)[:, None, None] * 2 * np.pi / size
        period = rng.uniform(5, 12, n).astype(f32)[:, None, None]
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (v + amp * np.sin(freq * u)) / period)
    elif name == "cells":  # Voronoi cells, each its own shade
        k = 12
        px = rng.uniform(0, size, (n, k, 1, 1)).astype(f32)
        py = rng.uniform(0, size, (n, k, 1, 1)).astype(f32)
        d = (xx[:, None] - px) ** 2 + (yy[:, None] - py) ** 2
        idx = d.argmin(1)
        shade = rng.uniform(0, 1, (n, k)).astype(f32)
        t = np.take_along_axis(shade, idx.reshape(n, -1), 1).reshape(n, size, size)
    elif name == "radial":
        cx = rng.uniform(0, 1, n).astype(f32)[:, None, None] * size
        cy = rng.uniform(0, 1, n).astype(f32)[:, None, None] * size
        t = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / (size * 0.9)
    elif name == "two_tone":  # the image split in two by a random straight edge
        ang = rng.uniform(0, 2 * np.pi, n).astype(f32)
        u, _ = _rotated(xx - size / 2, yy - size / 2, ang)
        off = rng.uniform(-0.35, 0.35, n).astype(f32)[:, None, None] * size
        t = (u > off).astype(f32) * 0.8
    else:  # pragma: no cover
        raise ValueError(name)
    return np.clip(t, 0.0, 1.0).astype(f32)


# --------------------------------------------------------------------------------------------
# shapes: boolean masks [n, S, S]
# --------------------------------------------------------------------------------------------
def _shape(name: str, n: int, size: int, rng: np.random.Generator, xx, yy) -> np.ndarray:
    f32 = np.float32
    a = rng.uniform(0.2, 0.42, n).astype(f32)[:, None, None] * size
    aspect = rng.uniform(0.6, 1.0, n).astype(f32)[:, None, None]
    cx = rng.uniform(0.28, 0.72, n).astype(f32)[:, None, None] * size
    cy = rng.uniform(0.28, 0.72, n).astype(f32)[:, None, None] * size
    u, v = _rotated(xx - cx, yy - cy, rng.uniform(0, 2 * np.pi, n).astype(f32))
    u, v = u / a, v / (a * aspect)
    r = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    if name == "ellipse":
        wob = rng.uniform(0, 0.1, n).astype(f32)[:, None, None]
        k = rng.integers(2, 6, n).astype(f32)[:, None, None]
        return r < 1.0 + wob * np.sin(k * phi + rng.uniform(0, 2 * np.pi, n).astype(f32)[:, None, None])
    if name in ("polygon", "star"):
        sides = rng.integers(3, 9, n) if name == "polygon" else rng.integers(4, 9, n)
        sides = sides.astype(f32)[:, None, None]
        sector = 2 * np.pi / sides
        local = np.mod(phi, sector) - sector / 2
        if name == "polygon":  # regular polygon of circumradius 1
            return r * np.cos(local) < np.cos(sector / 2)
        inner = rng.uniform(0.35, 0.6, n).astype(f32)[:, None, None]
        return r < inner + (1 - inner) * (1 - np.abs(local) / (sector / 2))
    if name == "blob":
        radius = np.ones_like(r) * 0.8
        for k in range(1, 5):
            amp = rng.uniform(0, 0.25 / k, n).astype(f32)[:, None, None]
            radius = radius + amp * np.sin(k * phi + rng.uniform(0, 2 * np.pi, n).astype(f32)[:, None, None])
        return r < radius
    if name == "ring":
        inner = rng.uniform(0.4, 0.65, n).astype(f32)[:, None, None]
        return (r < 1.0) & (r > inner)
    if name == "rounded_rectangle":
        corner = rng.uniform(0.05, 0.4, n).astype(f32)[:, None, None]
        du = np.maximum(np.abs(u) - (1 - corner), 0)
        dv = np.maximum(np.abs(v) - (1 - corner), 0)
        return du * du + dv * dv < corner * corner
    if name == "cross":
        width = rng.uniform(0.3, 0.5, n).astype(f32)[:, None, None]
        return ((np.abs(u) < 1) & (np.abs(v) < width)) | ((np.abs(v) < 1) & (np.abs(u) < width))
    if name == "crescent":
        shift = rng.uniform(0.35, 0.6, n).astype(f32)[:, None, None]
        return (r < 1.0) & ((u - shift) ** 2 + v * v > 0.8 ** 2)
    raise ValueError(name)  # pragma: no cover


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def _render(n: int, size: int, rng: np.random.Generator, noise_std: float) -> Dict[str, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    xx, yy = xx[None], yy[None]
    # ---------------- background ----------------
    bg_kind = rng.integers(0, len(UPSTREAM_BACKGROUNDS), n)
    bg_hue = rng.uniform(0, 1, n)
    for _ in range(100):  # redraw the hue of any image that would be an ood test kind
        bad = np.zeros(n, dtype=bool)
        for kind, name in enumerate(UPSTREAM_BACKGROUNDS):
            sel = bg_kind == kind
            bad[sel] = is_ood_test_kind(name, bg_hue[sel])
        if not bad.any():
            break
        bg_hue[bad] = rng.uniform(0, 1, int(bad.sum()))
    bg = np.empty((n, size, size, 3), dtype=np.float32)
    for kind, name in enumerate(UPSTREAM_BACKGROUNDS):
        idx = np.nonzero(bg_kind == kind)[0]
        if len(idx) == 0:
            continue
        t = _texture("blotch" if name == "multicolour_blotch" else name, len(idx), size, rng, xx, yy)[..., None]
        c1, c2 = _two_colours(rng, len(idx), bg_hue[idx])
        if name == "multicolour_blotch":  # a third, unrelated colour through a second smooth field
            m = len(idx)  # not `n`: the chunk's image count is still needed below
            c3 = hsv_to_rgb(rng.uniform(0, 1, m), rng.uniform(0.3, 0.9, m), rng.uniform(0.4, 0.95, m))
            t2 = _texture("blotch", m, size, rng, xx, yy)[..., None] * rng.uniform(0.5, 1, m)[:, None, None, None]
            bg[idx] = (c1[:, None, None] * (1 - t) + c2[:, None, None] * t) * (1 - t2) + c3[:, None, None] * t2
        else:
            bg[idx] = c1[:, None, None] * (1 - t) + c2[:, None, None] * t
    # ---------------- object ----------------
    shape = rng.integers(0, len(SHAPES), n)
    texture = rng.integers(0, len(OBJECT_TEXTURES), n)
    mask = np.zeros((n, size, size), dtype=bool)
    obj = np.empty((n, size, size, 3), dtype=np.float32)
    for s, name in enumerate(SHAPES):
        idx = np.nonzero(shape == s)[0]
        if len(idx):
            mask[idx] = _shape(name, len(idx), size, rng, xx, yy)
    for k, name in enumerate(OBJECT_TEXTURES):
        idx = np.nonzero(texture == k)[0]
        if len(idx) == 0:
            continue
        t = _texture(name, len(idx), size, rng, xx, yy)[..., None]
        c1, c2 = _two_colours(rng, len(idx), rng.uniform(0, 1, len(idx)), s_range=(0.0, 1.0), v_range=(0.15, 1.0))
        obj[idx] = c1[:, None, None] * (1 - t) + c2[:, None, None] * t
    img = np.where(mask[..., None], obj, bg)
    if noise_std > 0:
        img = img + np.float32(noise_std) * rng.standard_normal(img.shape, dtype=np.float32)
    img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return {"image": img, "shape": shape.astype(np.int64), "object_texture": texture.astype(np.int64),
            "background_kind": bg_kind.astype(np.int64), "background_hue": bg_hue.astype(np.float32),
            "mask": mask.astype(np.uint8)}


def make_upstream_images(num_images: int, image_size: int = 56, seed: int = 0, noise_std: float = 0.03,
                         chunk: int = 512) -> Dict[str, np.ndarray]:
    """Generate ``num_images`` upstream images, deterministically from ``seed``.

    Returns a dict of numpy arrays:
        ``image`` uint8 [N, S, S, 3]; ``shape`` int64 [N] (index into :data:`SHAPES`, the label meant for training);
        ``object_texture`` int64 [N] (index into :data:`OBJECT_TEXTURES`); ``background_kind`` int64 [N] (index into
        :data:`UPSTREAM_BACKGROUNDS`) and ``background_hue`` float32 [N]; ``mask`` uint8 [N, S, S] in {0, 1}, the
        object's pixels, **for evaluation only** (never a training target of the shipped backbone).
    Every chunk of ``chunk`` images has its own random stream: the same (``num_images``, ``seed``, ``chunk``) give the
    same arrays, and the first ``m * chunk`` images do not depend on ``num_images``.
    """
    if num_images < 0:
        raise ValueError("num_images must be >= 0")
    streams = np.random.SeedSequence([seed, 0x0F5EED]).spawn(max(1, -(-num_images // chunk)))
    parts = [_render(min(chunk, num_images - i * chunk), image_size, np.random.default_rng(ss), noise_std)
             for i, ss in enumerate(streams) if num_images - i * chunk > 0]
    if not parts:
        parts = [_render(0, image_size, np.random.default_rng(0), noise_std)]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
