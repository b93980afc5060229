"""The `ifam-explanation` pipeline, `IFAMImageProcessor.post_process_part_maps`, their registration in saved folders."""

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BitImageProcessor, Dinov2Config, Dinov2ForImageClassification, pipeline

from conftest import tiny_model
import modeling_ifam
from modeling_ifam import IFAMExplanationPipeline, IFAMForImageClassification, IFAMImageProcessor, IFAMImageProcessorPil
from modeling_ifam.pipeline_ifam import REMOTE_TASK, TASK

PACKAGE = Path(modeling_ifam.__file__).parent


PROCESSOR = dict(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}, do_convert_rgb=True,
                 image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


def random_image(height, width, seed=0, mode="RGB") -> Image.Image:
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(array).convert(mode)


@pytest.fixture(scope="module")
def calibrated_model():
    """The tiny model with token-removal thresholds at the median distance of each part (so q=50 removes tokens)."""
    model = tiny_model()
    with torch.no_grad():
        stage1 = model.stage1(torch.randn(8, 3, 28, 28, generator=torch.Generator().manual_seed(3)))
    assignment = stage1.part_maps.flatten(2).argmax(1)
    distance = stage1.part_distances.flatten(2).gather(1, assignment[:, None]).squeeze(1)
    medians = [float(distance[assignment == k].median()) if (assignment == k).any() else 1e9
               for k in range(model.config.num_parts)]
    model.config.part_distance_thresholds = {"50": medians}
    return model


@pytest.fixture(scope="module")
def folder(tmp_path_factory, calibrated_model):
    folder = tmp_path_factory.mktemp("explain")
    calibrated_model.save_pretrained(folder)  # names the pipeline and copies its code, the image processor's too
    IFAMImageProcessor(**PROCESSOR).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def explain(folder):
    return pipeline(TASK, model=str(folder), device="cpu")


def model_outputs(model, image, **kwargs):
    inputs = IFAMImageProcessorPil(**PROCESSOR)(image.convert("RGB"), return_tensors="pt")
    with torch.no_grad():
        return model(inputs["pixel_values"], **kwargs)


def test_post_process_part_maps_inverts_resize_and_crop(calibrated_model):
    processor = IFAMImageProcessorPil(**PROCESSOR)
    image = random_image(40, 50)  # resized to 32x40, crop 28x28 from (2, 6); patch 7 -> 4x4 grid
    outputs = model_outputs(calibrated_model, image)
    maps = processor.post_process_part_maps(outputs, target_sizes=[(40, 50)])[0]
    segmentation, stage2 = maps["segmentation"], maps["stage2_mask"]
    assert segmentation.shape == stage2.shape == (40, 50)
    assignment = outputs.part_maps[0].argmax(0)
    visible = outputs.token_mask[0].view(4, 4)
    for y, x in [(20, 25), (5, 10), (36, 40)]:
        # the pixel's centre, in the crop's coordinates (scale 32 / 40), and the patch covering it
        row, column = int(((y + 0.5) * 0.8 - 2) // 7), int(((x + 0.5) * 0.8 - 6) // 7)
        assert segmentation[y, x] == assignment[row, column]
        assert stage2[y, x] == visible[row, column]
    # the crop cut away the first two rows and 7-8 columns on either side: no part, not seen
    assert (segmentation[:2] == -1).all() and (segmentation[:, :7] == -1).all() and (segmentation[:, -7:] == -1).all()
    assert not stage2[:2].any()
    # at the model's input resolution (no target sizes): the patch grid, nearest-neighbour
    at_input = processor.post_process_part_maps(outputs)[0]
    expected = assignment.repeat_interleave(7, 0).repeat_interleave(7, 1)
    torch.testing.assert_close(at_input["segmentation"], expected)
    torch.testing.assert_close(at_input["stage2_mask"], visible.repeat_interleave(7, 0).repeat_interleave(7, 1))


def test_pipeline_output(explain, calibrated_model):
    image = random_image(40, 50)
    result = explain(image)
    assert set(result) >= {"predictions", "stage1_predictions", "parts", "stage2_mask", "stage2_fraction"}
    outputs = model_outputs(calibrated_model, image)
    probabilities = outputs.logits[0].softmax(-1)
    top = calibrated_model.config.id2label[int(probabilities.argmax())]
    assert [p["label"] for p in result["predictions"]][0] == top
    for prediction in result["predictions"]:
        label = {name: i for i, name in calibrated_model.config.id2label.items()}[prediction["label"]]
        assert prediction["score"] == pytest.approx(float(probabilities[label]), abs=1e-5)
    stage1 = outputs.stage1_logits[0].softmax(-1)
    assert result["stage1_predictions"][0]["score"] == pytest.approx(float(stage1.max()), abs=1e-5)

    assert [p["label"] for p in result["parts"]] == ["part 0", "part 1", "part 2", "background"]
    masks = [np.asarray(p["mask"]) > 0 for p in result["parts"]]
    for part in result["parts"]:
        assert part["mask"].mode == "L" and part["mask"].size == image.size and not part["dropped"]
    assert not np.any(np.sum(masks, axis=0) > 1)  # the parts do not overlap
    stage2 = np.asarray(result["stage2_mask"]) > 0
    assert result["stage2_mask"].mode == "L" and result["stage2_mask"].size == image.size
    # without token removal, stage 2 sees exactly the foreground parts
    np.testing.assert_array_equal(stage2, np.any(masks[:-1], axis=0))
    assert result["stage2_fraction"] == pytest.approx(stage2.mean())
    assert result["stage2_fraction"] + masks[-1].mean() + result["outside_fraction"] == pytest.approx(1.0)


def test_interventions_are_call_arguments(explain, calibrated_model):
    image = random_image(30, 30, seed=1)
    plain = explain(image)
    foreground = [k for k, part in enumerate(plain["parts"][:-1]) if part["score"] > 0]
    part = foreground[0]
    dropped = explain(image, parts_to_drop=[part], top_k=3)
    expected = model_outputs(calibrated_model, image, parts_to_drop=[part]).logits[0].softmax(-1)
    assert {p["label"]: p["score"] for p in dropped["predictions"]} == pytest.approx(
        {calibrated_model.config.id2label[i]: float(expected[i]) for i in range(3)}, abs=1e-5)
    assert dropped["parts"][part]["dropped"] and dropped["parts_to_drop"] == [part]
    removed = np.asarray(dropped["parts"][part]["mask"]) > 0
    assert not (np.asarray(dropped["stage2_mask"])[removed] > 0).any()
    assert dropped["stage2_fraction"] == pytest.approx(plain["stage2_fraction"] - plain["parts"][part]["score"])

    pruned = explain(image, token_removal_percentile=50)
    expected = model_outputs(calibrated_model, image, token_removal_percentile=50)
    assert pruned["token_removal_percentile"] == 50
    assert pruned["stage2_fraction"] < plain["stage2_fraction"]
    seen = IFAMImageProcessorPil(**PROCESSOR).post_process_part_maps(expected, [(30, 30)])[0]["stage2_mask"]
    assert pruned["stage2_fraction"] == pytest.approx(float(seen.float().mean()))
    np.testing.assert_array_equal(np.asarray(pruned["stage2_mask"]) > 0, seen.numpy())


def test_batches_and_image_modes(explain):
    images = [random_image(40, 50, 0), random_image(64, 20, 1, "L"), random_image(33, 33, 2, "RGBA"),
              random_image(28, 90, 3, "CMYK"), random_image(50, 40, 4, "P")]
    batched = explain(images, batch_size=2, parts_to_drop=[1])
    assert len(batched) == len(images)
    for image, result in zip(images, batched):
        single = explain(image, parts_to_drop=[1])
        assert result["stage2_mask"].size == image.size
        assert [p["label"] for p in result["predictions"]] == [p["label"] for p in single["predictions"]]
        assert [p["score"] for p in result["predictions"]] == pytest.approx([p["score"] for p in single["predictions"]])
        np.testing.assert_array_equal(np.asarray(result["stage2_mask"]), np.asarray(single["stage2_mask"]))


def test_encoded_bytes_and_paths(explain, tmp_path):
    image = random_image(40, 50)
    path = tmp_path / "image.png"
    image.save(path)
    expected = explain(image)["predictions"]
    assert explain(str(path))["predictions"] == expected
    assert explain(path.read_bytes())["predictions"] == expected


def test_bad_input_gives_clear_messages(explain, tmp_path):
    with pytest.raises(ValueError, match="Could not read the image"):
        explain(b"definitely not an image")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="Could not read the image"):
        explain(str(broken))
    with pytest.raises(ValueError, match=r"part indices \[3\]: this model has 3 parts, 0 to 2"):
        explain(random_image(30, 30), parts_to_drop=[3])
    with pytest.raises(ValueError, match="percentile 97 is not calibrated.*calibrated percentiles: 50"):
        explain(random_image(30, 30), token_removal_percentile=97)

    other = tmp_path / "dinov2"
    Dinov2ForImageClassification(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                               image_size=28, patch_size=7, num_labels=2)).save_pretrained(other)
    BitImageProcessor(**PROCESSOR).save_pretrained(other)
    with pytest.raises(ValueError, match="needs an iFAM model"):
        pipeline(TASK, model=str(other))


def test_uncalibrated_model_names_the_fix(tmp_path):
    explain = pipeline(TASK, model=tiny_model(), image_processor=IFAMImageProcessorPil(**PROCESSOR))
    with pytest.raises(ValueError, match="has no calibration"):
        explain(random_image(30, 30), token_removal_percentile=97)


def test_saved_folder_names_the_pipeline(folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"] == {REMOTE_TASK: {"impl": "pipeline_ifam.IFAMExplanationPipeline",
                                                        "pt": ["AutoModelForImageClassification"], "type": "image"}}
    assert config["auto_map"]["AutoImageProcessor"] == "image_processing_ifam.IFAMImageProcessor"
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert "image_processor_type" not in processor and "auto_map" not in processor  # see IFAMImageProcessor.to_dict
    assert {"pipeline_ifam.py", "image_processing_ifam.py"} <= {p.name for p in folder.glob("*.py")}
    IFAMForImageClassification.from_pretrained(folder).save_pretrained(folder)  # idempotent
    assert json.loads((folder / "config.json").read_text()) == config


def test_folder_with_dinov2_plain_processor(calibrated_model, folder, explain, tmp_path):
    """A folder whose preprocessor_config.json names transformers' BitImageProcessor: the same explanation."""
    calibrated_model.save_pretrained(tmp_path)
    BitImageProcessor(**PROCESSOR).save_pretrained(tmp_path)
    plain = pipeline(TASK, model=str(tmp_path), device="cpu")
    assert not hasattr(plain.image_processor, "post_process_part_maps")
    image = random_image(40, 50)
    expected, actual = explain(image, parts_to_drop=[1]), plain(image, parts_to_drop=[1])
    assert actual["stage2_fraction"] == expected["stage2_fraction"] and actual["predictions"] == expected["predictions"]


def test_package_pipeline_and_plain_classification(folder, explain):
    assert type(explain) is IFAMExplanationPipeline and hasattr(explain.image_processor, "post_process_part_maps")
    classifier = pipeline("image-classification", model=str(folder), device="cpu")
    image = random_image(40, 50)
    expected = {p["label"]: p["score"] for p in explain(image, top_k=3)["predictions"]}
    assert {p["label"]: p["score"] for p in classifier(image, top_k=3)} == pytest.approx(expected, abs=1e-6)


def test_pipeline_save_pretrained_writes_the_remote_name(explain, tmp_path):
    explain.save_pretrained(tmp_path)
    assert list(json.loads((tmp_path / "config.json").read_text())["custom_pipelines"]) == [REMOTE_TASK]
    assert (tmp_path / "pipeline_ifam.py").is_file() and (tmp_path / "image_processing_ifam.py").is_file()


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    for name in ("modeling_ifam", "configuration_ifam", "part_losses", "pipeline_ifam", "image_processing_ifam"):
        sys.modules[name] = None  # the package cannot be imported in this process
    from transformers import pipeline
    explain = pipeline(model=sys.argv[1], trust_remote_code=True, device="cpu")
    assert type(explain).__module__.startswith("transformers_modules"), type(explain).__module__
    results = explain([sys.argv[2], sys.argv[2]], parts_to_drop=[1], batch_size=2)
    print(json.dumps([{"predictions": r["predictions"], "stage2_fraction": r["stage2_fraction"],
                       "parts": [p["label"] for p in r["parts"]]} for r in results]))
    """
)


def test_trust_remote_code_without_the_package(folder, explain, tmp_path):
    image_path = tmp_path / "image.png"
    random_image(40, 50).save(image_path)
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(folder), str(image_path)], capture_output=True, text=True,
        cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    expected = explain(str(image_path), parts_to_drop=[1])
    for item in remote:
        assert [p["label"] for p in item["predictions"]] == [p["label"] for p in expected["predictions"]]
        assert [p["score"] for p in item["predictions"]] == pytest.approx(
            [p["score"] for p in expected["predictions"]], abs=1e-6)
        assert item["stage2_fraction"] == pytest.approx(expected["stage2_fraction"])
        assert item["parts"] == ["part 0", "part 1", "part 2", "background"]


def test_shipped_files_import_only_what_the_hub_has():
    allowed = {"torch", "transformers", "numpy", "PIL", "io", "typing"}
    for name in ("pipeline_ifam.py", "image_processing_ifam.py"):
        for node in ast.walk(ast.parse((PACKAGE / name).read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{name} imports {roots}"


@pytest.mark.parametrize("kwargs, size, outside", [
    (dict(do_resize=False, crop_size={"height": 28, "width": 28}), (20, 40), 20 * 12),  # padded rows, cropped columns
    (dict(size={"height": 28, "width": 28}, crop_size={"height": 28, "width": 28}), (50, 30), 0),  # squashed, no crop
    # 19x56, half the width cropped
    (dict(size={"shortest_edge": 28, "longest_edge": 56}, crop_size={"height": 28, "width": 28}), (30, 90), 30 * 45),
])
def test_post_process_part_maps_geometries(kwargs, size, outside):
    processor = IFAMImageProcessorPil(**{**PROCESSOR, **kwargs})
    outputs = {"part_maps": torch.rand(1, 4, 4, 4), "token_mask": torch.ones(1, 16, dtype=torch.bool)}
    maps = processor.post_process_part_maps(outputs, target_sizes=torch.tensor([size]))[0]
    assert tuple(maps["segmentation"].shape) == size
    assert int((maps["segmentation"] == -1).sum()) == outside == int((~maps["stage2_mask"]).sum())
