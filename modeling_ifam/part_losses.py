"""Stage-1 part-shaping losses of iFAM (PDiscoFormer part discovery), in pure PyTorch.

This module is self-contained (it imports only ``torch``, ``math`` and ``typing``) so that it
can be shipped next to the modeling code on the Hugging Face Hub for ``trust_remote_code`` users.

Conventions (fixed by the model):

* ``part_maps``: ``[B, K+1, H, W]`` float tensor, a softmax over dim 1 (each pixel sums to 1).
  The **background** part is the **last** channel (index ``K``); channels ``0..K-1`` are the
  foreground parts. ``H, W`` is the patch grid (e.g. 32x32 for a 448px image and patch 14).
* ``part_features``: ``[B, D, K+1]`` modulated per-part feature vectors (background last).

Every loss returns a scalar tensor, is differentiable, and is finite on degenerate maps
(all mass on the background, one-hot maps, batch size 1). Malformed inputs raise a
``ValueError`` naming the argument and the expected shape.

The formulas and default values follow the reference PDiscoFormer / iFAM training code
(``losses/*.py``, ``argument_parser_two_stage_pdisco_train.py`` and
``engine/distributed_trainer_two_stage_pdisco.py``); each function's docstring states its formula.

Typical stage-1 training step::

    transform = RandomAffine.sample(images.shape[0], generator=g, device=images.device)
    maps = model(images).part_maps                          # [B, K+1, h, w]
    maps_t = model(transform.apply(images)).part_maps       # maps of the transformed images
    w = model.config.loss_weights
    loss = (w["presence"] * presence_loss(maps)
            + w["equivariance"] * equivariance_loss(maps, transform.invert(maps_t))
            + w["orthogonality"] * orthogonality_loss(part_features)
            + w["total_variation"] * total_variation_loss(maps)
            + w["entropy"] * pixelwise_entropy_loss(maps)
            + w["background"] * background_presence_loss(maps)
            + ...)  # + classification losses; concentration_loss has weight 0 by default
"""

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "RandomAffine",
    "orthogonality_loss",
    "equivariance_loss",
    "presence_loss",
    "background_presence_loss",
    "pixelwise_entropy_loss",
    "total_variation_loss",
    "concentration_loss",
]

# Loss weights of the reference two-stage PDiscoFormer recipe
# (argparse defaults of argument_parser_two_stage_pdisco_train.py in ananthu-aniraj/ifam).
# Value of -log(0) used by torch's binary cross-entropy (it clamps log(x) at -100).
_MAX_NEG_LOG = 100.0


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------
def _check_part_maps(part_maps: torch.Tensor, name: str = "part_maps", min_size: int = 1) -> None:
    """Raise ``ValueError`` unless ``part_maps`` is a floating ``[B, K+1, H, W]`` tensor with
    ``B >= 1``, ``K+1 >= 2`` and ``H, W >= min_size``."""
    expected = f"[B, K+1, H, W] (K+1 >= 2 parts, background last, H and W >= {min_size})"
    if not isinstance(part_maps, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor of shape {expected}, got {type(part_maps).__name__}")
    if part_maps.ndim != 4:
        raise ValueError(f"`{name}` must have shape {expected}, got shape {tuple(part_maps.shape)}")
    b, c, h, w = part_maps.shape
    if b < 1 or c < 2 or h < min_size or w < min_size:
        raise ValueError(f"`{name}` must have shape {expected}, got shape {tuple(part_maps.shape)}")
    if not part_maps.is_floating_point():
        raise ValueError(f"`{name}` must be a floating point tensor of shape {expected}, got dtype {part_maps.dtype}")


def _check_part_features(part_features: torch.Tensor, name: str = "part_features") -> None:
    """Raise ``ValueError`` unless ``part_features`` is a floating ``[B, D, K+1]`` tensor."""
    expected = "[B, D, K+1] (feature dim D >= 1, K+1 >= 2 parts, background last)"
    if not isinstance(part_features, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor of shape {expected}, got {type(part_features).__name__}")
    if part_features.ndim != 3 or min(part_features.shape) < 1 or part_features.shape[-1] < 2:
        raise ValueError(f"`{name}` must have shape {expected}, got shape {tuple(part_features.shape)}")
    if not part_features.is_floating_point():
        raise ValueError(
            f"`{name}` must be a floating point tensor of shape {expected}, got dtype {part_features.dtype}"
        )


# --------------------------------------------------------------------------------------------
# Random affine transform for the equivariance loss
# --------------------------------------------------------------------------------------------
def _as_pair(value: Union[float, Sequence[float]], name: str) -> Tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    if len(value) != 2:
        raise ValueError(f"`{name}` must be a number or a pair of numbers, got {value!r}")
    return float(value[0]), float(value[1])


class RandomAffine:
    """A batch of similarity transforms (rotation + isotropic scale + translation) that can be
    applied consistently to images and to part maps of any resolution.

    A transform maps a point ``p`` of the input, in pixel units centred on the image centre
    (x to the right, y down), to ``q = scale * R(angle) @ p + (tx * W, ty * H)``, where
    ``R(a) = [[cos a, -sin a], [sin a, cos a]]`` (a positive angle turns clockwise on screen,
    like ``torchvision.transforms.functional.affine``) and ``tx, ty`` are fractions of the
    width / height. Because the translation is a fraction of the image size and the rotation is
    about the centre, the same transform is applied to a 448x448 image and to its 32x32 patch
    map; it is resampled with ``affine_grid`` / ``grid_sample`` (``align_corners=False``), and
    points that come from outside the input are filled with zeros.

    Attributes (all on the same device, float32):
        angle:     ``[B]`` rotation in degrees.
        translate: ``[B, 2]`` translation ``(tx, ty)`` as fractions of ``(W, H)``.
        scale:     ``[B]`` isotropic scale factor.

    Usage (stage-1 equivariance, as in the reference trainer)::

        transform = RandomAffine.sample(B, generator=g, device=images.device)
        maps_t = model(transform.apply(images)).part_maps     # [B, K+1, h, w]
        loss = equivariance_loss(maps, transform.invert(maps_t))
    """

    def __init__(self, angle: torch.Tensor, translate: torch.Tensor, scale: torch.Tensor) -> None:
        angle = torch.as_tensor(angle, dtype=torch.float32)
        translate = torch.as_tensor(translate, dtype=torch.float32, device=angle.device)
        scale = torch.as_tensor(scale, dtype=torch.float32, device=angle.device)
        if angle.ndim != 1 or angle.shape[0] < 1:
            raise ValueError(f"`angle` must have shape [B] with B >= 1, got shape {tuple(angle.shape)}")
        batch_size = angle.shape[0]
        if translate.shape != (batch_size, 2):
            raise ValueError(
                f"`translate` must have shape [B, 2] = [{batch_size}, 2], got shape {tuple(translate.shape)}"
            )
        if scale.shape != (batch_size,):
            raise ValueError(f"`scale` must have shape [B] = [{batch_size}], got shape {tuple(scale.shape)}")
        if not bool(torch.all(scale > 0)):
            raise ValueError("`scale` must be strictly positive")
        self.angle = angle
        self.translate = translate
        self.scale = scale

    @property
    def batch_size(self) -> int:
        return self.angle.shape[0]

    @classmethod
    def identity(cls, batch_size: int, device: Optional[Union[str, torch.device]] = None) -> "RandomAffine":
        """The identity transform for a batch of ``batch_size`` samples."""
        return cls(
            torch.zeros(batch_size, device=device),
            torch.zeros(batch_size, 2, device=device),
            torch.ones(batch_size, device=device),
        )

    @classmethod
    def sample(
        cls,
        batch_size: int,
        degrees: Union[float, Sequence[float]] = 90.0,
        translate: Union[float, Sequence[float]] = (0.11, 0.11),
        scale: Sequence[float] = (0.8, 1.4),
        shared: bool = True,
        generator: Optional[torch.Generator] = None,
        device: Optional[Union[str, torch.device]] = None,
    ) -> "RandomAffine":
        """Draw a random transform for a batch.

        Defaults are those of the reference recipe (``--degrees 90 --translate_x 0.11
        --translate_y 0.11 --scale_l 0.8 --scale_u 1.4``, no shear):

        * ``angle ~ U(-degrees, degrees)`` (or ``U(degrees[0], degrees[1])`` for a pair),
        * ``tx ~ U(-translate[0], translate[0])``, ``ty ~ U(-translate[1], translate[1])``
          (fractions of the width / height; the reference rounds the pixel shift to an integer),
        * ``scale ~ U(scale[0], scale[1])``.

        Args:
            batch_size: number of samples ``B``.
            shared: if True (reference behaviour) one transform is drawn and used for the whole
                batch; if False every sample gets its own transform.
            generator: optional CPU ``torch.Generator`` for reproducibility (sampling happens on
                the CPU, the result is moved to ``device``).
            device: device of the returned parameters.
        """
        if int(batch_size) < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        batch_size = int(batch_size)
        if isinstance(degrees, (int, float)):
            deg_lo, deg_hi = -abs(float(degrees)), abs(float(degrees))
        else:
            deg_lo, deg_hi = _as_pair(degrees, "degrees")
        max_tx, max_ty = _as_pair(translate, "translate")
        scale_lo, scale_hi = _as_pair(scale, "scale")
        if not (0 < scale_lo <= scale_hi):
            raise ValueError(f"`scale` must satisfy 0 < scale[0] <= scale[1], got {scale!r}")

        n = 1 if shared else batch_size
        u = torch.rand(n, 4, generator=generator)  # [n, 4] uniform in [0, 1)
        angle = deg_lo + (deg_hi - deg_lo) * u[:, 0]
        tx = max_tx * (2.0 * u[:, 1] - 1.0)
        ty = max_ty * (2.0 * u[:, 2] - 1.0)
        scl = scale_lo + (scale_hi - scale_lo) * u[:, 3]
        translation = torch.stack([tx, ty], dim=-1)  # [n, 2]
        if shared:
            angle = angle.expand(batch_size)
            translation = translation.expand(batch_size, 2)
            scl = scl.expand(batch_size)
        return cls(angle.to(device).contiguous(), translation.to(device).contiguous(), scl.to(device).contiguous())

    def theta(
        self,
        height: int,
        width: int,
        inverse: bool = False,
        dtype: torch.dtype = torch.float32,
        device: Optional[Union[str, torch.device]] = None,
    ) -> torch.Tensor:
        """Sampling matrices ``[B, 2, 3]`` for ``F.affine_grid`` at resolution ``height x width``.

        ``grid_sample`` needs, for every *output* location, the *input* location to read from,
        i.e. the inverse of the transform. In normalised coordinates ``n = D^-1 p`` with
        ``D = diag(W/2, H/2)``:

        * forward (``inverse=False``): ``n_in = D^-1 R^T D (n_out - 2 t) / scale``
        * inverse (``inverse=True``):  ``n_in = scale * D^-1 R D n_out + 2 t``
        """
        device = self.angle.device if device is None else device
        rad = self.angle.to(device=device, dtype=torch.float64) * (math.pi / 180.0)
        cos, sin = torch.cos(rad), torch.sin(rad)  # [B]
        scale = self.scale.to(device=device, dtype=torch.float64)  # [B]
        shift = 2.0 * self.translate.to(device=device, dtype=torch.float64)  # [B, 2], normalised units
        aspect = float(height) / float(width)  # H / W
        if inverse:
            # scale * D^-1 R D = scale * [[cos, -sin * H/W], [sin * W/H, cos]]
            a = torch.stack(
                [torch.stack([cos, -sin * aspect], -1), torch.stack([sin / aspect, cos], -1)], -2
            ) * scale[:, None, None]  # [B, 2, 2]
            b = shift  # [B, 2]
        else:
            # D^-1 R^T D / scale = [[cos, sin * H/W], [-sin * W/H, cos]] / scale
            a = torch.stack(
                [torch.stack([cos, sin * aspect], -1), torch.stack([-sin / aspect, cos], -1)], -2
            ) / scale[:, None, None]  # [B, 2, 2]
            b = -(a @ shift.unsqueeze(-1)).squeeze(-1)  # [B, 2]
        return torch.cat([a, b.unsqueeze(-1)], dim=-1).to(dtype)  # [B, 2, 3]

    def apply(self, x: torch.Tensor, inverse: bool = False, mode: str = "bilinear") -> torch.Tensor:
        """Warp ``x`` (``[B, C, H, W]``: images or part maps, any resolution) by the transform
        (or by its inverse if ``inverse=True``). Differentiable w.r.t. ``x``; zeros are used
        outside the input."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"`x` must be a floating point tensor of shape [B, C, H, W], got {shape}")
        if x.shape[0] != self.batch_size:
            raise ValueError(
                f"`x` must have shape [B, C, H, W] with B = {self.batch_size} (the transform's batch size), "
                f"got shape {tuple(x.shape)}"
            )
        work_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        h, w = x.shape[-2:]
        theta = self.theta(h, w, inverse=inverse, dtype=work_dtype, device=x.device)  # [B, 2, 3]
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # [B, H, W, 2]
        out = F.grid_sample(x.to(work_dtype), grid, mode=mode, padding_mode="zeros", align_corners=False)
        return out.to(x.dtype)

    def invert(self, x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """Warp ``x`` back by the inverse transform (``apply(x, inverse=True)``)."""
        return self.apply(x, inverse=True, mode=mode)

    def __repr__(self) -> str:
        return (
            f"RandomAffine(angle={self.angle.tolist()}, translate={self.translate.tolist()}, "
            f"scale={self.scale.tolist()})"
        )


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------
def orthogonality_loss(part_features: torch.Tensor) -> torch.Tensor:
    """De-correlation of the part feature vectors (all K+1 parts, background included).

    With ``f_b,k = part_features[b, :, k] / ||part_features[b, :, k]||`` and the cosine
    similarity matrix ``S_b = F_b^T F_b`` (``[K+1, K+1]``)::

        L = mean_{b, i, j} (S_b[i, j] - 1[i == j])^2
          = 1 / (B (K+1)^2) * sum_b sum_{i != j} cos(f_b,i, f_b,j)^2

    Args:
        part_features: ``[B, D, K+1]``.
    """
    _check_part_features(part_features)
    normed = F.normalize(part_features, dim=1)  # [B, D, K+1], unit columns
    sim = normed.transpose(1, 2) @ normed  # [B, K+1, K+1]
    eye = torch.eye(sim.shape[-1], device=sim.device, dtype=sim.dtype)  # [K+1, K+1]
    return (sim - eye).square().mean()


def equivariance_loss(part_maps: torch.Tensor, aligned_part_maps: torch.Tensor) -> torch.Tensor:
    """Equivariance of the foreground part maps under an affine transform T.

    ``aligned_part_maps`` must live in the same frame as ``part_maps``; the reference recipe
    uses ``transform.invert(maps_of_transformed_images)`` (``T^-1(A(T(x)))`` compared with
    ``A(x)``). ``transform.apply(part_maps)`` compared with the maps of the transformed images
    is an equivalent alternative. Only the K foreground channels are compared::

        L = 1 - mean_{b, k < K} cos(vec(part_maps[b, k]), vec(aligned_part_maps[b, k]))

    where ``cos`` is the cosine similarity over the ``H*W`` locations (eps 1e-8).

    Args:
        part_maps:         ``[B, K+1, H, W]``.
        aligned_part_maps: ``[B, K+1, H, W]``, same shape.
    """
    _check_part_maps(part_maps, "part_maps")
    _check_part_maps(aligned_part_maps, "aligned_part_maps")
    if aligned_part_maps.shape != part_maps.shape:
        raise ValueError(
            f"`aligned_part_maps` must have the same shape [B, K+1, H, W] as `part_maps` "
            f"{tuple(part_maps.shape)}, got shape {tuple(aligned_part_maps.shape)}"
        )
    fg = part_maps[:, :-1].flatten(start_dim=2)  # [B, K, H*W]
    fg_aligned = aligned_part_maps[:, :-1].flatten(start_dim=2)  # [B, K, H*W]
    cos = F.cosine_similarity(fg, fg_aligned, dim=-1, eps=1e-8)  # [B, K]
    return 1.0 - cos.mean()


def presence_loss(part_maps: torch.Tensor, beta: float = 0.1, variant: str = "original") -> torch.Tensor:
    """Each foreground part must be (strongly) present somewhere in the batch.

    The maps are first smoothed with a 3x3 average pool (stride 1, no padding), then for every
    foreground part the highest pooled activation over all locations *and all images* is taken::

        m_k = max_b max_{i,j} avgpool3x3(part_maps[:, k])[b, i, j]      (k < K, background excluded)

        variant="original" (reference default):   L = 1 - mean_k m_k            (beta unused)
        variant="soft_constraint":                L = mean_k (1 - m_k) * ((1 - beta) * sg(m_k) + beta)

    where ``sg`` is stop-gradient.

    Args:
        part_maps: ``[B, K+1, H, W]`` with ``H, W >= 3``.
        beta: weight of the soft constraint (only used by ``variant="soft_constraint"``).
        variant: ``"original"`` or ``"soft_constraint"``.
    """
    _check_part_maps(part_maps, min_size=3)
    if variant not in ("original", "soft_constraint"):
        raise ValueError(f"`variant` must be 'original' or 'soft_constraint', got {variant!r}")
    pooled = F.avg_pool2d(part_maps[:, :-1], kernel_size=3, stride=1)  # [B, K, H-2, W-2]
    peak = pooled.flatten(start_dim=2).amax(dim=2).amax(dim=0)  # [K]
    if variant == "original":
        return 1.0 - peak.mean()
    return ((1.0 - peak) * ((1.0 - beta) * peak.detach() + beta)).mean()


def background_presence_loss(part_maps: torch.Tensor) -> torch.Tensor:
    """Enforced presence of the background part near the image border.

    The background map is smoothed with a 3x3 average pool (stride 1, no padding) to
    ``[H', W'] = [H-2, W-2]`` and weighted by a radial mask that is 0 at the centre and 1 at the
    corners; its peak must be 1 in every image (binary cross-entropy with target 1)::

        u_i = 2 i / (H' - 1) - 1,  v_j = 2 j / (W' - 1) - 1,  M_ij = (u_i^2 + v_j^2) / 2
        s_b = max_{i,j} M_ij * avgpool3x3(part_maps[b, K])[i, j]
        L   = mean_b -log(s_b)      (log clamped at -100, as torch's BCE: s_b = 0 gives 100)

    Args:
        part_maps: ``[B, K+1, H, W]`` with ``H, W >= 4``.
    """
    _check_part_maps(part_maps, min_size=4)
    pooled_bg = F.avg_pool2d(part_maps[:, -1:], kernel_size=3, stride=1)[:, 0]  # [B, H', W']
    hp, wp = pooled_bg.shape[-2:]
    u = torch.linspace(-1.0, 1.0, hp, device=part_maps.device, dtype=torch.float32)  # [H']
    v = torch.linspace(-1.0, 1.0, wp, device=part_maps.device, dtype=torch.float32)  # [W']
    mask = (u[:, None].square() + v[None, :].square()) / 2.0  # [H', W'], max = 1 at corners
    # BCE is computed in float32 with autocast off (it is not autocast-safe).
    with torch.autocast(device_type=part_maps.device.type, enabled=False):
        peak = (pooled_bg.float() * mask).flatten(start_dim=1).amax(dim=1)  # [B]
        peak = peak.clamp(0.0, 1.0)  # guard against float round-off above 1
        return F.binary_cross_entropy(peak, torch.ones_like(peak))


def pixelwise_entropy_loss(part_maps: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel entropy (nats) of the part distribution (all K+1 parts)::

        L = mean_{b,i,j} -sum_c p_c log(max(p_c, eps)),   p = part_maps[b, :, i, j]

    with ``eps = torch.finfo(dtype).eps``, so that ``0 log 0 = 0`` and the gradient is finite.

    Args:
        part_maps: ``[B, K+1, H, W]`` (each pixel sums to 1).
    """
    _check_part_maps(part_maps)
    eps = torch.finfo(part_maps.dtype).eps
    entropy = -(part_maps * part_maps.clamp_min(eps).log()).sum(dim=1)  # [B, H, W]
    return entropy.mean()


def total_variation_loss(part_maps: torch.Tensor) -> torch.Tensor:
    """Anisotropic L1 total variation of the maps (all K+1 channels), normalised by B*H*W::

        L = 1 / (B H W) * sum_{b,c} ( sum_{i,j} |A[b,c,i+1,j] - A[b,c,i,j]|
                                     + sum_{i,j} |A[b,c,i,j+1] - A[b,c,i,j]| )

    Args:
        part_maps: ``[B, K+1, H, W]``.
    """
    _check_part_maps(part_maps)
    b, _, h, w = part_maps.shape
    tv_rows = (part_maps[:, :, 1:, :] - part_maps[:, :, :-1, :]).abs().sum()  # vertical neighbours
    tv_cols = (part_maps[:, :, :, 1:] - part_maps[:, :, :, :-1]).abs().sum()  # horizontal neighbours
    return (tv_rows + tv_cols) / (b * h * w)


def concentration_loss(part_maps: torch.Tensor) -> torch.Tensor:
    """Compactness of the foreground parts: mass-weighted squared distance to the part centroid.

    With row / column indices ``i, j`` and the centroid of part k in image b
    ``(ci, cj) = sum_{i,j} (i, j) A[b,k,i,j] / sg(sum_{i,j} A[b,k,i,j])`` (the normaliser is not
    differentiated, as in the reference, and clamped at ``finfo.eps`` so that a part with no mass
    gets centroid (0, 0))::

        L = mean_{b, k < K, i, j} A[b,k,i,j] * (((i - ci) / H)^2 + ((j - cj) / W)^2)

    Weight 0 in the reference recipe. (The reference divides row offsets by W and column
    offsets by H; identical for the square patch grids used in practice.)

    Args:
        part_maps: ``[B, K+1, H, W]``.
    """
    _check_part_maps(part_maps)
    fg = part_maps[:, :-1]  # [B, K, H, W]
    h, w = fg.shape[-2:]
    rows = torch.arange(h, device=fg.device, dtype=fg.dtype).view(1, 1, h, 1)  # [1, 1, H, 1]
    cols = torch.arange(w, device=fg.device, dtype=fg.dtype).view(1, 1, 1, w)  # [1, 1, 1, W]
    mass = fg.sum(dim=(2, 3), keepdim=True).detach().clamp_min(torch.finfo(fg.dtype).eps)  # [B, K, 1, 1]
    ci = (fg * rows).sum(dim=(2, 3), keepdim=True) / mass  # [B, K, 1, 1]
    cj = (fg * cols).sum(dim=(2, 3), keepdim=True) / mass  # [B, K, 1, 1]
    spread = ((rows - ci) / h).square() + ((cols - cj) / w).square()  # [B, K, H, W]
    return (spread * fg).mean()
