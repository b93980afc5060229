"""Exact-value tests of the stage-1 part-shaping losses (modeling_ifam/part_losses.py).

Every expected number is derived by hand in the test from a small hand-made map.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from modeling_ifam.part_losses import (
    RandomAffine,
    background_presence_loss,
    concentration_loss,
    equivariance_loss,
    orthogonality_loss,
    pixelwise_entropy_loss,
    presence_loss,
    total_variation_loss,
)

MAP_LOSSES = [presence_loss, background_presence_loss, pixelwise_entropy_loss, total_variation_loss, concentration_loss]


def one_hot_maps(labels: torch.Tensor, num_parts: int) -> torch.Tensor:
    """[B, H, W] integer labels -> [B, num_parts, H, W] one-hot float maps."""
    return F.one_hot(labels, num_parts).permute(0, 3, 1, 2).float()


def scalar(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# Orthogonality
# --------------------------------------------------------------------------------------------
def test_orthogonality_hand_value():
    # B=1, D=2, K+1=3 parts: f0=(1,0), f1=(0,2), f2=(1,1).
    # cos(f0,f1)=0, cos(f0,f2)=cos(f1,f2)=1/sqrt(2) -> 4 off-diagonal entries of 1/2 -> sum 2 over 9 entries.
    feats = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 2.0, 1.0]]])  # [1, 2, 3]
    assert_close(orthogonality_loss(feats), scalar(2.0 / 9.0))


def test_orthogonality_extremes_and_batch_mean():
    orth = torch.eye(4).unsqueeze(0)  # [1, 4, 4] orthonormal columns -> 0
    same = torch.ones(1, 4, 4)  # all identical -> 12 off-diagonal ones / 16
    assert_close(orthogonality_loss(orth), scalar(0.0))
    assert_close(orthogonality_loss(same), scalar(12.0 / 16.0))
    assert_close(orthogonality_loss(torch.cat([orth, same])), scalar(6.0 / 16.0))  # mean over the batch
    # the background (last) part is included: only it collides with part 0
    feats = torch.eye(3).unsqueeze(0).clone()
    feats[0, :, 2] = feats[0, :, 0]
    assert_close(orthogonality_loss(feats), scalar(2.0 / 9.0))


def test_orthogonality_gradient_decorrelates():
    feats = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 2.0, 1.0]]], requires_grad=True)
    loss = orthogonality_loss(feats)
    loss.backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    with torch.no_grad():
        assert orthogonality_loss(feats - 0.1 * feats.grad) < loss


# --------------------------------------------------------------------------------------------
# Presence (foreground)
# --------------------------------------------------------------------------------------------
def _presence_maps() -> torch.Tensor:
    # B=2, K=2 foreground parts + background, 4x4 maps (3x3 average pool -> 2x2).
    labels = torch.full((2, 4, 4), 2)
    labels[0, 0:3, 0:3] = 0  # part 0 fills a 3x3 window in image 0 -> pooled peak 1
    labels[1, 3, 3] = 1  # part 1 is a single pixel in image 1 -> pooled peak 1/9
    return one_hot_maps(labels, 3)


def test_presence_original_hand_value():
    # m = [1, 1/9] (max over locations AND batch) -> L = 1 - (1 + 1/9) / 2 = 4/9
    maps = _presence_maps()
    assert_close(presence_loss(maps), scalar(4.0 / 9.0))
    assert_close(presence_loss(maps, beta=0.5), scalar(4.0 / 9.0))  # beta unused by "original"


def test_presence_soft_constraint_hand_value():
    # L = mean_k (1 - m_k)((1 - beta) m_k + beta) = [0 + (8/9)(0.9/9 + 0.1)] / 2 = 4/45
    maps = _presence_maps()
    assert_close(presence_loss(maps, beta=0.1, variant="soft_constraint"), scalar(4.0 / 45.0))


def test_presence_ignores_background_and_pools_over_batch():
    bg_only = one_hot_maps(torch.full((1, 5, 5), 2), 3)
    assert_close(presence_loss(bg_only), scalar(1.0))
    # a part present in only one image of the batch counts as present
    labels = torch.full((2, 5, 5), 2)
    labels[0] = 0
    labels[1] = 1
    assert_close(presence_loss(one_hot_maps(labels, 3)), scalar(0.0))


def test_presence_gradient_only_on_foreground_peak_window():
    maps = _presence_maps().requires_grad_()
    presence_loss(maps).backward()
    grad = maps.grad
    assert torch.all(grad[:, 2] == 0)  # background gets no gradient
    # part 1 peak: pooled window (1,1) of image 1 covers pixels [1:4, 1:4]; d L / d A = -1/(2*9)
    expected = torch.zeros(4, 4)
    expected[1:4, 1:4] = -1.0 / 18.0
    assert_close(grad[1, 1], expected)
    assert torch.all(grad[0, 1] == 0)


def test_presence_invalid_variant():
    with pytest.raises(ValueError, match="variant"):
        presence_loss(_presence_maps(), variant="tanh")


# --------------------------------------------------------------------------------------------
# Background presence (enforced presence at the border)
# --------------------------------------------------------------------------------------------
def test_background_presence_hand_value():
    # 5x5 maps -> 3x3 pooled grid; mask = (u^2 + v^2)/2 with u, v in {-1, 0, 1}:
    # corners 1, edge midpoints 1/2, centre 0.
    labels = torch.zeros(2, 5, 5, dtype=torch.long)  # part 0 everywhere ...
    labels[0] = 1  # image 0: background everywhere -> peak 1 -> -log 1 = 0
    labels[1, 1:4, 1:4] = 1  # image 1: background only in the central 3x3 block
    # image 1 pooled background: centre 9/9, edge windows 6/9, corner windows 4/9
    # masked: centre 0, edges 1/2 * 6/9 = 1/3, corners 4/9 -> peak 4/9
    maps = one_hot_maps(labels, 2)
    assert_close(background_presence_loss(maps), scalar(0.5 * math.log(9.0 / 4.0)))


def test_background_presence_center_only_and_no_background():
    labels = torch.zeros(1, 5, 5, dtype=torch.long)
    labels[0, 2, 2] = 1  # single central background pixel: pooled 1/9 at centre (mask 0),
    # 1/9 at edges (mask 1/2) and 1/9 at corners (mask 1) -> peak 1/9
    assert_close(background_presence_loss(one_hot_maps(labels, 2)), scalar(math.log(9.0)))
    # no background at all: BCE clamps log(0) at -100 (finite)
    no_bg = one_hot_maps(torch.zeros(1, 6, 6, dtype=torch.long), 3).requires_grad_()
    loss = background_presence_loss(no_bg)
    assert_close(loss, scalar(100.0))
    loss.backward()
    assert torch.isfinite(no_bg.grad).all()


def test_background_presence_gradient_pushes_background_up_at_border():
    # 7x7 maps -> 5x5 pooled grid; uniform 0.5 background: the 4 corner windows tie for the peak
    maps = torch.full((1, 2, 7, 7), 0.5, requires_grad=True)
    assert_close(background_presence_loss(maps), scalar(math.log(2.0)))
    background_presence_loss(maps).backward()
    grad = maps.grad[0]
    assert torch.all(grad[0] == 0)  # only the background channel receives gradient
    assert grad[1].sum() < 0  # increasing the background decreases the loss
    assert grad[1, 0, 0] < 0 and grad[1, 3, 3] == 0  # corner pixel vs. centre pixel (no corner window)


# --------------------------------------------------------------------------------------------
# Pixel-wise entropy
# --------------------------------------------------------------------------------------------
def test_pixelwise_entropy_hand_value():
    maps = torch.zeros(1, 4, 1, 3)
    maps[0, :, 0, 0] = 0.25  # uniform over 4 parts: log 4
    maps[0, 1, 0, 1] = 1.0  # one-hot: 0
    maps[0, :2, 0, 2] = 0.5  # two-way split: log 2
    assert_close(pixelwise_entropy_loss(maps), scalar((math.log(4.0) + 0.0 + math.log(2.0)) / 3.0))


def test_pixelwise_entropy_matches_categorical_and_gradient():
    logits = torch.randn(2, 5, 3, 3, generator=torch.Generator().manual_seed(0))
    maps = logits.softmax(dim=1).requires_grad_()
    expected = torch.distributions.Categorical(probs=maps.detach().permute(0, 2, 3, 1)).entropy().mean()
    loss = pixelwise_entropy_loss(maps)
    assert_close(loss, expected)
    loss.backward()
    # d/dp of -sum p log p is -(log p + 1), averaged over B*H*W = 18 pixels
    assert_close(maps.grad, -(maps.detach().log() + 1.0) / 18.0)


# --------------------------------------------------------------------------------------------
# Total variation
# --------------------------------------------------------------------------------------------
def test_total_variation_hand_value():
    # image 0 (2x3): channel 0 = [[1,0,0],[1,0,0]], channel 1 = 1 - channel 0.
    # vertical diffs: 0; horizontal: 1 per row per channel -> 4. Image 1 constant -> 0.
    # L = (4 + 0) / (B*H*W) = 4 / 12
    ch0 = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    img0 = torch.stack([ch0, 1 - ch0])
    img1 = torch.stack([torch.zeros(2, 3), torch.ones(2, 3)])
    assert_close(total_variation_loss(img0[None]), scalar(4.0 / 6.0))
    assert_close(total_variation_loss(torch.stack([img0, img1])), scalar(4.0 / 12.0))
    # vertical edges count the same way (transpose: 3x2 map, 4 / 6)
    assert_close(total_variation_loss(img0.transpose(1, 2)[None]), scalar(4.0 / 6.0))


def test_total_variation_l1_not_l2():
    maps = torch.zeros(1, 2, 1, 2)
    maps[0, 0, 0, 0] = 0.5  # a jump of 0.5 in channel 0: |0.5| = 0.5 (L2 would give 0.25)
    assert_close(total_variation_loss(maps), scalar(0.5 / 2.0))


# --------------------------------------------------------------------------------------------
# Concentration
# --------------------------------------------------------------------------------------------
def test_concentration_hand_value():
    # foreground part at (1,1) and (1,3) of a 4x4 map: centroid (1, 2);
    # each pixel contributes ((1-1)/4)^2 + ((1 or 3 - 2)/4)^2 = 1/16 -> sum 1/8 over B*K*H*W = 16
    labels = torch.ones(1, 4, 4, dtype=torch.long)
    labels[0, 1, 1] = labels[0, 1, 3] = 0
    assert_close(concentration_loss(one_hot_maps(labels, 2)), scalar(1.0 / 128.0))


def test_concentration_compact_part_and_background_ignored():
    labels = torch.ones(1, 4, 4, dtype=torch.long)
    labels[0, 2, 2] = 0  # single-pixel part: zero spread; the spread-out background is ignored
    assert_close(concentration_loss(one_hot_maps(labels, 2)), scalar(0.0))


def test_concentration_gradient_favours_compact_parts():
    labels = torch.ones(1, 4, 4, dtype=torch.long)
    labels[0, 1, 1] = labels[0, 1, 3] = 0
    maps = one_hot_maps(labels, 2).requires_grad_()
    concentration_loss(maps).backward()
    g = maps.grad[0, 0]
    assert g[1, 2] < g[1, 1]  # mass at the centroid is cheaper than mass at the ends
    assert torch.all(maps.grad[0, 1] == 0)


# --------------------------------------------------------------------------------------------
# Random affine transform + equivariance
# --------------------------------------------------------------------------------------------
def test_affine_identity_is_exact():
    x = torch.rand(2, 3, 8, 6)
    assert_close(RandomAffine.identity(2).apply(x), x)
    assert_close(RandomAffine.identity(2).invert(x), x)


def test_affine_rotation_90_is_clockwise_rot90():
    x = torch.rand(1, 2, 5, 5)
    t = RandomAffine(torch.tensor([90.0]), torch.zeros(1, 2), torch.ones(1))
    rotated = t.apply(x)
    assert_close(rotated, torch.rot90(x, k=-1, dims=(-2, -1)), atol=1e-5, rtol=0)
    assert_close(t.invert(rotated), x, atol=1e-5, rtol=0)


def test_affine_translation_consistent_across_resolutions():
    # tx = 0.25 of the width: 4 pixels on a 16x16 image, 2 pixels on its 8x8 patch map
    t = RandomAffine(torch.zeros(1), torch.tensor([[0.25, 0.0]]), torch.ones(1))
    for size, shift in ((16, 4), (8, 2)):
        x = torch.rand(1, 1, size, size)
        y = t.apply(x)
        assert_close(y[..., shift:], x[..., :-shift])
        assert torch.all(y[..., :shift] == 0)  # zeros come in from outside
        assert_close(t.invert(y)[..., :-shift], x[..., :-shift])


def test_affine_forward_and_inverse_matrices_compose_to_identity():
    t = RandomAffine.sample(3, shared=False, generator=torch.Generator().manual_seed(1))
    bottom = torch.tensor([0.0, 0.0, 1.0]).expand(3, 1, 3)
    for h, w in ((32, 32), (37, 37), (24, 40)):
        fwd = torch.cat([t.theta(h, w), bottom], dim=1)  # [3, 3, 3]
        inv = torch.cat([t.theta(h, w, inverse=True), bottom], dim=1)
        assert_close(fwd @ inv, torch.eye(3).expand(3, 3, 3), atol=1e-5, rtol=0)


def test_affine_scale_about_centre_hand_value():
    # 2x zoom of a 4x4 map whose central 2x2 block is 1. In pixel units centred on the map,
    # output pixel centre q reads the input at q / 2:
    #   q = -0.5 -> -0.25 (between the two central pixels, both 1)      -> 1
    #   q = -1.5 -> -0.75 (3/4 on pixel centre -0.5 (=1), 1/4 on -1.5 (=0)) -> 3/4 per axis
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1:3, 1:3] = 1.0
    zoom = RandomAffine(torch.zeros(1), torch.zeros(1, 2), torch.tensor([2.0]))
    expected = torch.tensor([0.75, 1.0, 1.0, 0.75])
    assert_close(zoom.apply(x)[0, 0], expected[:, None] * expected[None, :])


def test_random_affine_sample_ranges_and_reproducibility():
    a = RandomAffine.sample(64, shared=False, generator=torch.Generator().manual_seed(0))
    b = RandomAffine.sample(64, shared=False, generator=torch.Generator().manual_seed(0))
    assert_close(a.angle, b.angle)
    assert_close(a.translate, b.translate)
    assert_close(a.scale, b.scale)
    assert a.angle.shape == (64,) and a.translate.shape == (64, 2) and a.scale.shape == (64,)
    assert a.angle.abs().max() <= 90 and a.translate.abs().max() <= 0.11
    assert a.scale.min() >= 0.8 and a.scale.max() <= 1.4
    assert a.angle.unique().numel() > 1
    shared = RandomAffine.sample(8, generator=torch.Generator().manual_seed(0))  # reference: one per batch
    assert shared.angle.unique().numel() == 1 and shared.scale.unique().numel() == 1


def test_equivariance_hand_value():
    # K=1: foreground maps a = [1, 1, 0, 0], b = [1, 0, 0, 0] -> cos = 1/sqrt(2)
    a = torch.zeros(1, 2, 2, 2)
    b = torch.zeros(1, 2, 2, 2)
    a[0, 0, 0, :] = 1.0
    b[0, 0, 0, 0] = 1.0
    a[0, 1] = 1 - a[0, 0]
    b[0, 1] = 1 - b[0, 0]
    assert_close(equivariance_loss(a, b), scalar(1.0 - 1.0 / math.sqrt(2.0)))
    assert_close(equivariance_loss(a, a), scalar(0.0))
    # background channel is ignored
    b2 = b.clone()
    b2[0, 1] = 0.3
    assert_close(equivariance_loss(a, b2), scalar(1.0 - 1.0 / math.sqrt(2.0)))


def test_equivariance_mean_over_parts_and_disjoint_maps():
    # K=2: part 0 identical (cos 1), part 1 disjoint (cos 0) -> L = 1 - 1/2
    a = one_hot_maps(torch.tensor([[[0, 1], [2, 2]]]), 3)
    b = one_hot_maps(torch.tensor([[[0, 2], [1, 2]]]), 3)
    assert_close(equivariance_loss(a, b), scalar(0.5))


def test_equivariance_pipeline_with_equivariant_model():
    # a "model" that is exactly equivariant to 90-degree rotations: softmax of 2x2-average-pooled pixels
    def model(images):
        return F.avg_pool2d(images, 2).mul(4.0).softmax(dim=1)  # [B, 3, H/2, W/2]

    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    transform = RandomAffine(torch.tensor([90.0, -90.0]), torch.zeros(2, 2), torch.ones(2))
    maps = model(images)
    maps_t = model(transform.apply(images)).requires_grad_()
    loss = equivariance_loss(maps, transform.invert(maps_t))
    assert_close(loss, scalar(0.0), atol=1e-6, rtol=0)
    # a non-equivariant "model" (ignores the transform) is penalised, with a finite gradient
    loss_bad = equivariance_loss(maps, transform.invert(maps.detach().flip(-1).requires_grad_()))
    assert loss_bad > 1e-3
    loss.backward()
    assert torch.isfinite(maps_t.grad).all()


def test_affine_apply_validates_input():
    t = RandomAffine.identity(2)
    with pytest.raises(ValueError, match="x"):
        t.apply(torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match="B = 2"):
        t.apply(torch.rand(3, 1, 8, 8))
    with pytest.raises(ValueError, match="translate"):
        RandomAffine(torch.zeros(2), torch.zeros(2), torch.ones(2))


# --------------------------------------------------------------------------------------------
# Input validation and degenerate inputs (all losses)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_fn", MAP_LOSSES)
@pytest.mark.parametrize("bad_shape", [(3, 8, 8), (1, 2, 3, 8, 8), (2, 1, 8, 8)])
def test_map_losses_reject_bad_shapes(loss_fn, bad_shape):
    with pytest.raises(ValueError, match=r"part_maps.*\[B, K\+1, H, W\]"):
        loss_fn(torch.rand(bad_shape))


def test_spatial_minimums_and_non_tensors():
    with pytest.raises(ValueError, match="part_maps"):
        presence_loss(torch.rand(1, 3, 2, 8))  # 3x3 pooling needs H, W >= 3
    with pytest.raises(ValueError, match="part_maps"):
        background_presence_loss(torch.rand(1, 3, 3, 3))  # border mask needs H, W >= 4
    with pytest.raises(ValueError, match="part_maps"):
        total_variation_loss([[0.0]])
    with pytest.raises(ValueError, match="part_maps"):
        pixelwise_entropy_loss(torch.ones(1, 2, 2, 2, dtype=torch.long))


@pytest.mark.parametrize("bad_shape", [(4, 3), (1, 4, 3, 2), (2, 4, 1)])
def test_orthogonality_rejects_bad_shapes(bad_shape):
    with pytest.raises(ValueError, match=r"part_features.*\[B, D, K\+1\]"):
        orthogonality_loss(torch.rand(bad_shape))


def test_equivariance_rejects_bad_shapes():
    maps = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="part_maps"):
        equivariance_loss(torch.rand(3, 4, 4), maps)
    with pytest.raises(ValueError, match="aligned_part_maps"):
        equivariance_loss(maps, torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match="aligned_part_maps.*same shape"):
        equivariance_loss(maps, torch.rand(2, 3, 8, 8))


def _degenerate_maps():
    all_bg = one_hot_maps(torch.full((2, 6, 6), 3), 4)  # all mass on the background
    one_hot = one_hot_maps(torch.randint(0, 4, (2, 6, 6), generator=torch.Generator().manual_seed(0)), 4)
    single = torch.rand(1, 4, 6, 6).softmax(dim=1)  # B = 1
    return {"all_background": all_bg, "one_hot": one_hot, "batch_of_one": single}


@pytest.mark.parametrize("case", ["all_background", "one_hot", "batch_of_one"])
def test_all_losses_scalar_finite_differentiable_on_degenerate_maps(case):
    maps = _degenerate_maps()[case].requires_grad_()
    transform = RandomAffine.sample(maps.shape[0], generator=torch.Generator().manual_seed(0))
    losses = [fn(maps) for fn in MAP_LOSSES]
    losses.append(presence_loss(maps, variant="soft_constraint"))
    losses.append(equivariance_loss(maps, transform.invert(transform.apply(maps))))
    for loss in losses:
        assert loss.ndim == 0 and torch.isfinite(loss)
    sum(losses).backward()
    assert maps.grad is not None and torch.isfinite(maps.grad).all()

    feats = torch.zeros(maps.shape[0], 8, 4)
    feats[:, 0, 0] = 1.0  # one non-zero part vector, the others all-zero
    feats.requires_grad_()
    loss = orthogonality_loss(feats)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(feats.grad).all()
