"""Calibration, leave-one-out, pictures, and the publishable folder of push_to_hub.py."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

from ifam_train import hub as push_to_hub
from conftest import TINY_RUN, tiny_model
from ifam_interventions import calibration, leave_one_out, pictures
from ifam_interventions.calibration import calibrate_token_removal
from modeling_ifam import IFAMForImageClassification


def test_calibrated_thresholds_are_the_percentiles_of_assigned_distances(pixel_values):
    model = tiny_model()
    batches = [{"pixel_values": pixel_values[:2]}, {"pixel_values": pixel_values[2:]}]
    statistics = calibrate_token_removal(model, batches, percentiles=(50, 97))

    stage1 = model.stage1(pixel_values)
    assignment = stage1.part_maps.flatten(2).argmax(1)
    distance = stage1.part_distances.flatten(2).gather(1, assignment[:, None]).squeeze(1)
    for part in range(model.config.num_parts):
        values = distance[assignment == part].double()
        entry = statistics["parts"][part]
        assert entry["tokens"] == values.numel()
        assert entry["images_with_part"] == int((assignment == part).any(1).sum())
        if values.numel():
            for q in (50, 97):
                expected = torch.quantile(values, q / 100).item()
                assert model.config.part_distance_thresholds[f"{q:g}"][part] == pytest.approx(expected, rel=1e-6)
        else:
            assert model.config.part_distance_thresholds["50"][part] == float("inf")
    # at q=50, about half of each part's tokens are removed
    kept = model(pixel_values, token_removal_percentile=50).token_mask.sum()
    assert 0 < kept < model(pixel_values).token_mask.sum()


def test_calibration_refuses_bad_percentiles_and_empty_data(pixel_values):
    model = tiny_model()
    with pytest.raises(ValueError, match="101"):
        calibrate_token_removal(model, [{"pixel_values": pixel_values}], percentiles=(101,))
    with pytest.raises(ValueError, match="empty"):
        calibrate_token_removal(model, [], percentiles=(97,))


@pytest.fixture(scope="module")
def intervened(trained_run, tmp_path_factory):
    """The trained tiny run, calibrated again by the command, with its leave-one-out table and pictures."""
    source, _ = trained_run
    folder = tmp_path_factory.mktemp("intervened") / "model"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("checkpoint-*", "logs"))
    data = ["--model_name_or_path", str(folder), *TINY_RUN[:6]]
    calibration.main([*data, "--percentiles", "90", "99"])
    rows = leave_one_out.main([*data, "--split", "test"])
    pictures.main([*data, "--num_images", "3"])
    return folder, rows


def test_calibration_command_updates_the_folder(intervened):
    folder, _ = intervened
    model = IFAMForImageClassification.from_pretrained(folder)
    assert set(model.config.part_distance_thresholds) == {"90", "97", "99"}  # train.py's 97/99, then 90 and 99
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoImageProcessor"] == "image_processing_ifam.IFAMImageProcessor"  # remote code
    assert list(config["custom_pipelines"]) == ["ifam-explanation-remote-code"]  # the pipeline stays registered
    statistics = json.loads((folder / "part_statistics.json").read_text())
    assert statistics["percentiles"] == [90.0, 99.0] and len(statistics["parts"]) == 2


def test_leave_one_out_table(intervened):
    folder, rows = intervened
    num_parts, percentiles = 2, 3  # every calibrated percentile by default
    assert len(rows) == (num_parts + 1) * (1 + percentiles)
    assert [(r["parts_dropped"], r["percentile"]) for r in rows[:5]] == [
        ([], None), ([], 90.0), ([], 97.0), ([], 99.0), ([0], None)]
    assert json.loads((folder / "leave_one_out.json").read_text()) == rows
    markdown = (folder / "leave_one_out.md").read_text()
    assert "| drop part 1 + q=99 |" in markdown and "worst_group_accuracy" in markdown
    for row in rows:
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["worst_group_accuracy"] <= 1
    # dropping a part never shows stage 2 more patches
    assert all(r["coverage"] <= rows[0]["coverage"] + 1e-9 for r in rows)


def test_pictures_are_written(intervened):
    folder, _ = intervened
    for name in ("parts.png", "leave_one_out.png"):
        image = Image.open(folder / name)
        assert image.size[0] > 200 and image.size[1] > 200


def test_push_to_hub_dry_run_folder_loads_everywhere(intervened, tmp_path):
    folder, _ = intervened
    upload = tmp_path / "upload"
    push_to_hub.main([str(folder), "--repo_id", "me/ifam-tiny", "--dry-run", "--output-dir", str(upload)])
    names = {p.name for p in upload.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_ifam.py",
            "configuration_ifam.py", "part_losses.py", "pipeline_ifam.py", "image_processing_ifam.py",
            "part_statistics.json", "metrics.json", "leave_one_out.json"} <= names
    assert "custom_pipelines" in json.loads((upload / "config.json").read_text())
    assert not any(name.startswith("checkpoint") for name in names)

    card = (upload / "README.md").read_text()
    metadata = card.split("---")[1]
    assert "library_name: transformers" in metadata and "pipeline_tag: image-classification" in metadata
    assert "model-index" in metadata and "Worst-group accuracy" in metadata
    metrics = json.loads((folder / "metrics.json").read_text())
    assert f"value: {round(100 * metrics['test']['accuracy'], 2)}" in metadata
    assert "| drop part 0 |" in card

    image = Image.fromarray((torch.rand(30, 30, 3) * 255).byte().numpy())
    image.save(tmp_path / "image.png")
    model = AutoModelForImageClassification.from_pretrained(upload)
    inputs = AutoImageProcessor.from_pretrained(upload)(image, return_tensors="pt")
    expected = model(**inputs).logits[0]
    scores = {p["label"]: p["score"] for p in pipeline("image-classification", model=str(upload), device="cpu")(image)}
    probabilities = expected.softmax(-1)
    for index, label in model.config.id2label.items():
        assert scores[label] == pytest.approx(probabilities[index].item(), abs=1e-6)

    script = (
        "import sys, json, torch\n"
        "for name in ('modeling_ifam', 'configuration_ifam', 'part_losses'): sys.modules[name] = None\n"
        "from PIL import Image\n"
        "from transformers import AutoModelForImageClassification, AutoImageProcessor\n"
        "model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "inputs = AutoImageProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)(Image.open(sys.argv[2]), "
        "return_tensors='pt')\n"
        "print(json.dumps(model(**inputs).logits[0].tolist()))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(upload), str(tmp_path / "image.png")],
                            capture_output=True, text=True, cwd=tmp_path,
                            env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(remote, expected, atol=1e-6, rtol=0)


def test_push_to_hub_refuses_a_folder_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        push_to_hub.prepare_upload(tmp_path, tmp_path / "out", "me/x")
