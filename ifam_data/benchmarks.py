"""Loaders for the benchmarks of the iFAM paper, as ``datasets.DatasetDict`` objects.

Every loader reads the raw layout the benchmark's authors distribute (as used by the iFAM
authors' code) and returns splits named ``train`` / ``validation`` / ``test`` (when the layout
has them) plus extra evaluation splits where the benchmark defines them. Images are stored as
file paths in a ``datasets.Image()`` column (decoded lazily); ``label`` is a ``ClassLabel`` with
names; ``group`` (a ``ClassLabel``, hence an int) and ``place`` / ``background`` columns are
present where the benchmark defines them.

Errors: a missing folder / annotation file / referenced image raises ``FileNotFoundError``
naming the path; a malformed annotation (missing column, bad line) raises ``ValueError`` naming
the file. ``verify=True`` (or :func:`verify_images`) additionally decodes every image and raises
naming the first unreadable file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import re
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image as PILImage

import datasets
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from .verify import verify_images  # re-exported; the checks live in ifam_data/verify.py

__all__ = [
    "BENCHMARKS",
    "IMAGE_EXTENSIONS",
    "imagenet_to_in9_index",
    "load_benchmark",
    "load_cub",
    "load_generic",
    "load_imagenet",
    "load_imagenet9",
    "load_metashift",
    "load_siim_acr",
    "load_waterbirds",
    "verify_images",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

WATERBIRDS_SUBDIR = "waterbird_complete95_forest2water2"


# ============================================================================================
# shared helpers
# ============================================================================================
def _require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} folder not found: {path}")
    return path


def _require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    return path


def _check_files_exist(paths: Iterable[str], referenced_by: str) -> None:
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"image file not found: {missing[0]}{more}; referenced by {referenced_by}")


def _is_image(name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    return name.lower().endswith(tuple(extensions)) and not name.startswith(".")


def _list_images(folder: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[str]:
    """All image files below ``folder`` (recursive), sorted, absolute."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [os.path.join(dirpath, f) for f in filenames if _is_image(f, extensions)]
    return sorted(os.path.abspath(p) for p in out)


def _subdirs(folder: str) -> List[str]:
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and not d.startswith("."))


def _read_csv(path: str, required: Sequence[str]) -> List[Dict[str, str]]:
    _require_file(path, "metadata")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found columns {header}")
        rows = [{k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in r.items() if k is not None}
                for r in reader]
    return rows


def _read_id_table(path: str, n_fields: int, what: str) -> Dict[str, List[str]]:
    """Whitespace-separated ``<id> <field> ...`` file (CUB style) -> {id: [fields]}."""
    _require_file(path, what)
    out: Dict[str, List[str]] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split(None, n_fields)
            if len(parts) != n_fields + 1:
                raise ValueError(f"{path}:{lineno}: expected {n_fields + 1} fields, got {line.strip()!r}")
            out[parts[0]] = [p.strip() for p in parts[1:]]
    return out


def _to_int(value: str, path: str, column: str) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise ValueError(f"{path}: column {column!r} has a non-integer value {value!r}") from None


def _make_dataset(columns: Dict[str, list], features: Features, split: Optional[str] = None) -> Dataset:
    """Dataset from python columns, with the given features (image columns hold file paths)."""
    features = Features({k: v for k, v in features.items() if k in columns})
    return Dataset.from_dict(columns, features=features, split=split)


def _carve_validation(dd: DatasetDict, fraction: float, source: str, seed: int,
                      stratify_by: Optional[str] = "label") -> DatasetDict:
    """Move a stratified ``fraction`` of split ``source`` into a new ``validation`` split."""
    if not fraction:
        return dd
    if "validation" in dd:
        raise ValueError("the layout already provides a validation split; do not pass validation_fraction")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {fraction}")
    if source not in dd:
        raise ValueError(f"cannot carve a validation split from missing split {source!r}")
    ds = dd[source]
    strat = stratify_by if stratify_by in ds.column_names else None
    try:
        parts = ds.train_test_split(test_size=fraction, seed=seed, stratify_by_column=strat)
    except ValueError:  # too few samples for stratification
        parts = ds.train_test_split(test_size=fraction, seed=seed)
    out = dict(dd)
    out[source] = parts["train"]
    out["validation"] = parts["test"]
    standard = ("train", "validation", "test")
    order = [s for s in standard if s in out] + [s for s in out if s not in standard]
    return DatasetDict({s: out[s] for s in order})


def _finish(dd: DatasetDict, verify: bool) -> DatasetDict:
    if verify:
        verify_images(dd)
    return dd


# ============================================================================================
# Waterbirds
# ============================================================================================
WATERBIRDS_CLASSES = ["landbird", "waterbird"]
WATERBIRDS_PLACES = ["land", "water"]
WATERBIRDS_GROUPS = ["landbird_on_land", "landbird_on_water", "waterbird_on_land", "waterbird_on_water"]


def load_waterbirds(data_dir: str, image_subdir: str = WATERBIRDS_SUBDIR, mask_subdir: Optional[str] = None,
                    verify: bool = False) -> DatasetDict:
    """Waterbirds (Sagawa et al.) from its ``metadata.csv`` layout.

    ``data_dir`` is either the Waterbirds folder itself (holding ``metadata.csv``) or the CUB root
    containing ``image_subdir`` (``waterbird_complete95_forest2water2``). ``metadata.csv`` has
    ``img_id,img_filename,y,split,place,place_filename``; ``split`` 0/1/2 -> train/validation/test,
    ``group = 2 * y + place``. ``mask_subdir`` (e.g. ``"segmentations"``, resolved against the
    Waterbirds folder, then its parent) adds a ``mask`` column with the CUB segmentation PNGs.
    """
    _require_dir(data_dir, "Waterbirds data")
    root = data_dir
    if not os.path.isfile(os.path.join(root, "metadata.csv")):
        candidate = os.path.join(data_dir, image_subdir)
        if os.path.isfile(os.path.join(candidate, "metadata.csv")):
            root = candidate
        else:
            raise FileNotFoundError(
                f"metadata file not found: {os.path.join(data_dir, 'metadata.csv')} "
                f"(nor {os.path.join(candidate, 'metadata.csv')})"
            )
    meta_path = os.path.join(root, "metadata.csv")
    rows = _read_csv(meta_path, ["img_filename", "y", "split", "place"])
    mask_root = _resolve_mask_root(root, mask_subdir) if mask_subdir else None

    split_names = {0: "train", 1: "validation", 2: "test"}
    cols: Dict[str, Dict[str, list]] = {
        s: {"image": [], "label": [], "place": [], "group": []} for s in split_names.values()
    }
    for r in rows:
        s = _to_int(r["split"], meta_path, "split")
        if s not in split_names:
            raise ValueError(f"{meta_path}: column 'split' must be 0, 1 or 2, got {r['split']!r}")
        y = _to_int(r["y"], meta_path, "y")
        place = _to_int(r["place"], meta_path, "place")
        if y not in (0, 1) or place not in (0, 1):
            raise ValueError(f"{meta_path}: 'y' and 'place' must be 0/1, got y={r['y']!r}, place={r['place']!r}")
        c = cols[split_names[s]]
        c["image"].append(os.path.abspath(os.path.join(root, r["img_filename"])))
        c["label"].append(y)
        c["place"].append(place)
        c["group"].append(2 * y + place)
        if mask_root is not None:
            c.setdefault("mask", []).append(
                os.path.abspath(os.path.join(mask_root, os.path.splitext(r["img_filename"])[0] + ".png")))
    features = Features({
        "image": Image(),
        "label": ClassLabel(names=WATERBIRDS_CLASSES),
        "place": ClassLabel(names=WATERBIRDS_PLACES),
        "group": ClassLabel(names=WATERBIRDS_GROUPS),
        "mask": Image(),
    })
    out = {}
    for split, c in cols.items():
        _check_files_exist(c["image"], meta_path)
        if "mask" in c:
            _check_files_exist(c["mask"], f"mask_subdir={mask_subdir!r}")
        out[split] = _make_dataset(c, features, split)
    return _finish(DatasetDict(out), verify)


def _resolve_mask_root(root: str, mask_subdir: str) -> str:
    if os.path.isabs(mask_subdir):
        return _require_dir(mask_subdir, "mask")
    for base in (root, os.path.dirname(os.path.abspath(root))):
        if os.path.isdir(os.path.join(base, mask_subdir)):
            return os.path.join(base, mask_subdir)
    raise FileNotFoundError(f"mask folder not found: {os.path.join(root, mask_subdir)}")


# ============================================================================================
# MetaShift cat-vs-dog
# ============================================================================================
_CONTEXT_RE = re.compile(r"^(?P<cls>.*?)\((?P<ctx>.*)\)$")
_METASHIFT_VALIDATION_DIRS = ("val", "validation", "val_out_of_domain")


def load_metashift(data_dir: str, train_subdir: str = "train", test_subdir: str = "test",
                   validation_subdir: Optional[str] = None, validation_fraction: float = 0.0,
                   validation_source: str = "test", seed: int = 0, verify: bool = False) -> DatasetDict:
    """MetaShift cat-vs-dog (``MetaDatasetCatDog``) from its folder layout.

    Layout: ``<split>/<class>/<class>(<context>)/*.jpg``, e.g. ``train/cat/cat(sofa)/``,
    ``train/dog/dog(bench)/``, ``test/cat/cat(shelf)/``. Class = first-level folder, context = the
    name in parentheses of the second-level folder (``place`` column). ``group`` enumerates the
    (class, context) pairs of all splits, sorted by class then context; names are ``cat(sofa)``...
    A validation folder (``validation_subdir`` or the first present of ``val``, ``validation``,
    ``val_out_of_domain``) becomes the ``validation`` split; otherwise ``validation_fraction`` > 0
    carves a stratified validation split out of ``validation_source`` (DISC used 15% of test).
    """
    _require_dir(data_dir, "MetaShift data")
    split_dirs = {"train": _require_dir(os.path.join(data_dir, train_subdir), "MetaShift train")}
    if validation_subdir is not None:
        split_dirs["validation"] = _require_dir(os.path.join(data_dir, validation_subdir), "MetaShift validation")
    else:
        for cand in _METASHIFT_VALIDATION_DIRS:
            if os.path.isdir(os.path.join(data_dir, cand)):
                split_dirs["validation"] = os.path.join(data_dir, cand)
                break
    split_dirs["test"] = _require_dir(os.path.join(data_dir, test_subdir), "MetaShift test")

    classes = sorted({c for d in split_dirs.values() for c in _subdirs(d)})
    if not classes:
        raise FileNotFoundError(f"no class folders found in {split_dirs['train']}")
    records: Dict[str, List[Tuple[str, int, str]]] = {}
    for split, d in split_dirs.items():
        recs = []
        for ci, cls in enumerate(classes):
            cdir = os.path.join(d, cls)
            if not os.path.isdir(cdir):
                continue
            for path in _list_images(cdir):
                rel = os.path.relpath(path, cdir).split(os.sep)
                if len(rel) == 1:
                    context = ""
                else:
                    m = _CONTEXT_RE.match(rel[0])
                    context = m.group("ctx") if m else rel[0]
                recs.append((path, ci, context))
        if not recs:
            raise FileNotFoundError(f"no images found in MetaShift {split} folder: {d}")
        records[split] = recs
    pairs = sorted({(ci, ctx) for recs in records.values() for _, ci, ctx in recs})
    group_of = {p: i for i, p in enumerate(pairs)}
    group_names = [f"{classes[ci]}({ctx})" if ctx else classes[ci] for ci, ctx in pairs]
    features = Features({
        "image": Image(),
        "label": ClassLabel(names=classes),
        "place": Value("string"),
        "group": ClassLabel(names=group_names),
    })
    out = {}
    for split in ("train", "validation", "test"):
        if split not in records:
            continue
        recs = records[split]
        out[split] = _make_dataset({
            "image": [r[0] for r in recs],
            "label": [r[1] for r in recs],
            "place": [r[2] for r in recs],
            "group": [group_of[(r[1], r[2])] for r in recs],
        }, features, split)
    dd = _carve_validation(DatasetDict(out), validation_fraction, validation_source, seed, "group")
    return _finish(dd, verify)


# ============================================================================================
# CUB-200-2011 (+ Waterbird200 OOD test split)
# ============================================================================================
def load_cub(data_dir: str, image_subdir: str = "images", ood_subdir: Optional[str] = "auto",
             ood_split_name: str = "test_waterbird200", mask_subdir: Optional[str] = None,
             validation_fraction: float = 0.0, seed: int = 0, verify: bool = False,
             keypoints: Optional[bool] = None) -> DatasetDict:
    """CUB-200-2011 from its official layout, with Waterbird200 as an extra OOD test split.

    ``data_dir`` (``CUB_200_2011``) holds ``images.txt`` (``<id> <relpath>``),
    ``image_class_labels.txt`` (``<id> <class id>``), ``train_test_split.txt`` (``<id> <1=train>``),
    ``classes.txt`` (``<class id> <NNN.Name>``) and ``images/<NNN.Name>/*.jpg``. Waterbird200 is the
    CUB *test* file list read from ``ood_subdir`` (same relative paths; the Waterbirds tarball
    ``waterbird_complete95_forest2water2`` extracted into the CUB root, as in the authors' repo);
    ``"auto"`` adds it when that folder exists, ``None`` disables it. If the OOD folder holds a
    Waterbirds ``metadata.csv`` its ``place`` (0 land, 1 water) is added to the OOD split.
    ``mask_subdir="segmentations"`` adds a ``mask`` column (``segmentations/<NNN.Name>/*.png``).
    Class names drop the ``NNN.`` prefix. The official split has no validation set:
    ``validation_fraction`` > 0 carves one (stratified by class) out of train.

    ``keypoints`` (default: when ``parts/part_locs.txt`` and ``bounding_boxes.txt`` both exist; ``True`` requires
    them) adds ``keypoints``, the 15 part locations ``[x, y, visible]`` of ``part_locs.txt`` (``<id> <part id> <x> <y>
    <visible>``) in part-id order, and ``bbox``, ``[x, y, width, height]`` of ``bounding_boxes.txt``, in pixels of
    the original image. Waterbird200 shares the test split's annotations (the same birds at the same places).
    """
    _require_dir(data_dir, "CUB data")
    images = _read_id_table(os.path.join(data_dir, "images.txt"), 1, "CUB images list")
    labels = _read_id_table(os.path.join(data_dir, "image_class_labels.txt"), 1, "CUB class labels")
    is_train = _read_id_table(os.path.join(data_dir, "train_test_split.txt"), 1, "CUB train/test split")
    classes = _read_id_table(os.path.join(data_dir, "classes.txt"), 1, "CUB classes")
    image_root = _require_dir(os.path.join(data_dir, image_subdir), "CUB images")

    class_ids = sorted(classes, key=lambda x: int(x))
    class_index = {cid: i for i, cid in enumerate(class_ids)}
    class_names = [re.sub(r"^\d+\.", "", classes[cid][0]) for cid in class_ids]
    for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
        missing = [i for i in images if i not in table]
        if missing:
            raise ValueError(f"{os.path.join(data_dir, name)}: no entry for image id {missing[0]}")

    mask_root = _resolve_mask_root(data_dir, mask_subdir) if mask_subdir else None
    ood_root = None
    if ood_subdir == "auto":
        cand = os.path.join(data_dir, WATERBIRDS_SUBDIR)
        ood_root = cand if os.path.isdir(cand) else None
    elif ood_subdir:
        ood_root = _require_dir(os.path.join(data_dir, ood_subdir), "Waterbird200 (OOD)")

    annotations = _read_cub_annotations(data_dir, images, keypoints)
    split_cols: Dict[str, Dict[str, list]] = {"train": {"image": [], "label": []}, "test": {"image": [], "label": []}}
    test_rel: List[Tuple[str, int]] = []
    for img_id in sorted(images, key=lambda x: int(x) if x.isdigit() else x):
        rel = images[img_id][0]
        cid = labels[img_id][0]
        if cid not in class_index:
            raise ValueError(f"{os.path.join(data_dir, 'image_class_labels.txt')}: unknown class id {cid!r}")
        split = "train" if is_train[img_id][0] == "1" else "test"
        c = split_cols[split]
        c["image"].append(os.path.abspath(os.path.join(image_root, rel)))
        c["label"].append(class_index[cid])
        if mask_root is not None:
            c.setdefault("mask", []).append(os.path.abspath(os.path.join(mask_root, os.path.splitext(rel)[0] + ".png")))
        if annotations is not None:
            c.setdefault("keypoints", []).append(annotations[0][img_id])
            c.setdefault("bbox", []).append(annotations[1][img_id])
        if split == "test":
            test_rel.append((rel, class_index[cid]))

    features = Features({
        "image": Image(),
        "label": ClassLabel(names=class_names),
        "place": ClassLabel(names=WATERBIRDS_PLACES),
        "mask": Image(),
        "keypoints": datasets.List(datasets.List(Value("float32"), length=3)),
        "bbox": datasets.List(Value("float32"), length=4),
    })
    images_txt = os.path.join(data_dir, "images.txt")
    out = {}
    for split, c in split_cols.items():
        _check_files_exist(c["image"], images_txt)
        if "mask" in c:
            _check_files_exist(c["mask"], f"mask_subdir={mask_subdir!r}")
        out[split] = _make_dataset(c, features, split)
    if ood_root is not None:
        c = {"image": [os.path.abspath(os.path.join(ood_root, rel)) for rel, _ in test_rel],
             "label": [lab for _, lab in test_rel]}
        meta = os.path.join(ood_root, "metadata.csv")
        if os.path.isfile(meta):
            place = {r["img_filename"]: _to_int(r["place"], meta, "place")
                     for r in _read_csv(meta, ["img_filename", "place"])}
            if all(rel in place for rel, _ in test_rel):
                c["place"] = [place[rel] for rel, _ in test_rel]
        if mask_root is not None:
            c["mask"] = list(split_cols["test"]["mask"])
        if annotations is not None:
            c["keypoints"], c["bbox"] = list(split_cols["test"]["keypoints"]), list(split_cols["test"]["bbox"])
        _check_files_exist(c["image"], f"{images_txt} under {ood_root}")
        out[ood_split_name] = _make_dataset(c, features, ood_split_name)
    dd = DatasetDict(out)
    dd = _carve_validation(dd, validation_fraction, "train", seed, "label")
    return _finish(dd, verify)


def _read_cub_annotations(data_dir: str, images: Dict[str, List[str]], wanted: Optional[bool]):
    """({id: [[x, y, visible]] * P}, {id: [x, y, w, h]}) from CUB's part_locs.txt and bounding_boxes.txt, or None."""
    parts_path = os.path.join(data_dir, "parts", "part_locs.txt")
    boxes_path = os.path.join(data_dir, "bounding_boxes.txt")
    if wanted is False or (wanted is None and not (os.path.isfile(parts_path) and os.path.isfile(boxes_path))):
        return None
    boxes_raw = _read_id_table(boxes_path, 4, "CUB bounding boxes")
    _require_file(parts_path, "CUB part locations")
    points: Dict[str, Dict[int, List[float]]] = {}
    with open(parts_path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) != 5:
                    raise ValueError
                x, y, visible = float(fields[2]), float(fields[3]), float(fields[4])
                points.setdefault(fields[0], {})[int(fields[1])] = [x, y, 1.0 if visible > 0 else 0.0]
            except ValueError:
                raise ValueError(f"{parts_path}:{lineno}: expected '<image id> <part id> <x> <y> <visible>', "
                                 f"got {line.strip()!r}") from None
    part_ids = sorted({p for per_image in points.values() for p in per_image})
    keypoints, boxes = {}, {}
    for img_id in images:
        if img_id not in points or sorted(points[img_id]) != part_ids:
            raise ValueError(f"{parts_path}: image id {img_id} does not have all of the parts {part_ids}")
        if img_id not in boxes_raw:
            raise ValueError(f"{boxes_path}: no entry for image id {img_id}")
        keypoints[img_id] = [points[img_id][p] for p in part_ids]
        try:
            boxes[img_id] = [float(v) for v in boxes_raw[img_id]]
        except ValueError:
            raise ValueError(f"{boxes_path}: image id {img_id} has a non-numeric box {boxes_raw[img_id]}") from None
    return keypoints, boxes


# ============================================================================================
# ImageNet-9 Backgrounds Challenge
# ============================================================================================
def load_imagenet9(data_dir: str, variants: Optional[Sequence[str]] = None, subset: str = "val",
                   verify: bool = False) -> DatasetDict:
    """ImageNet-9 Backgrounds Challenge (Xiao et al.), evaluation only.

    Layout: ``<data_dir>/<variant>/<subset>/<NN_class>/*.JPEG`` with variants such as
    ``original``, ``mixed_same``, ``mixed_rand``, ``only_fg``, ``no_fg`` ... and class folders
    ``00_dog`` ... ``08_insect``. One split per variant (split name = variant); variant folders
    without images (e.g. ``fg_mask`` with .npy files) are skipped unless requested explicitly.
    Columns: ``image``, ``label`` (names without the ``NN_`` prefix, ordered by folder name),
    ``variant`` (string).
    """
    _require_dir(data_dir, "ImageNet-9")
    explicit = variants is not None
    candidates = list(variants) if explicit else _subdirs(data_dir)
    found: Dict[str, str] = {}
    for v in candidates:
        vdir = os.path.join(data_dir, v, subset)
        if explicit:
            _require_dir(vdir, f"ImageNet-9 variant {v!r}")
        elif not os.path.isdir(vdir):
            continue
        found[v] = vdir
    class_dirs = sorted({c for vdir in found.values() for c in _subdirs(vdir)})
    class_names = [re.sub(r"^\d+_", "", c) for c in class_dirs]
    features = Features({"image": Image(), "label": ClassLabel(names=class_names), "variant": Value("string")})
    out = {}
    for v, vdir in found.items():
        paths, labs = [], []
        for ci, cdir in enumerate(class_dirs):
            full = os.path.join(vdir, cdir)
            if os.path.isdir(full):
                imgs = _list_images(full)
                paths += imgs
                labs += [ci] * len(imgs)
        if not paths:
            if explicit:
                raise FileNotFoundError(f"no images found in ImageNet-9 variant folder: {vdir}")
            continue
        out[v] = _make_dataset({"image": paths, "label": labs, "variant": [v] * len(paths)}, features, v)
    if not out:
        raise FileNotFoundError(f"no ImageNet-9 variant folders with images found in {data_dir} "
                                f"(expected e.g. {os.path.join(data_dir, 'original', subset, '00_dog')})")
    return _finish(DatasetDict(out), verify)


def imagenet_to_in9_index(mapping_file: str) -> List[int]:
    """Read the Backgrounds Challenge ``in_to_in9.json`` (``{"<in1k idx>": <in9 idx or -1>}``)
    into a list ``m`` with ``m[in1k_index] = in9_index`` (-1 for classes outside IN-9)."""
    _require_file(mapping_file, "ImageNet -> IN-9 mapping")
    with open(mapping_file) as f:
        raw = json.load(f)
    try:
        n = max(int(k) for k in raw) + 1
        out = [-1] * n
        for k, v in raw.items():
            out[int(k)] = int(v)
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{mapping_file}: expected a JSON object of int -> int, {err}") from None
    return out


# ============================================================================================
# SIIM-ACR pneumothorax (chest-tube spurious cue)
# ============================================================================================
SIIM_CLASSES = ["no_pneumothorax", "pneumothorax"]
SIIM_GROUPS = ["negative_no_tube", "negative_tube", "positive_no_tube", "positive_tube"]


def _read_tube_annotations(path: str) -> Dict[str, int]:
    """Chest-tube annotation: the ``cxr_tube_dict.pkl`` pickle ``{image_id: 0/1}`` distributed by
    Saab et al. (spatial_specificity), or a ``.json`` object / ``.csv`` (``id,tube``) equivalent."""
    _require_file(path, "chest-tube annotation")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".pkl", ".pickle"):
            with open(path, "rb") as f:
                raw = pickle.load(f)  # the distributed format; only load files you trust
        elif ext == ".json":
            with open(path) as f:
                raw = json.load(f)
        elif ext == ".csv":
            rows = _read_csv(path, ["id", "tube"])
            raw = {r["id"]: r["tube"] for r in rows}
        else:
            raise ValueError(f"unsupported extension {ext!r} (use .pkl, .json or .csv)")
        if hasattr(raw, "to_dict"):  # pandas Series
            raw = raw.to_dict()
        return {str(k): int(float(v)) for k, v in dict(raw).items()}
    except ValueError as err:
        raise ValueError(f"{path}: cannot read chest-tube annotations: {err}") from None
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: cannot read chest-tube annotations: {err}") from None


def _siim_images(folder: str, dicom_cache: Optional[str]) -> List[Tuple[str, int, str]]:
    """(image path, label, image id) for ``folder/<0|1>/*.(dcm|png|jpg)``; DICOMs are converted."""
    recs = []
    for lab in ("0", "1"):
        d = os.path.join(folder, lab)
        if not os.path.isdir(d):
            continue
        for path in _list_images(d, IMAGE_EXTENSIONS + (".dcm",)):
            image_id = os.path.splitext(os.path.basename(path))[0]
            if path.lower().endswith(".dcm"):
                path = _dicom_to_png(path, dicom_cache)
            recs.append((path, int(lab), image_id))
    if not recs:
        raise FileNotFoundError(f"no images found in {folder}/0 or {folder}/1")
    return recs


def _dicom_to_png(path: str, cache_dir: Optional[str]) -> str:
    """Convert a DICOM to an 8-bit PNG once (cached); ``datasets.Image`` cannot decode DICOM."""
    if cache_dir is None:
        raise ValueError(f"DICOM file {path} needs a dicom_cache_dir for PNG conversion")
    key = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]
    out = os.path.join(cache_dir, f"{os.path.splitext(os.path.basename(path))[0]}_{key}.png")
    if os.path.isfile(out) and os.path.getmtime(out) >= os.path.getmtime(path):
        return out
    try:
        import pydicom
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading DICOM file {path} requires `pip install pydicom`") from err
    try:
        arr = pydicom.dcmread(path).pixel_array
    except Exception as err:
        raise ValueError(f"unreadable DICOM file: {path}: {err}") from err
    if arr.dtype != np.uint8:  # SIIM-ACR is 8-bit; rescale anything wider instead of wrapping
        arr = arr.astype(np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = ((arr - lo) / max(hi - lo, 1e-12) * 255.0 + 0.5).astype(np.uint8)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = out + f".tmp{os.getpid()}.png"
    PILImage.fromarray(arr).save(tmp)
    os.replace(tmp, out)
    return out


def load_siim_acr(data_dir: str, tube_annotation_file: Optional[str] = None, train_subdir: str = "train_set",
                  test_subdir: str = "full_test_set", robust_subdir: Optional[str] = "robust_test_set",
                  non_robust_subdir: Optional[str] = "non_robust_test_set", mask_subdir: str = "all_masks",
                  with_masks: bool = False, dicom_cache_dir: Optional[str] = None,
                  validation_fraction: float = 0.0, seed: int = 0, verify: bool = False) -> DatasetDict:
    """SIIM-ACR pneumothorax, in the folders made by the authors' ``prepare_siim_acr.py``.

    Layout: ``train_set/{0,1}/<id>.dcm``, ``full_test_set/{0,1}/``, ``robust_test_set/{0,1}/``
    (negatives *with* chest tube + positives *without*), ``non_robust_test_set/{0,1}/`` and
    ``all_masks/<id>.png``; folder 1 = pneumothorax. Test images are those with a chest-tube
    annotation (``cxr_tube_dict.pkl``: ``{image_id: 1 if tube else 0}``; default: looked up as
    ``data_dir/cxr_tube_dict.pkl``). Without the file, tube presence of test images is derived
    from robust / non-robust membership. Columns: ``image``, ``label``, ``tube`` (1/0, -1 unknown
    e.g. train), ``group = 2 * label + tube`` (-1 when unknown): 0 negative without tube,
    1 negative with tube, 2 positive without tube (the worst group), 3 positive with tube.
    Splits: ``train``, ``test`` (full test set), ``test_robust``, ``test_non_robust`` (when
    present). DICOMs are converted once to PNG under ``dicom_cache_dir`` (default
    ``~/.cache/ifam/siim_acr_png/<hash of data_dir>``; needs ``pydicom``); PNG/JPEG folders are
    used as they are. ``with_masks`` adds the pneumothorax segmentation as ``mask``.
    """
    _require_dir(data_dir, "SIIM-ACR data")
    if dicom_cache_dir is None:
        digest = hashlib.sha1(os.path.abspath(data_dir).encode()).hexdigest()[:12]
        dicom_cache_dir = os.path.join(os.path.expanduser("~"), ".cache", "ifam", "siim_acr_png", digest)
    if tube_annotation_file is None:
        cand = os.path.join(data_dir, "cxr_tube_dict.pkl")
        tube_annotation_file = cand if os.path.isfile(cand) else None
    tube_of = _read_tube_annotations(tube_annotation_file) if tube_annotation_file else None

    folders = {"train": _require_dir(os.path.join(data_dir, train_subdir), "SIIM-ACR train"),
               "test": _require_dir(os.path.join(data_dir, test_subdir), "SIIM-ACR test")}
    for split, sub in (("test_robust", robust_subdir), ("test_non_robust", non_robust_subdir)):
        if sub and os.path.isdir(os.path.join(data_dir, sub)):
            folders[split] = os.path.join(data_dir, sub)
    recs = {split: _siim_images(folder, dicom_cache_dir) for split, folder in folders.items()}

    if tube_of is None:
        # robust set = negatives with tube + positives without; non-robust = the complement
        tube_of = {}
        for split, robust in (("test_robust", True), ("test_non_robust", False)):
            for _, lab, image_id in recs.get(split, []):
                tube_of[image_id] = int((lab == 0) == robust)

    features = Features({
        "image": Image(),
        "label": ClassLabel(names=SIIM_CLASSES),
        "tube": Value("int64"),
        "group": ClassLabel(names=SIIM_GROUPS),
        "mask": Image(),
    })
    out = {}
    for split, rs in recs.items():
        tube = [tube_of.get(image_id, -1) for _, _, image_id in rs]
        cols = {
            "image": [r[0] for r in rs],
            "label": [r[1] for r in rs],
            "tube": tube,
            "group": [2 * r[1] + t if t in (0, 1) else -1 for r, t in zip(rs, tube)],
        }
        if with_masks:
            mroot = _require_dir(os.path.join(data_dir, mask_subdir), "SIIM-ACR mask")
            cols["mask"] = [os.path.abspath(os.path.join(mroot, r[2] + ".png")) for r in rs]
            _check_files_exist(cols["mask"], f"mask_subdir={mask_subdir!r}")
        out[split] = _make_dataset(cols, features, split)
    dd = _carve_validation(DatasetDict(out), validation_fraction, "train", seed, "label")
    return _finish(dd, verify)


# ============================================================================================
# ImageNet-1K (image folder)
# ============================================================================================
def load_imagenet(data_dir: str, train_subdir: Optional[str] = "train", validation_subdir: Optional[str] = "val",
                  test_alias: bool = True, cache_dir: Optional[str] = None, verify: bool = False,
                  **load_kwargs) -> DatasetDict:
    """ImageNet-1K as an image folder: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``.

    Built with ``datasets``' ``imagefolder`` builder; ``label`` names are the sorted wnids (the
    standard 0..999 class order). ImageNet's labelled ``val`` set is the ``validation`` split; with
    ``test_alias`` it is also exposed as ``test`` (the paper reports on val).
    """
    _require_dir(data_dir, "ImageNet")
    data_files = {}
    for split, sub in (("train", train_subdir), ("validation", validation_subdir)):
        if sub is None:
            continue
        folder = os.path.abspath(os.path.join(data_dir, sub))
        _require_dir(folder, f"ImageNet {split}")
        data_files[split] = os.path.join(folder, "**")
    if not data_files:
        raise ValueError("at least one of train_subdir / validation_subdir must be given")
    dd = datasets.load_dataset("imagefolder", data_files=data_files, cache_dir=cache_dir, **load_kwargs)
    if test_alias and "validation" in dd and "test" not in dd:
        dd["test"] = dd["validation"]
    return _finish(dd, verify)


# ============================================================================================
# Generic (hub id or image folder with metadata)
# ============================================================================================
_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation", "eval": "validation"}


def load_generic(dataset_name: Optional[str] = None, train_dir: Optional[str] = None,
                 validation_dir: Optional[str] = None, image_column_name: str = "image",
                 label_column_name: str = "label", group_column_name: Optional[str] = None, *,
                 data_dir: Optional[str] = None, test_dir: Optional[str] = None,
                 cache_dir: Optional[str] = None, verify: bool = False, **load_kwargs) -> DatasetDict:
    """Any image-classification dataset: a Hub id or a local ``imagefolder``.

    * ``dataset_name``: ``datasets.load_dataset(dataset_name, **load_kwargs)`` (Hub id or a local
      script/folder path).
    * ``train_dir`` / ``validation_dir`` / ``test_dir`` (or a ``data_dir`` root with split
      sub-folders): the ``imagefolder`` builder; labels come from class sub-folders, or from a
      ``metadata.csv`` / ``metadata.jsonl`` (``file_name`` + extra columns) next to the images.

    The given image / label / group columns are renamed to ``image`` / ``label`` / ``group``;
    string labels (and groups) are class-encoded into ``ClassLabel``. Split names ``val`` /
    ``valid`` / ``dev`` become ``validation``.
    """
    if dataset_name is not None:
        dd = datasets.load_dataset(dataset_name, cache_dir=cache_dir, **load_kwargs)
        origin = dataset_name
    else:
        if data_dir is not None:
            _require_dir(data_dir, "image folder")
            dd = datasets.load_dataset("imagefolder", data_dir=data_dir, cache_dir=cache_dir, **load_kwargs)
            origin = data_dir
        else:
            data_files = {}
            for split, folder in (("train", train_dir), ("validation", validation_dir), ("test", test_dir)):
                if folder is None:
                    continue
                _require_dir(folder, f"{split} image")
                data_files[split] = os.path.join(os.path.abspath(folder), "**")
            if not data_files:
                raise ValueError("give dataset_name, data_dir, or at least one of train_dir/validation_dir/test_dir")
            dd = datasets.load_dataset("imagefolder", data_files=data_files, cache_dir=cache_dir, **load_kwargs)
            origin = ", ".join(f"{k}={v}" for k, v in data_files.items())
    if not isinstance(dd, DatasetDict):
        dd = DatasetDict({"train": dd})
    dd = DatasetDict({_SPLIT_ALIASES.get(k, k): v for k, v in dd.items()})
    renames = [(image_column_name, "image"), (label_column_name, "label")]
    if group_column_name is not None:
        renames.append((group_column_name, "group"))
    out = {}
    for split, ds in dd.items():
        for src, _ in renames:
            if src not in ds.column_names:
                raise ValueError(f"{origin}: split {split!r} has no column {src!r} "
                                 f"(columns: {ds.column_names}); set the matching *_column_name argument")
        for src, dst in renames:
            if src != dst:
                if dst in ds.column_names:
                    ds = ds.remove_columns(dst)
                ds = ds.rename_column(src, dst)
        if not isinstance(ds.features["image"], Image):
            ds = ds.cast_column("image", Image())
        out[split] = ds
    dd = DatasetDict(out)
    for col in ("label", "group"):
        first = next(iter(dd.values()))
        if col in first.column_names and not isinstance(first.features[col], ClassLabel):
            dd = _class_encode_consistently(dd, col)
    return _finish(dd, verify)


def _class_encode_consistently(dd: DatasetDict, column: str) -> DatasetDict:
    """ClassLabel-encode ``column`` with one sorted vocabulary shared by all splits."""
    values = sorted({v for ds in dd.values() for v in ds.unique(column)}, key=lambda v: (str(type(v)), v))
    names = [str(v) for v in values]
    feature = ClassLabel(names=names)
    index = {v: i for i, v in enumerate(values)}
    out = {}
    for split, ds in dd.items():
        ds = ds.map(lambda b: {column: [index[v] for v in b[column]]}, batched=True,
                    features=Features({**ds.features, column: feature}))
        out[split] = ds
    return DatasetDict(out)


# ============================================================================================
# registry
# ============================================================================================
def _load_synthetic(data_dir: Optional[str] = None, **kwargs) -> DatasetDict:
    from .synthetic import make_synthetic_benchmark

    kwargs.setdefault("cache_dir", data_dir)
    return make_synthetic_benchmark(**kwargs)


def _load_generic_dir(data_dir: Optional[str] = None, **kwargs) -> DatasetDict:
    if data_dir is not None and "dataset_name" not in kwargs and "train_dir" not in kwargs:
        kwargs["data_dir"] = data_dir
    return load_generic(**kwargs)


BENCHMARKS: Dict[str, Callable[..., DatasetDict]] = {
    "waterbirds": load_waterbirds,
    "metashift": load_metashift,
    "cub": load_cub,
    "imagenet9": load_imagenet9,
    "siim_acr": load_siim_acr,
    "imagenet": load_imagenet,
    "synthetic": _load_synthetic,
    "generic": _load_generic_dir,
}


def load_benchmark(name: str, data_dir: Optional[str] = None, **kwargs) -> DatasetDict:
    """``BENCHMARKS[name](data_dir, **kwargs)``. For ``"synthetic"`` ``data_dir`` is the optional
    cache folder; for ``"generic"`` it is an image-folder root (or pass ``dataset_name=...``)."""
    key = name.lower().replace("-", "_")
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; available: {sorted(BENCHMARKS)}")
    if data_dir is None and key not in ("synthetic", "generic"):
        raise ValueError(f"benchmark {name!r} needs data_dir")
    return BENCHMARKS[key](data_dir, **kwargs)
