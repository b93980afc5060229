"""Benchmark loaders on tiny fixtures written in each benchmark's raw layout."""

import csv
import json
import os
import zlib
import pickle

import numpy as np
import pytest
from PIL import Image as PILImage

from datasets import ClassLabel, DatasetDict, Image

from ifam_data import benchmarks as B


def _img(path, fmt=None, mode="RGB", value=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # seeded by the file's last three path parts, not hash() (salted per process) nor tmp_path (changes per run)
    rng = np.random.default_rng(zlib.crc32("/".join(os.fspath(path).split(os.sep)[-3:]).encode()))
    shape = (8, 8, 3) if mode == "RGB" else (8, 8)
    arr = rng.integers(0, 255, shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
    PILImage.fromarray(arr, mode).save(path, format=fmt)
    return path


def _labels(ds):
    return [int(x) for x in ds["label"]]


def _assert_lazy_paths(ds):
    raw = ds.cast_column("image", Image(decode=False))
    item = raw[0]["image"]
    assert item["bytes"] is None and os.path.isabs(item["path"])


# --------------------------------------------------------------------------------------------
# Waterbirds
# --------------------------------------------------------------------------------------------
def _waterbirds(root):
    header = ("img_id", "img_filename", "y", "split", "place", "place_filename")
    wb = root / B.WATERBIRDS_SUBDIR
    rows = []
    for split, n in ((0, 8), (1, 4), (2, 4)):
        for k in range(n):
            i = len(rows)
            y, place = k % 2, (k // 2) % 2
            rel = f"{1 + 100 * y:03d}.Bird_{y}/img_{i}.jpg"
            rows.append((i + 1, rel, y, split, place, f"/p/{place}/x.jpg"))
    for r in rows:
        _img(str(wb / r[1]), fmt="JPEG")
    with open(wb / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return wb, rows


def test_waterbirds_layout(tmp_path):
    wb, rows = _waterbirds(tmp_path)
    for data_dir in (tmp_path, wb):  # CUB root with the subfolder, or the Waterbirds folder itself
        dd = B.load_waterbirds(str(data_dir))
        assert list(dd) == ["train", "validation", "test"]
        assert [len(dd[s]) for s in dd] == [8, 4, 4]
        f = dd["train"].features
        assert isinstance(f["image"], Image)
        assert f["label"].names == ["landbird", "waterbird"]
        assert f["place"].names == ["land", "water"]
        assert isinstance(f["group"], ClassLabel) and f["group"].num_classes == 4
        tr = dd["train"]
        y, p, g = np.array(tr["label"]), np.array(tr["place"]), np.array(tr["group"])
        np.testing.assert_array_equal(g, 2 * y + p)
        np.testing.assert_array_equal(y, [r[2] for r in rows if r[3] == 0])
        assert tr[0]["image"].size == (8, 8)
        _assert_lazy_paths(tr)


def test_waterbirds_masks(tmp_path):
    wb, rows = _waterbirds(tmp_path)
    for r in rows:
        _img(str(tmp_path / "segmentations" / r[1].replace(".jpg", ".png")), mode="L", value=255)
    dd = B.load_waterbirds(str(tmp_path), mask_subdir="segmentations")
    assert "mask" in dd["test"].column_names
    assert np.asarray(dd["test"][0]["mask"]).max() == 255


def test_waterbirds_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        B.load_waterbirds(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="metadata.csv"):
        B.load_waterbirds(str(tmp_path))
    wb, rows = _waterbirds(tmp_path)
    # missing image file
    os.remove(wb / rows[5][1])
    with pytest.raises(FileNotFoundError, match=rows[5][1].split("/")[-1]):
        B.load_waterbirds(str(tmp_path))
    # missing metadata column
    with open(wb / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["img_id", "img_filename", "y", "split"])
        w.writerow([1, rows[0][1], 0, 0])
    with pytest.raises(ValueError, match="place"):
        B.load_waterbirds(str(tmp_path))


def test_verify_images_names_unreadable_file(tmp_path):
    wb, rows = _waterbirds(tmp_path)
    bad = wb / rows[9][1]
    bad.write_bytes(b"this is not a jpeg")
    dd = B.load_waterbirds(str(tmp_path))  # existence check passes; decoding is lazy
    with pytest.raises(ValueError, match="img_9.jpg"):
        B.verify_images(dd)
    with pytest.raises(ValueError, match="img_9.jpg"):
        B.load_waterbirds(str(tmp_path), verify=True)
    os.remove(bad)
    with pytest.raises(FileNotFoundError, match="img_9.jpg"):
        B.verify_images(dd)


# --------------------------------------------------------------------------------------------
# MetaShift
# --------------------------------------------------------------------------------------------
def _metashift(root, with_val=False):
    layout = {
        "train": {"cat": {"sofa": 3, "bed": 2}, "dog": {"bench": 3, "bike": 2}},
        "test": {"cat": {"shelf": 4}, "dog": {"shelf": 4}},
    }
    if with_val:
        layout["val_out_of_domain"] = {"cat": {"shelf": 1}, "dog": {"shelf": 1}}
    for split, classes in layout.items():
        for cls, ctxs in classes.items():
            for ctx, n in ctxs.items():
                for i in range(n):
                    _img(str(root / split / cls / f"{cls}({ctx})" / f"{ctx}_{i}.jpg"), fmt="JPEG")
    return layout


def test_metashift_layout(tmp_path):
    _metashift(tmp_path)
    dd = B.load_metashift(str(tmp_path))
    assert list(dd) == ["train", "test"]
    assert len(dd["train"]) == 10 and len(dd["test"]) == 8
    f = dd["train"].features
    assert f["label"].names == ["cat", "dog"]
    assert f["group"].names == ["cat(bed)", "cat(shelf)", "cat(sofa)", "dog(bench)", "dog(bike)", "dog(shelf)"]
    tr = dd["train"]
    for row in tr.select_columns(["label", "place", "group"]):
        assert f["group"].int2str(row["group"]) == f"{f['label'].int2str(row['label'])}({row['place']})"
    assert sorted(set(dd["test"]["place"])) == ["shelf"]
    assert sorted(set(dd["test"]["group"])) == [1, 5]
    assert sorted(set(tr["place"])) == ["bed", "bench", "bike", "sofa"]
    _assert_lazy_paths(tr)


def test_metashift_validation(tmp_path):
    _metashift(tmp_path, with_val=True)
    dd = B.load_metashift(str(tmp_path))
    assert list(dd) == ["train", "validation", "test"] and len(dd["validation"]) == 2
    dd2 = B.load_metashift(str(tmp_path), validation_subdir=None, test_subdir="test")
    assert len(dd2["validation"]) == 2
    with pytest.raises(ValueError, match="already provides"):
        B.load_metashift(str(tmp_path), validation_fraction=0.25)


def test_metashift_carved_validation(tmp_path):
    _metashift(tmp_path)
    dd = B.load_metashift(str(tmp_path), validation_fraction=0.25, validation_source="test")
    assert len(dd["validation"]) == 2 and len(dd["test"]) == 6 and len(dd["train"]) == 10


def test_metashift_missing_folder(tmp_path):
    _metashift(tmp_path)
    with pytest.raises(FileNotFoundError, match="holdout"):
        B.load_metashift(str(tmp_path), test_subdir="holdout")


# --------------------------------------------------------------------------------------------
# CUB + Waterbird200
# --------------------------------------------------------------------------------------------
def _cub(root, waterbird200=True, masks=False, parts=True):
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    with open(root / "classes.txt", "w") as f:
        for i, c in enumerate(classes, 1):
            f.write(f"{i} {c}\n")
    lines_img, lines_lab, lines_split = [], [], []
    img_id = 0
    for ci, c in enumerate(classes, 1):
        for k in range(4):
            img_id += 1
            rel = f"{c}/{c.split('.')[1]}_{k:04d}_{img_id}.jpg"
            lines_img.append(f"{img_id} {rel}")
            lines_lab.append(f"{img_id} {ci}")
            lines_split.append(f"{img_id} {1 if k < 3 else 0}")
            _img(str(root / "images" / rel), fmt="JPEG")
            if waterbird200:
                _img(str(root / B.WATERBIRDS_SUBDIR / rel), fmt="JPEG")
            if masks:
                _img(str(root / "segmentations" / rel.replace(".jpg", ".png")), mode="L", value=255)
    (root / "images.txt").write_text("\n".join(lines_img) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(lines_lab) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(lines_split) + "\n")
    if parts:  # CUB's layout: 15 parts per image (3 here), listed image by image; invisible ones at 0 0
        os.makedirs(root / "parts", exist_ok=True)
        (root / "parts" / "part_locs.txt").write_text("".join(
            f"{i} {p} {0.0 if (i + p) % 4 == 0 else i + p / 2} {0.0 if (i + p) % 4 == 0 else 2 * p} "
            f"{0 if (i + p) % 4 == 0 else 1}\n" for i in range(1, img_id + 1) for p in (1, 2, 3)))
        boxes = "".join(f"{i} {i}.0 1.0 5.0 {i + 2}.0\n" for i in range(1, img_id + 1))
        (root / "bounding_boxes.txt").write_text(boxes)
    return lines_img


def test_cub_layout_with_waterbird200(tmp_path):
    _cub(tmp_path)
    dd = B.load_cub(str(tmp_path))
    assert list(dd) == ["train", "test", "test_waterbird200"]
    assert [len(dd[s]) for s in dd] == [9, 3, 3]
    assert dd["train"].features["label"].names == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    assert _labels(dd["test"]) == [0, 1, 2] == _labels(dd["test_waterbird200"])
    paths = dd["test_waterbird200"].cast_column("image", Image(decode=False))["image"]
    assert all(B.WATERBIRDS_SUBDIR in p["path"] for p in paths)
    ref = dd["test"].cast_column("image", Image(decode=False))["image"]
    assert [os.path.basename(p["path"]) for p in paths] == [os.path.basename(p["path"]) for p in ref]
    _assert_lazy_paths(dd["train"])


def test_cub_keypoints_and_boxes(tmp_path):
    _cub(tmp_path)
    dd = B.load_cub(str(tmp_path))
    test_ids = [4, 8, 12]  # the fourth image of each class is a test image
    for split in ("test", "test_waterbird200"):  # Waterbird200 shares the test split's annotations
        kp, box = dd[split]["keypoints"], dd[split]["bbox"]
        for got, i in zip(kp, test_ids):
            expected = [[0.0, 0.0, 0.0] if (i + p) % 4 == 0 else [i + p / 2, 2.0 * p, 1.0] for p in (1, 2, 3)]
            assert got == expected
        assert box == [[float(i), 1.0, 5.0, float(i + 2)] for i in test_ids]
    assert dd["train"]["bbox"][0] == [1.0, 1.0, 5.0, 3.0]
    assert "keypoints" not in B.load_cub(str(tmp_path), keypoints=False)["train"].column_names
    os.remove(tmp_path / "bounding_boxes.txt")
    assert "keypoints" not in B.load_cub(str(tmp_path))["train"].column_names  # auto: only with both files
    with pytest.raises(FileNotFoundError, match="bounding_boxes.txt"):
        B.load_cub(str(tmp_path), keypoints=True)
    _cub(tmp_path)
    (tmp_path / "parts" / "part_locs.txt").write_text("1 1 3.0 4.0\n")
    with pytest.raises(ValueError, match="part_locs.txt:1"):
        B.load_cub(str(tmp_path))
    _cub(tmp_path)
    lines = (tmp_path / "parts" / "part_locs.txt").read_text().splitlines()
    (tmp_path / "parts" / "part_locs.txt").write_text("\n".join(lines[:-1]) + "\n")  # image 12 lacks part 3
    with pytest.raises(ValueError, match="image id 12"):
        B.load_cub(str(tmp_path))


def test_cub_options(tmp_path):
    _cub(tmp_path, waterbird200=False, masks=True)
    dd = B.load_cub(str(tmp_path), mask_subdir="segmentations", validation_fraction=1 / 3)
    assert list(dd) == ["train", "validation", "test"]
    assert len(dd["train"]) == 6 and len(dd["validation"]) == 3
    assert sorted(_labels(dd["validation"])) == [0, 1, 2]  # stratified
    assert "mask" in dd["test"].column_names
    with pytest.raises(FileNotFoundError, match=B.WATERBIRDS_SUBDIR):
        B.load_cub(str(tmp_path), ood_subdir=B.WATERBIRDS_SUBDIR)


def test_cub_errors(tmp_path):
    lines = _cub(tmp_path)
    os.remove(tmp_path / "train_test_split.txt")
    with pytest.raises(FileNotFoundError, match="train_test_split.txt"):
        B.load_cub(str(tmp_path))
    _cub(tmp_path)
    rel = lines[4].split()[1]
    os.remove(tmp_path / "images" / rel)
    with pytest.raises(FileNotFoundError, match=os.path.basename(rel)):
        B.load_cub(str(tmp_path))
    _cub(tmp_path)
    (tmp_path / "image_class_labels.txt").write_text("1\n")
    with pytest.raises(ValueError, match="image_class_labels.txt"):
        B.load_cub(str(tmp_path))


# --------------------------------------------------------------------------------------------
# ImageNet-9
# --------------------------------------------------------------------------------------------
IN9_CLASSES = ["00_dog", "01_bird", "02_wheeled vehicle", "03_reptile", "04_carnivore", "05_insect",
               "06_musical instrument", "07_primate", "08_fish"]


def _in9(root, variants=("original", "mixed_same", "mixed_rand", "only_fg")):
    for v in variants:
        for c in IN9_CLASSES:
            for i in range(2):
                _img(str(root / v / "val" / c / f"n0000_{i}.JPEG"), fmt="JPEG")
    os.makedirs(root / "fg_mask" / "val" / "00_dog")
    np.save(root / "fg_mask" / "val" / "00_dog" / "m.npy", np.zeros((2, 2)))


def test_imagenet9_variants(tmp_path):
    _in9(tmp_path)
    dd = B.load_imagenet9(str(tmp_path))
    assert sorted(dd) == ["mixed_rand", "mixed_same", "only_fg", "original"]  # fg_mask skipped
    for v, ds in dd.items():
        assert len(ds) == 18 and set(ds["variant"]) == {v}
        assert sorted(set(_labels(ds))) == list(range(9))
    names = dd["original"].features["label"].names
    assert names[0] == "dog" and names[2] == "wheeled vehicle" and names[8] == "fish"
    dd2 = B.load_imagenet9(str(tmp_path), variants=["original", "mixed_rand"])
    assert list(dd2) == ["original", "mixed_rand"]
    with pytest.raises(FileNotFoundError, match="no_fg"):
        B.load_imagenet9(str(tmp_path), variants=["no_fg"])
    with pytest.raises(FileNotFoundError, match="missing_root"):
        B.load_imagenet9(str(tmp_path / "missing_root"))


def test_imagenet_to_in9_index(tmp_path):
    p = tmp_path / "in_to_in9.json"
    p.write_text(json.dumps({"0": -1, "1": 8, "2": 0}))
    assert B.imagenet_to_in9_index(str(p)) == [-1, 8, 0]


# --------------------------------------------------------------------------------------------
# SIIM-ACR
# --------------------------------------------------------------------------------------------
def _siim(root):
    """train: 3 neg + 2 pos; test: neg+tube a,b / neg no-tube c / pos+tube d / pos no-tube e,f."""
    tubes = {"a": 1, "b": 1, "c": 0, "d": 1, "e": 0, "f": 0}
    labels = {"a": 0, "b": 0, "c": 0, "d": 1, "e": 1, "f": 1}
    for i in range(5):
        _img(str(root / "train_set" / str(int(i >= 3)) / f"tr{i}.png"), mode="L")
    for k, lab in labels.items():
        _img(str(root / "full_test_set" / str(lab) / f"{k}.png"), mode="L")
        robust = (lab == 0) == (tubes[k] == 1)
        _img(str(root / ("robust_test_set" if robust else "non_robust_test_set") / str(lab) / f"{k}.png"), mode="L")
    for k in list(labels) + [f"tr{i}" for i in range(5)]:
        _img(str(root / "all_masks" / f"{k}.png"), mode="L", value=0)
    with open(root / "cxr_tube_dict.pkl", "wb") as f:
        pickle.dump(tubes, f)
    return tubes, labels


def test_siim_acr_layout(tmp_path):
    tubes, labels = _siim(tmp_path)
    dd = B.load_siim_acr(str(tmp_path), with_masks=True)
    assert list(dd) == ["train", "test", "test_robust", "test_non_robust"]
    assert [len(dd[s]) for s in dd] == [5, 6, 4, 2]
    f = dd["test"].features
    assert f["label"].names == ["no_pneumothorax", "pneumothorax"]
    assert f["group"].names[2] == "positive_no_tube"
    assert set(dd["train"]["group"]) == {-1} and set(dd["train"]["tube"]) == {-1}
    test = dd["test"]
    ids = [os.path.splitext(os.path.basename(p["path"]))[0]
           for p in test.cast_column("image", Image(decode=False))["image"]]
    for i, t, g, y in zip(ids, test["tube"], test["group"], test["label"]):
        assert y == labels[i] and t == tubes[i] and g == 2 * labels[i] + tubes[i]
    assert sorted(set(dd["test_robust"]["group"])) == [1, 2]  # neg+tube, pos without tube
    assert sorted(set(dd["test_non_robust"]["group"])) == [0, 3]
    assert "mask" in dd["train"].column_names


def test_siim_acr_tube_from_folders_and_errors(tmp_path):
    tubes, labels = _siim(tmp_path)
    os.remove(tmp_path / "cxr_tube_dict.pkl")
    dd = B.load_siim_acr(str(tmp_path))
    assert sorted(set(dd["test"]["group"])) == [0, 1, 2, 3]
    assert sorted(set(dd["test_robust"]["group"])) == [1, 2]
    (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="bad.pkl"):
        B.load_siim_acr(str(tmp_path), tube_annotation_file=str(tmp_path / "bad.pkl"))
    with pytest.raises(FileNotFoundError, match="absent.pkl"):
        B.load_siim_acr(str(tmp_path), tube_annotation_file=str(tmp_path / "absent.pkl"))
    os.remove(tmp_path / "all_masks" / "e.png")
    with pytest.raises(FileNotFoundError, match="e.png"):
        B.load_siim_acr(str(tmp_path), with_masks=True)
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        B.load_siim_acr(str(tmp_path / "elsewhere"))
    os.rename(tmp_path / "train_set", tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="train_set"):
        B.load_siim_acr(str(tmp_path))


def test_siim_acr_dicom(tmp_path):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def write_dcm(path, value):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.Rows, ds.Columns = 8, 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = np.full((8, 8), value, np.uint8).tobytes()
        ds.save_as(path, enforce_file_format=True)

    for split in ("train_set", "full_test_set"):
        for lab in (0, 1):
            write_dcm(str(tmp_path / split / str(lab) / f"{split}_{lab}.dcm"), 40 + 100 * lab)
    dd = B.load_siim_acr(str(tmp_path), dicom_cache_dir=str(tmp_path / "png"))
    im = dd["train"][1]["image"]
    assert im.size == (8, 8) and np.asarray(im).max() == 140


# --------------------------------------------------------------------------------------------
# ImageNet (imagefolder) and generic
# --------------------------------------------------------------------------------------------
def test_imagenet_imagefolder(tmp_path):
    wnids = ["n01440764", "n01443537", "n01484850"]
    for split, n in (("train", 3), ("val", 2)):
        for w in wnids:
            for i in range(n):
                _img(str(tmp_path / "data" / split / w / f"{w}_{i}.JPEG"), fmt="JPEG")
    dd = B.load_imagenet(str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    assert set(dd) == {"train", "validation", "test"}
    assert len(dd["train"]) == 9 and len(dd["validation"]) == 6 and len(dd["test"]) == 6
    assert dd["train"].features["label"].names == wnids
    assert isinstance(dd["train"].features["image"], Image)
    for ds in (dd["train"], dd["validation"]):
        for p, y in zip(ds.cast_column("image", Image(decode=False))["image"], ds["label"]):
            assert os.path.basename(os.path.dirname(p["path"])) == wnids[y]
    with pytest.raises(FileNotFoundError, match="val"):
        B.load_imagenet(str(tmp_path / "data"), validation_subdir="val_missing")


def _generic_folder(folder, n=4):
    rows = []
    for i in range(n):
        _img(str(folder / f"img{i}.png"))
        rows.append({"file_name": f"img{i}.png", "species": ["heron", "sparrow"][i % 2], "bg": i // 2})
    return rows


def _write_metadata(folder, rows, fmt):
    if fmt == "csv":
        with open(folder / "metadata.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["file_name", "species", "bg"])
            w.writeheader()
            w.writerows(rows)
    else:
        with open(folder / "metadata.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_generic_imagefolder_metadata(tmp_path, fmt):
    for split in ("tr", "va"):
        _write_metadata(tmp_path / split, _generic_folder(tmp_path / split), fmt)
    dd = B.load_generic(train_dir=str(tmp_path / "tr"), validation_dir=str(tmp_path / "va"),
                        label_column_name="species", group_column_name="bg", cache_dir=str(tmp_path / "c"))
    assert list(dd) == ["train", "validation"]
    assert set(dd["train"].column_names) == {"image", "label", "group"}
    assert dd["train"].features["label"].names == ["heron", "sparrow"]
    assert dd["validation"].features["label"].names == ["heron", "sparrow"]
    assert _labels(dd["train"]) == [0, 1, 0, 1]
    assert sorted(dd["train"]["group"]) == [0, 0, 1, 1]
    assert dd["train"][0]["image"].size == (8, 8)
    with pytest.raises(ValueError, match="no column 'species_name'"):
        B.load_generic(train_dir=str(tmp_path / "tr"), label_column_name="species_name",
                       cache_dir=str(tmp_path / "c"))
    with pytest.raises(FileNotFoundError, match="not_here"):
        B.load_generic(train_dir=str(tmp_path / "not_here"))


def test_generic_class_folders_and_registry(tmp_path):
    for split in ("train", "val"):
        for c in ("a", "b"):
            for i in range(2):
                _img(str(tmp_path / "root" / split / c / f"{i}.png"))
    dd = B.load_benchmark("generic", str(tmp_path / "root"), cache_dir=str(tmp_path / "c"))
    assert set(dd) == {"train", "validation"} and dd["train"].features["label"].names == ["a", "b"]
    assert set(B.BENCHMARKS) >= {"waterbirds", "metashift", "cub", "imagenet9", "siim_acr", "imagenet", "synthetic"}
    _metashift(tmp_path / "ms")
    assert isinstance(B.load_benchmark("metashift", str(tmp_path / "ms")), DatasetDict)
    with pytest.raises(ValueError, match="unknown benchmark"):
        B.load_benchmark("mnist", str(tmp_path))
    syn = B.load_benchmark("synthetic", None, num_train=8, num_validation=4, num_test=4, image_size=28)
    assert len(syn["train"]) == 8
