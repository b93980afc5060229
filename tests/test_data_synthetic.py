"""Synthetic spurious-background benchmark: determinism, structure, correlations, masks."""

import os
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from datasets import ClassLabel, Image

from ifam_data.synthetic import BACKGROUND_KINDS, make_synthetic_benchmark, mask_to_token_mask


@pytest.fixture(scope="module")
def default_train():
    return make_synthetic_benchmark(num_train=3000, num_validation=120, num_test=240)


def _arr(ds, col):
    return np.asarray(ds[col])


def test_schema(default_train):  # generation time belongs in a benchmark, not in a test
    dd = default_train
    assert list(dd) == ["train", "validation", "test"]
    assert [len(dd[s]) for s in dd] == [3000, 120, 240]
    f = dd["train"].features
    assert isinstance(f["image"], Image) and isinstance(f["mask"], Image) and f["mask"].mode == "L"
    assert f["label"].names == ["stripes_0deg", "stripes_90deg"]
    assert isinstance(f["background"], ClassLabel) and f["background"].names == ["blue_gradient", "green_blotch"]
    assert isinstance(f["group"], ClassLabel) and f["group"].num_classes == 4
    row = dd["train"][0]
    assert row["image"].mode == "RGB" and row["image"].size == (112, 112)
    assert row["mask"].mode == "L" and row["mask"].size == (112, 112)
    assert set(np.unique(np.asarray(row["mask"]))) <= {0, 1}


def test_train_correlation_and_groups(default_train):
    dd = default_train
    tr = dd["train"]
    y, bg, g = _arr(tr, "label"), _arr(tr, "background"), _arr(tr, "group")
    assert abs((y == bg).mean() - 0.95) < 0.005
    assert abs(y.mean() - 0.5) < 0.01
    np.testing.assert_array_equal(g, y * 2 + bg)
    for split in ("validation", "test"):
        counts = Counter(_arr(dd[split], "group").tolist())
        assert sorted(counts) == [0, 1, 2, 3]
        assert max(counts.values()) - min(counts.values()) <= 1


def test_deterministic_and_seeded():
    kw = dict(num_train=24, num_validation=8, num_test=8, image_size=56)
    a = make_synthetic_benchmark(seed=3, **kw)
    b = make_synthetic_benchmark(seed=3, **kw)
    c = make_synthetic_benchmark(seed=4, **kw)
    for split in a:
        ra = a[split].cast_column("image", Image(decode=False))
        rb = b[split].cast_column("image", Image(decode=False))
        assert [x["bytes"] for x in ra["image"]] == [x["bytes"] for x in rb["image"]]
        for col in ("label", "background", "group"):
            assert list(a[split][col]) == list(b[split][col])
    assert not np.array_equal(np.asarray(a["train"][0]["image"]), np.asarray(c["train"][0]["image"]))
    # each split has its own stream: resizing test leaves train untouched
    d = make_synthetic_benchmark(seed=3, num_train=24, num_validation=8, num_test=16, image_size=56)
    assert np.array_equal(np.asarray(a["train"][5]["image"]), np.asarray(d["train"][5]["image"]))


def _orientation_energy(img, mask):
    """Mean |d/dy| and |d/dx| of the grey image over interior mask pixels."""
    g = np.asarray(img, dtype=np.float32).mean(-1)
    m = np.asarray(mask).astype(bool)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    dy = np.abs(g[2:, 1:-1] - g[:-2, 1:-1])
    dx = np.abs(g[1:-1, 2:] - g[1:-1, :-2])
    return dy[inner].mean(), dx[inner].mean()


@pytest.mark.parametrize("num_classes", [2, 4])
def test_masks_match_object_and_class_pattern(num_classes):
    dd = make_synthetic_benchmark(num_train=40, num_validation=0, num_test=0, num_classes=num_classes, seed=1)
    tr = dd["train"]
    correct = 0
    for row in tr:
        m = np.asarray(row["mask"])
        frac = m.mean()
        assert 0.03 < frac < 0.6, "object mask should be non-empty and not the whole image"
        img = np.asarray(row["image"], dtype=np.float32)
        # the object (inside the mask) has different colour statistics than the background ring
        inside = img[m.astype(bool)].mean(0)
        tokens = mask_to_token_mask(row["mask"], 14)
        assert tokens.shape == (64,) and tokens.dtype == torch.bool and tokens.any()
        if num_classes == 2:
            dy, dx = _orientation_energy(row["image"], m)
            # class 0: horizontal stripes -> intensity changes along y; class 1: along x
            correct += (dy > dx) == (row["label"] == 0)
        assert np.isfinite(inside).all()
    if num_classes == 2:
        assert correct / len(tr) >= 0.9
    else:
        assert tr.features["label"].names == ["stripes_0deg", "stripes_45deg", "stripes_90deg", "stripes_135deg"]
        assert tr.features["group"].num_classes == 16


def test_background_only_outside_mask():
    """Pixels outside the mask carry the background kind's colour family (blue vs green)."""
    dd = make_synthetic_benchmark(num_train=0, num_validation=40, num_test=0, seed=2, noise_std=0.0)
    ok = 0
    for row in dd["validation"]:
        img = np.asarray(row["image"], dtype=np.float32)
        out = img[np.asarray(row["mask"]) == 0].mean(0)
        blue_dominant = out[2] > out[1]
        ok += blue_dominant == (row["background"] == 0)
    assert ok >= 38


def test_ood_regime_kinds():
    dd = make_synthetic_benchmark(regime="ood", num_train=240, num_validation=60, num_test=80, image_size=56)
    tr, va, te = (set(_arr(dd[s], "background").tolist()) for s in ("train", "validation", "test"))
    assert tr == set(range(6)) and va <= tr
    assert te == set(range(6, 12)) and not (te & tr)
    names = dd["test"].features["background"].names
    assert names == [k[0] for k in BACKGROUND_KINDS[:12]]
    y, bg = _arr(dd["train"], "label"), _arr(dd["train"], "background")
    assert abs((y[bg == 0] == 0).mean() - 0.5) < 0.25  # class-independent backgrounds
    counts = Counter(_arr(dd["test"], "group").tolist())
    assert len(counts) == 12 and max(counts.values()) - min(counts.values()) <= 1
    expected = _arr(dd["test"], "label") * 12 + _arr(dd["test"], "background")
    np.testing.assert_array_equal(_arr(dd["test"], "group"), expected)


def test_line_backgrounds_run_along_the_class_orientations():
    """Kind 10 has horizontal lines (class 0's stripe direction), kind 11 vertical ones (class 1's)."""
    dd = make_synthetic_benchmark(regime="ood", num_train=0, num_validation=0, num_test=48, image_size=56,
                                  patch_size=7, noise_std=0.0)
    for row in dd["test"]:
        if row["background"] not in (10, 11):
            continue
        img = np.asarray(row["image"], dtype=np.float32).mean(-1)
        outside = np.asarray(row["mask"]) == 0
        both = outside[1:, 1:] & outside[:-1, 1:] & outside[1:, :-1]
        along_y = np.abs(np.diff(img, axis=0))[:, 1:][both].mean()  # large for horizontal lines
        along_x = np.abs(np.diff(img, axis=1))[1:, :][both].mean()
        assert (along_y > 2 * along_x) if row["background"] == 10 else (along_x > 2 * along_y), row["background"]


def test_mask_to_token_mask_threshold():
    m = np.zeros((28, 28), np.uint8)
    m[:14, :14] = 1            # patch 0 fully object
    m[:7, 14:] = 1             # patch 1 half object
    m[14:17, :14] = 1          # patch 2 ~21% object
    assert mask_to_token_mask(m, 14).tolist() == [True, True, False, False]
    assert mask_to_token_mask(m, 14, threshold=0.6).tolist() == [True, False, False, False]
    assert mask_to_token_mask(m, 14, threshold=0.2).tolist() == [True, True, True, False]
    assert mask_to_token_mask(PILImage.fromarray(m * 255), 14).tolist() == [True, True, False, False]
    batch = mask_to_token_mask(torch.from_numpy(np.stack([m, 1 - m])), 14)
    assert batch.shape == (2, 4) and batch[1].tolist() == [False, True, True, True]
    with pytest.raises(ValueError, match="multiple"):
        mask_to_token_mask(np.zeros((30, 28)), 14)


def test_cache_dir(tmp_path):
    kw = dict(num_train=12, num_validation=4, num_test=4, image_size=28, cache_dir=str(tmp_path))
    a = make_synthetic_benchmark(**kw)
    entries = os.listdir(tmp_path)
    assert len(entries) == 1 and entries[0].startswith("synthetic_")
    b = make_synthetic_benchmark(**kw)
    assert list(b["train"]["label"]) == list(a["train"]["label"])
    assert np.array_equal(np.asarray(a["test"][0]["mask"]), np.asarray(b["test"][0]["mask"]))
    make_synthetic_benchmark(**{**kw, "seed": 1})
    assert len(os.listdir(tmp_path)) == 2


def test_invalid_arguments():
    with pytest.raises(ValueError, match="regime"):
        make_synthetic_benchmark(regime="weird", num_train=2, num_validation=0, num_test=0)
    with pytest.raises(ValueError, match="multiple"):
        make_synthetic_benchmark(image_size=100, num_train=2, num_validation=0, num_test=0)
