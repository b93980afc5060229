"""The upstream image collection (ifam_data/upstream.py), its pretraining helpers, and the shipped backbone folder."""

from pathlib import Path

import numpy as np
import pytest
import torch

from experiments import pretrain_upstream
from ifam_data import upstream
from ifam_data.synthetic import BACKGROUND_KINDS

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "pretrained" / "dinov2-tiny-upstream"


@pytest.fixture(scope="module")
def images():
    return upstream.make_upstream_images(320, seed=3, chunk=160)


def test_shapes_dtypes_and_labels_as_documented(images):
    n, s = 320, 56
    assert images["image"].shape == (n, s, s, 3) and images["image"].dtype == np.uint8
    assert images["mask"].shape == (n, s, s) and set(np.unique(images["mask"])) <= {0, 1}
    for key, names in (("shape", upstream.SHAPES), ("object_texture", upstream.OBJECT_TEXTURES),
                       ("background_kind", upstream.UPSTREAM_BACKGROUNDS)):
        assert images[key].shape == (n,) and images[key].dtype == np.int64
        assert images[key].min() >= 0 and images[key].max() < len(names)
        assert len(np.unique(images[key])) == len(names)  # every shape / texture / kind occurs in 320 images
    share = images["mask"].mean((1, 2))
    assert (share > 0.01).all() and 0.1 < share.mean() < 0.4  # one visible object per image
    assert "stripe" not in " ".join(k for k in images) and "orientation" not in " ".join(k for k in images)


def test_no_ood_test_background_kind(images):
    test_kinds = BACKGROUND_KINDS[6:12]
    assert [k[0] for k in test_kinds] == ["cyan_dots", "magenta_blotch", "teal_checker", "indigo_speckle",
                                          "olive_lines_0deg", "pink_lines_90deg"]
    assert tuple(upstream.ood_test_kinds()) == test_kinds
    assert not any(name.startswith("lines") for name in upstream.UPSTREAM_BACKGROUNDS)  # no parallel-line background
    names = np.asarray(upstream.UPSTREAM_BACKGROUNDS)[images["background_kind"]]
    for _, texture, hue in test_kinds:
        same_texture = names == texture
        if texture.startswith("lines_"):
            assert not same_texture.any()
            continue
        assert same_texture.any()  # the texture family itself is in the collection, at other hues
        distance = np.abs((images["background_hue"][same_texture] - hue) % 1.0)
        assert (np.minimum(distance, 1 - distance) >= upstream.TEST_HUE_EXCLUSION).all()
    flagged = [upstream.is_ood_test_kind(name, hue) for name, hue in zip(names, images["background_hue"])]
    assert not any(flagged)
    assert upstream.is_ood_test_kind("dots", 0.5) and upstream.is_ood_test_kind("lines", 0.3)
    assert not upstream.is_ood_test_kind("dots", 0.08)  # orange dots: an ood *training* kind, allowed


def test_seeded_and_reproducible(images):
    again = upstream.make_upstream_images(320, seed=3, chunk=160)
    for key in images:
        np.testing.assert_array_equal(images[key], again[key])
    other = upstream.make_upstream_images(320, seed=4, chunk=160)
    assert not np.array_equal(images["image"], other["image"])
    shorter = upstream.make_upstream_images(160, seed=3, chunk=160)
    np.testing.assert_array_equal(images["image"][:160], shorter["image"])  # whole chunks do not depend on N


def test_saliency_pseudo_labels_find_a_square_on_a_plain_background():
    image = np.full((1, 56, 56, 3), 40, np.uint8)
    image[0, 21:42, 14:35] = (200, 120, 30)  # 3 x 3 patches
    labels = pretrain_upstream.saliency_pseudo_labels(image, 7)
    expected = np.zeros((8, 8), bool)
    expected[3:6, 2:5] = True
    labels = labels[0].reshape(8, 8)
    assert labels[expected].all()  # the square
    # and at most the patches whose last row/column holds its edge (the statistics' one-pixel leak), nothing else
    leak = np.zeros((8, 8), bool)
    leak[2, 2:5] = leak[3:6, 1] = True
    assert not labels[~expected & ~leak].any()


def test_cut_paste_targets_are_the_pasted_fraction():
    pixels = torch.zeros(4, 3, 56, 56)
    pixels[1] = 1.0  # only image 1 differs, so what image 0 received from it is visible
    composite, fraction = pretrain_upstream.cut_paste(pixels, np.random.default_rng(0), 7)
    assert composite.shape == pixels.shape and fraction.shape == (4, 64)
    assert ((fraction >= 0) & (fraction <= 1)).all() and (fraction.sum(1) > 0).all()


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="the shipped backbone folder is not built")
def test_shipped_backbone_loads_everywhere():
    from transformers import Dinov2ForImageClassification, Dinov2Model

    from modeling_ifam import IFAMForImageClassification

    files = {p.name for p in SHIPPED.iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= files
    assert (SHIPPED / "model.safetensors").stat().st_size < 5 * 2**20
    backbone = Dinov2Model.from_pretrained(SHIPPED)
    assert (backbone.config.hidden_size, backbone.config.num_hidden_layers, backbone.config.patch_size,
            backbone.config.image_size) == (64, 4, 7, 56)
    classifier = Dinov2ForImageClassification.from_pretrained(SHIPPED, num_labels=2)
    model = IFAMForImageClassification.from_dinov2(str(SHIPPED), num_parts=2, id2label={0: "a", 1: "b"})
    for stage in (model.stage1, model.stage2):
        for name, tensor in backbone.state_dict().items():
            torch.testing.assert_close(stage.backbone.state_dict()[name], tensor)
    torch.testing.assert_close(classifier.dinov2.embeddings.patch_embeddings.projection.weight,
                               backbone.embeddings.patch_embeddings.projection.weight)
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 56, 56))
    assert out.logits.shape == (2, 2)


def test_kmeans_gate_measurement_reads_clusters_per_dataset():
    from experiments import probe_features

    generator = torch.Generator().manual_seed(0)
    truth = torch.zeros(40, 16, dtype=torch.bool)
    truth[:, :5] = True
    inputs = torch.randn(640, 3, generator=generator) * 0.1 + truth.flatten()[:, None].float() * 3.0
    centres = probe_features.kmeans(inputs)
    clusters = torch.cdist(inputs, centres).argmin(1)
    foreground = max((0, 1), key=lambda c: probe_features.cluster_iou(clusters, truth.flatten(), c))
    assert probe_features.cluster_iou(clusters, truth.flatten(), foreground) == 100.0
    assert probe_features.cluster_iou(clusters, truth.flatten(), 1 - foreground) == 0.0
    # the per-image oracle may swap the clusters in every image: a split by a fixed position scores 100 with it too
    by_position = torch.zeros(40, 16, dtype=torch.long)
    by_position[:, 5:] = 1
    assert probe_features.per_image_oracle_iou(by_position.flatten(), truth.flatten(), 16) == 100.0

