"""
The front door, fuzzed (issue 17, item 3): generated bad inputs to the model, the image processor that iFAM folders
save and load (`IFAMImageProcessor` / `IFAMImageProcessorPil`), `pipeline("image-classification")` (transformers' stock
pipeline, with that processor inside) and the `ifam-explanation` pipeline. Each gets either a correct output or a
`ValueError`/`TypeError` whose message names the input at fault; never a crash from deep inside a library, never NaN
logits from finite input.

The image checks live in `modeling_ifam.image_processing_ifam` (`check_image`, `check_images`), called at the top of
`IFAMImageProcessor.preprocess` for every image. Cases marked `xfail(strict=True)` still fail inside transformers' stock
`ImageClassificationPipeline` before our code runs (it decodes files itself with `load_image`, and indexes the first
input of a list); the `ifam-explanation` pipeline handles the same inputs. When one starts passing, strict xfail fails:
move it to the passing cases.
"""

import math
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_model
from ifam_data import verify
from ifam_data.verify import image_error
from modeling_ifam import IFAMImageProcessor, IFAMImageProcessorPil, dinov2_image_processor
from modeling_ifam.image_processing_ifam import IFAMImageProcessorMixin, check_image
from modeling_ifam.pipeline_ifam import TASK

NUM_LABELS = 3  # conftest.tiny_config: cat, dog, bird
OK = "ok"
LABELS = {"cat", "dog", "bird"}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("fuzz_model")
    model.save_pretrained(path)  # with the remote code (register_for_auto_class)
    dinov2_image_processor(28).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_files")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(root / "good.png")
    (root / "random.png").write_bytes(rng.bytes(500))
    (root / "empty.png").write_bytes(b"")
    (root / "truncated.png").write_bytes((root / "good.png").read_bytes()[:300])
    Image.fromarray(rng.integers(0, 65536, (30, 30), dtype=np.uint16)).save(root / "16bit.png")
    Image.new("CMYK", (30, 30), (10, 200, 30, 40)).save(root / "cmyk.jpg")
    (root / "zero.png").write_bytes(_zero_sized_png())
    return root


def _zero_sized_png() -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------------------------------
# The model: IFAMForImageClassification.forward
# ---------------------------------------------------------------------------------------------------------------------
def _pixels(batch=2, height=28, width=28, dtype=torch.float32):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0)).to(dtype)


def _poisoned(value, image=1):
    pixels = _pixels()
    pixels[image, 1, 3, 4] = value
    return pixels


def _mask(poisoned_patch_visible: bool):
    """A token mask showing half the patches; the pixel `_poisoned` sets (row 3, column 4: patch 0) shown or not."""
    mask = torch.arange(16).repeat(2, 1) % 2 == 1
    mask[1, 0] = poisoned_patch_visible
    return mask


TYPE_MSG = r"`pixel_values` must be a floating-point tensor"
MODEL_CASES = {
    # pixel values
    "NaN pixel": (lambda: dict(pixel_values=_poisoned(math.nan)), (ValueError, r"non-finite .* images \[1\]")),
    "+Inf pixel": (lambda: dict(pixel_values=_poisoned(math.inf, 0)), (ValueError, r"non-finite .* images \[0\]")),
    "-Inf pixel": (lambda: dict(pixel_values=_poisoned(-math.inf)), (ValueError, r"non-finite .* images \[1\]")),
    "NaN pixel outside a given token_mask": (lambda: dict(pixel_values=_poisoned(math.nan), token_mask=_mask(False)),
                                             OK),  # stage 2 never sees it: the faithfulness guarantee
    "NaN pixel inside a given token_mask": (lambda: dict(pixel_values=_poisoned(math.nan), token_mask=_mask(True)),
                                            (ValueError, r"non-finite .* images \[1\]")),
    "NaN pixel with labels (training)": (lambda: dict(pixel_values=_poisoned(math.nan), labels=torch.tensor([0, 1])),
                                         (ValueError, r"`pixel_values` holds non-finite")),
    "finite 1e30 pixel": (lambda: dict(pixel_values=_poisoned(1e30)), (ValueError, r"`pixel_values` holds values up to "
                                                                                   r"1e\+30")),
    "largest accepted pixel 65504": (lambda: dict(pixel_values=_poisoned(65504.0)), OK),
    "uint8 pixels": (lambda: dict(pixel_values=(_pixels() * 60 + 128).clamp(0, 255).to(torch.uint8)),
                     (TypeError, TYPE_MSG + r".*torch.uint8")),
    "int64 pixels": (lambda: dict(pixel_values=_pixels().long()), (TypeError, TYPE_MSG + r".*torch.int64")),
    "bool pixels": (lambda: dict(pixel_values=_pixels() > 0), (TypeError, TYPE_MSG + r".*torch.bool")),
    "complex pixels": (lambda: dict(pixel_values=_pixels().to(torch.complex64)), (TypeError, TYPE_MSG)),
    "float64 pixels": (lambda: dict(pixel_values=_pixels(dtype=torch.float64)), OK),
    "float16 pixels": (lambda: dict(pixel_values=_pixels(dtype=torch.float16)), OK),
    "bfloat16 pixels": (lambda: dict(pixel_values=_pixels(dtype=torch.bfloat16)), OK),
    "numpy pixels": (lambda: dict(pixel_values=_pixels().numpy()), (ValueError, r"`pixel_values` must be a tensor")),
    "list pixels": (lambda: dict(pixel_values=_pixels().tolist()), (ValueError, r"`pixel_values` must be a tensor")),
    "3-D pixels (no batch)": (lambda: dict(pixel_values=_pixels()[0]), (ValueError, r"`pixel_values` .*\(3, 28, 28\)")),
    "empty batch": (lambda: dict(pixel_values=_pixels(batch=0)), (ValueError, r"`pixel_values` is an empty batch")),
    "empty batch with empty labels": (lambda: dict(pixel_values=_pixels(batch=0), labels=torch.zeros(0, dtype=int)),
                                      (ValueError, r"`pixel_values` is an empty batch")),
    "zero-sized images 0x0": (lambda: dict(pixel_values=_pixels(height=0, width=0)),
                              (ValueError, r"`pixel_values` of size 0x0")),
    "zero-height images 0x28": (lambda: dict(pixel_values=_pixels(height=0)),
                                (ValueError, r"`pixel_values` of size 0x28")),
    "1x1 images": (lambda: dict(pixel_values=_pixels(height=1, width=1)), (ValueError, r"`pixel_values` of size 1x1")),
    "10000x10 images": (lambda: dict(pixel_values=_pixels(batch=1, height=10000, width=10)),
                        (ValueError, r"`pixel_values` of size 10000x10")),
    "7000x14 images (patch multiple)": (lambda: dict(pixel_values=_pixels(batch=1, height=7000, width=14)), OK),
    "7x7 images": (lambda: dict(pixel_values=_pixels(height=7, width=7)), OK),
    "7x7 images with labels (training)": (lambda: dict(pixel_values=_pixels(height=7, width=7),
                                                       labels=torch.tensor([0, 1])),
                                          (ValueError, r"`pixel_values` of size 7x7 gives a 1x1 patch grid")),
    "grey (1-channel) images": (lambda: dict(pixel_values=_pixels()[:, :1]),
                                (ValueError, r"`pixel_values` has 1 channels")),
    "RGBA (4-channel) images": (lambda: dict(pixel_values=torch.cat([_pixels(), _pixels()[:, :1]], 1)),
                                (ValueError, r"`pixel_values` has 4 channels")),
    # label lists
    "labels shorter than the batch": (lambda: dict(pixel_values=_pixels(), labels=torch.tensor([0])),
                                      (ValueError, r"`labels` .*shape \(2,\), got torch.int64 of shape \(1,\)")),
    "labels longer than the batch": (lambda: dict(pixel_values=_pixels(), labels=torch.tensor([0, 1, 2])),
                                     (ValueError, r"`labels` .*of shape \(3,\)")),
    "labels out of range": (lambda: dict(pixel_values=_pixels(), labels=torch.tensor([0, 3])),
                            (ValueError, r"`labels` holds \[3\] outside \[0, num_labels=3\)")),
    "labels -100 (ignore index)": (lambda: dict(pixel_values=_pixels(), labels=torch.tensor([0, -100])),
                                   (ValueError, r"`labels` holds \[-100\]")),
    "float labels": (lambda: dict(pixel_values=_pixels(), labels=torch.tensor([0.0, 1.0])),
                     (ValueError, r"`labels` must be integer .*torch.float32")),
    "bool labels": (lambda: dict(pixel_values=_pixels(), labels=torch.tensor([True, False])),
                    (ValueError, r"`labels` must be integer .*torch.bool")),
    "one-hot labels": (lambda: dict(pixel_values=_pixels(), labels=torch.eye(3, dtype=int)[:2]),
                       (ValueError, r"`labels` .*shape \(2, 3\)")),
    "python list labels": (lambda: dict(pixel_values=_pixels(), labels=[0, 1]),
                           (TypeError, r"`labels` must be a tensor")),
    "string labels": (lambda: dict(pixel_values=_pixels(), labels=["cat", "dog"]),
                      (TypeError, r"`labels` must be a tensor")),
    "uint8 labels": (lambda: dict(pixel_values=_pixels(), labels=torch.tensor([0, 2], dtype=torch.uint8)), OK),
    # the other arguments
    "token_mask of the wrong shape": (lambda: dict(pixel_values=_pixels(), token_mask=torch.ones(2, 15, dtype=bool)),
                                      (ValueError, r"`token_mask` must have shape .* \(2, 16\), got \(2, 15\)")),
    "float token_mask": (lambda: dict(pixel_values=_pixels(), token_mask=torch.rand(2, 16)),
                         (ValueError, r"`token_mask` must be boolean")),
    "list token_mask": (lambda: dict(pixel_values=_pixels(), token_mask=[[True] * 16] * 2),
                        (TypeError, r"`token_mask` must be a boolean tensor")),
    "parts_to_drop out of range": (lambda: dict(pixel_values=_pixels(), parts_to_drop=[5]),
                                   (ValueError, r"`parts_to_drop` holds part indices \[5\]")),
    "parts_to_drop as a string": (lambda: dict(pixel_values=_pixels(), parts_to_drop="0"),
                                  (TypeError, r"`parts_to_drop` must be a list")),
    "unknown argument": (lambda: dict(pixel_values=_pixels(), pixel_mask=torch.ones(2, 28, 28)),
                         (TypeError, r"unexpected arguments \['pixel_mask'\]")),
}


@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_model_front_door(model, name):
    build, expected = MODEL_CASES[name]
    kwargs = build()
    if expected == OK:
        with torch.no_grad():
            outputs = model(**kwargs)
        batch = kwargs["pixel_values"].shape[0]
        assert outputs.logits.shape == (batch, NUM_LABELS) and torch.isfinite(outputs.logits).all()
        if "labels" in kwargs:
            assert torch.isfinite(outputs.loss)
    else:
        with pytest.raises(expected[0], match=expected[1]):
            model(**kwargs)


def test_model_random_inputs_never_give_nan_logits_from_finite_input(model):
    """40 generated batches: random sizes, dtypes, scales up to 1e6 and stray NaN/Inf, in eval and training mode."""
    rng = np.random.default_rng(17)
    outcomes = {"finite logits": 0, "non-finite input named": 0, "out-of-range input named": 0,
                "grid too small for the losses named": 0}
    for draw in range(40):
        batch, rows, columns = int(rng.integers(1, 4)), int(rng.integers(1, 6)), int(rng.integers(1, 6))
        dtype = [torch.float32, torch.float64, torch.float16, torch.bfloat16][draw % 4]
        scale = 10.0 ** rng.uniform(-8, 6)
        pixels = (torch.from_numpy(rng.standard_normal((batch, 3, 7 * rows, 7 * columns))) * scale).to(dtype)
        if rng.random() < 0.2:
            image = int(rng.integers(batch))
            pixels[image].view(-1)[int(rng.integers(pixels[image].numel()))] = float(rng.choice([np.nan, np.inf,
                                                                                                 -np.inf]))
        training = draw % 2 == 1  # training: with labels, the loss too
        labels = torch.from_numpy(rng.integers(0, NUM_LABELS, batch)) if training else None
        model.train(training)
        try:
            with torch.no_grad():
                outputs = model(pixel_values=pixels, labels=labels)
        except ValueError as err:
            if not torch.isfinite(pixels).all():
                bad = sorted({int(i) for i in (~torch.isfinite(pixels)).nonzero()[:, 0]})
                assert f"non-finite values (NaN or inf) in images {bad}" in str(err)
                outcomes["non-finite input named"] += 1
            elif pixels.abs().max() > 65504:
                assert "`pixel_values` holds values up to" in str(err)
                outcomes["out-of-range input named"] += 1
            else:
                assert training and min(rows, columns) < 4 and "patch grid" in str(err)
                outcomes["grid too small for the losses named"] += 1
            continue
        finally:
            model.eval()
        assert torch.isfinite(pixels).all() and pixels.abs().max() <= 65504
        assert torch.isfinite(outputs.logits).all(), (draw, dtype, scale)
        assert not training or torch.isfinite(outputs.loss), (draw, dtype, scale)
        outcomes["finite logits"] += 1
    assert all(outcomes.values()), outcomes  # every branch was drawn


# ---------------------------------------------------------------------------------------------------------------------
# Images: the IFAM image processor, pipeline("image-classification") and pipeline("ifam-explanation")
# ---------------------------------------------------------------------------------------------------------------------
def _array(shape, dtype=np.uint8, high=256):
    return np.random.default_rng(0).integers(0, high, shape).astype(dtype)


PIL_RANGE = r"The image to be converted to a PIL image contains values outside the range"
IMAGES = {  # name -> (image, expectation); expectation: OK or (exception, pattern or None)
    "1x1 image": (lambda: Image.new("RGB", (1, 1), (200, 10, 10)), OK),
    "10000x10 image": (lambda: Image.new("RGB", (10000, 10), (200, 10, 10)), OK),
    "10x10000 image": (lambda: Image.new("RGB", (10, 10000), (200, 10, 10)), OK),
    "16-bit image (I;16)": (lambda: Image.fromarray(_array((30, 30), np.uint16, 65536)), OK),
    "32-bit integer image (I)": (lambda: Image.fromarray(_array((30, 30), np.int32, 2 ** 31 - 1)), OK),
    "float image (F)": (lambda: Image.fromarray(np.random.default_rng(0).random((30, 30), np.float32)), OK),
    "CMYK image": (lambda: Image.new("CMYK", (30, 30), (10, 200, 30, 40)), OK),
    "RGBA image": (lambda: Image.new("RGBA", (30, 30), (10, 200, 30, 0)), OK),
    "palette image (P)": (lambda: Image.new("P", (30, 30), 3), OK),
    "1-bit image": (lambda: Image.new("1", (30, 30), 1), OK),
    "16-bit HWC array": (lambda: _array((30, 30, 3), np.uint16, 65536), (ValueError, PIL_RANGE + r" \[0, 255\]")),
    "int64 HWC array": (lambda: _array((30, 30, 3), np.int64), OK),
    "bool HWC array": (lambda: _array((30, 30, 3), np.uint8, 2).astype(bool), OK),
    "float64 HWC array in [0, 1]": (lambda: np.random.default_rng(0).random((30, 30, 3)), OK),
    "uint8 CHW tensor": (lambda: torch.from_numpy(_array((3, 30, 30))), OK),
    "NaN float array": (lambda: np.full((30, 30, 3), np.nan, np.float32),
                        (ValueError, r"^image holds 2700 NaN and 0 infinite values")),
    "Inf float array": (lambda: np.full((30, 30, 3), np.inf, np.float32),
                        (ValueError, r"^image holds 0 NaN and 2700 infinite values")),
    "NaN float tensor": (lambda: torch.full((3, 30, 30), math.nan), (ValueError, r"^image holds 2700 NaN")),
    "one NaN in a bfloat16 tensor": (lambda: torch.rand(3, 30, 30).to(torch.bfloat16).index_put_(
        (torch.tensor(0), torch.tensor(1), torch.tensor(2)), torch.tensor(math.nan, dtype=torch.bfloat16)),
                                     (ValueError, r"^image holds 1 NaN and 0 infinite")),
    "float array in [0, 255]": (lambda: np.random.default_rng(0).random((30, 30, 3), np.float32) * 255,
                                (ValueError, PIL_RANGE + r" \[0, 1\]")),
    "16-bit HW1 array": (lambda: _array((30, 30, 1), np.uint16, 65536), (ValueError, PIL_RANGE + r" \[0, 255\]")),
    "integral float array in [0, 255]": (lambda: _array((30, 30, 3)).astype(np.float32), OK),
    "2-D array": (lambda: _array((30, 30)), (ValueError, r"Could not make a flat list of images")),
    "5-channel array": (lambda: _array((30, 30, 5)), (ValueError, r"Unable to infer channel dimension format")),
    "None": (lambda: None, ((ValueError, TypeError), None)),
    "raw bytes": (lambda: os.urandom(100), (TypeError, r"(image must be a PIL image.*got bytes|Incorrect format used "
                                                       r"for image)")),
    "zero-sized image (0x0)": (lambda: Image.new("RGB", (0, 0)), (ValueError, r"image is zero-sized \(0x0 pixels\)")),
    "zero-height array (0x10x3)": (lambda: np.zeros((0, 10, 3), np.uint8),
                                   (ValueError, r"^image is empty \(shape \(0, 10, 3\)\)")),
    "string-dtype array": (lambda: np.full((30, 30, 3), "a"), (TypeError, r"^image must hold real numbers, got dtype "
                                                                          r"<U1")),
    "object-dtype array": (lambda: np.empty((30, 30, 3), object),
                           (TypeError, r"^image must hold real numbers, got dtype object")),
    "complex array": (lambda: np.zeros((30, 30, 3), np.complex64),
                      (TypeError, r"^image must hold real numbers, got dtype complex64")),
    "5-D tensor given as one image": (lambda: torch.zeros(1, 1, 3, 30, 30),
                                      (ValueError, r"^image must have 2 \(HW\) or 3 \(HWC or CHW\) dimensions")),
}
# where the `ifam-explanation` pipeline answers differently (it reads encoded bytes and takes grey HW arrays)
EXPLAIN_IMAGES = {
    "2-D array": OK,
    "raw bytes": (ValueError, r"Could not read the image \(UnidentifiedImageError"),
}


def _cannot_read(file):
    return ValueError, r"Could not read (the )?image '[^']*" + file.replace(".", r"\.") + r"'"


DECODES_ITSELF = "transformers' ImageClassificationPipeline decodes files itself (load_image) before our processor runs"
FILES = {  # a path to a file: name -> (file, expectation, why the stock pipeline still fails or None)
    "16-bit PNG file": ("16bit.png", OK, None),
    "CMYK JPEG file": ("cmyk.jpg", OK, None),
    "missing file": ("missing.png", (ValueError, r"missing\.png"), None),
    "random bytes as an image file": ("random.png", _cannot_read("random.png"), DECODES_ITSELF),
    "empty (0-byte) image file": ("empty.png", _cannot_read("empty.png"), DECODES_ITSELF),
    "zero-sized PNG file": ("zero.png", _cannot_read("zero.png"), DECODES_ITSELF),
    "truncated PNG file": ("truncated.png", _cannot_read("truncated.png"), DECODES_ITSELF),  # no file name from PIL
}


def _nan_batch_tensor():
    pixels = torch.rand(2, 3, 30, 30)
    pixels[1, 0, 0, 0] = math.nan
    return pixels


BATCHES = {  # image processor only: name -> (build(files), expectation)
    "two good images": (lambda files: [Image.new("RGB", (30, 40)), _array((20, 30, 3))], OK),
    "a 4-D batch array": (lambda files: _array((2, 30, 30, 3)), OK),
    "a good and a bad path": (lambda files: [str(files / "good.png"), str(files / "random.png")],
                              _cannot_read("random.png")),
    "empty list": (lambda files: [], (ValueError, r"^`images` is an empty list")),
    "empty tuple": (lambda files: (), (ValueError, r"^`images` is an empty tuple")),
    "empty 4-D batch array": (lambda files: np.zeros((0, 3, 28, 28), np.float32),
                              (ValueError, r"^`images` is an empty batch \(shape \(0, 3, 28, 28\)\)")),
    "list holding an empty list": (lambda files: [[]], (ValueError, r"^`images\[0\]` is an empty list")),
    "NaN in the second image of a list": (lambda files: [_array((30, 30, 3)), np.full((30, 30, 3), np.nan)],
                                          (ValueError, r"^images\[1\] holds 2700 NaN")),
    "NaN in the second image of a 4-D tensor": (lambda files: _nan_batch_tensor(),
                                                (ValueError, r"^images\[1\] holds 1 NaN")),
    "0x0 image in a nested list": (lambda files: [[Image.new("RGB", (5, 5))], [Image.new("RGB", (0, 0))]],
                                   (ValueError, r"^images\[1\]\[0\] is zero-sized")),
    "None in a list": (lambda files: [Image.new("RGB", (5, 5)), None],
                       (TypeError, r"^images\[1\] must be a PIL image.*got NoneType")),
}


def _check_output(pixel_values=None, predictions=None, batch=1):
    if pixel_values is not None:
        assert pixel_values.shape == (batch, 3, 28, 28) and torch.isfinite(pixel_values).all()
    if predictions is not None:
        assert {p["label"] for p in predictions} == LABELS
        assert all(math.isfinite(p["score"]) for p in predictions)
        assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-4)


def _raises(expected):
    exceptions, pattern = expected
    return pytest.raises(exceptions, match=pattern) if pattern else pytest.raises(exceptions)


@pytest.fixture(scope="module", params=["IFAMImageProcessor", "IFAMImageProcessorPil"])
def processor(request, folder):
    """The processor an iFAM folder saves, loaded as each of the two classes (`AutoImageProcessor` picks one)."""
    return {"IFAMImageProcessor": IFAMImageProcessor, "IFAMImageProcessorPil": IFAMImageProcessorPil}[
        request.param].from_pretrained(folder)


def test_folder_loads_the_ifam_processor(folder):
    from transformers import AutoImageProcessor

    assert isinstance(AutoImageProcessor.from_pretrained(folder), IFAMImageProcessorMixin)


@pytest.mark.parametrize("name", list(IMAGES) + list(FILES) + list(BATCHES))
def test_image_processor_front_door(model, processor, files, name):
    if name in IMAGES:
        build, expected = IMAGES[name]
        images = build()
    elif name in FILES:
        images, expected = str(files / FILES[name][0]), FILES[name][1]
    else:
        build, expected = BATCHES[name]
        images = build(files)
    if expected == OK:
        pixel_values = processor(images, return_tensors="pt")["pixel_values"]
        _check_output(pixel_values, batch=len(images) if name in BATCHES else 1)
        with torch.no_grad():
            assert torch.isfinite(model(pixel_values=pixel_values).logits).all()
        return
    with _raises(expected):
        processor(images, return_tensors="pt")


@pytest.fixture(scope="module")
def classifier(folder):
    from transformers import pipeline

    classifier = pipeline("image-classification", model=str(folder), device="cpu")
    assert isinstance(classifier.image_processor, IFAMImageProcessorMixin)
    return classifier


@pytest.fixture(scope="module")
def explain(folder):
    from transformers import pipeline

    explain = pipeline(TASK, model=str(folder), device="cpu")
    assert isinstance(explain.image_processor, IFAMImageProcessorMixin)
    return explain


def _pipeline_cases():
    params = []
    for kind in ("image-classification", TASK):
        for name in list(IMAGES) + list(FILES):
            marks = ()
            if kind == "image-classification" and name in FILES and FILES[name][2]:
                marks = pytest.mark.xfail(raises=(OSError, AssertionError), strict=True, reason=FILES[name][2])
            params.append(pytest.param(kind, name, marks=marks, id=f"{kind}: {name}"))
    return params


@pytest.mark.parametrize("kind, name", _pipeline_cases())
def test_pipeline_front_door(classifier, explain, files, kind, name):
    if name in IMAGES:
        build, expected = IMAGES[name]
        expected = EXPLAIN_IMAGES.get(name, expected) if kind == TASK else expected
    else:
        build, expected = (lambda: str(files / FILES[name][0])), FILES[name][1]
    run = classifier if kind == "image-classification" else explain
    if expected == OK:
        result = run(build())
        _check_output(predictions=result if kind == "image-classification" else result["predictions"])
        return
    with _raises(expected):
        run(build())


def test_pipeline_batches(classifier, explain, files):
    image = Image.new("RGB", (30, 30), (20, 30, 40))
    assert len(classifier([image, str(files / "16bit.png")], batch_size=2)) == 2
    assert classifier(image, top_k=10) and len(classifier(image, top_k=10)) == NUM_LABELS  # more than there are
    assert len(explain([image, str(files / "16bit.png"), _array((30, 30, 3))], batch_size=2)) == 3
    with pytest.raises(ValueError, match=r"Could not read the image '[^']*random\.png'"):
        explain([image, str(files / "random.png")], batch_size=2)


@pytest.mark.xfail(raises=IndexError, strict=True, reason="transformers' pipeline indexes the first input of a list")
def test_pipeline_empty_batch(classifier):
    assert classifier([]) == []


def test_explanation_pipeline_empty_batch(explain):
    assert explain([]) == [] and explain(()) == []
    with pytest.raises(ValueError, match=r"part indices \[9\]"):  # the arguments are still checked
        explain([], parts_to_drop=[9])


def test_check_image_has_one_implementation():
    """`ifam_data.verify` re-exports the processor's check, it keeps no copy."""
    assert verify.check_image is check_image


@pytest.mark.parametrize("name", [n for n, (_, _, why) in FILES.items() if why])
def test_image_error_names_the_files_the_stock_pipeline_cannot_take(files, name):
    """The training-data check (`ifam_data.verify.image_error`) finds the same files up front."""
    reason, _ = image_error(str(files / FILES[name][0]), mode="full")
    assert reason is not None and (FILES[name][0] in reason or "bytes" in reason or "truncated" in reason)


def test_check_image_accepts_what_the_processor_takes():
    for name, (build, expected) in IMAGES.items():
        if expected == OK and name != "2-D array":
            check_image(build(), name)
    check_image(_array((30, 30)), "a grey HW array")
    check_image(torch.rand(3, 4, 4).to(torch.bfloat16))
    for bad, pattern in [(np.full((4, 4, 3), np.nan), "NaN"), (np.zeros((4,)), "dimensions"),
                         ("path.png", "must be a PIL image"), (np.zeros((4, 4, 3), np.complex64), "real numbers"),
                         (torch.zeros(4, 4, 3, dtype=torch.complex64), "real numbers")]:
        with pytest.raises((ValueError, TypeError), match=pattern):
            check_image(bad)
