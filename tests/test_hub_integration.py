"""Hugging Face integration: safetensors round trip, Auto classes, pipeline, trust_remote_code without the package."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageClassification, Dinov2Config, pipeline
from transformers import Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel, ViTConfig, ViTModel

from conftest import TINY, tiny_model
from modeling_ifam import IFAMConfig, IFAMForImageClassification, IFAMImageProcessor, dinov2_image_processor


def tiny_processor() -> IFAMImageProcessor:
    """DINOv2's image processor at the tiny model's resolution."""
    return dinov2_image_processor(28)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ifam")
    model = tiny_model()
    model.save_pretrained(folder)
    tiny_processor().save_pretrained(folder)  # save_pretrained also wrote the modeling code and auto_map
    image = Image.fromarray((torch.rand(40, 50, 3) * 255).byte().numpy())
    image_path = folder / "example.png"
    image.save(image_path)
    return folder, model, image_path


def test_save_pretrained_writes_safetensors_and_round_trips(saved, pixel_values):
    folder, model, _ = saved
    assert (folder / "model.safetensors").is_file()
    loaded = IFAMForImageClassification.from_pretrained(folder)
    assert not loaded.training
    expected, actual = model(pixel_values), loaded(pixel_values)
    for name in ("logits", "stage1_logits", "part_maps", "token_mask"):
        torch.testing.assert_close(actual[name], expected[name], atol=0, rtol=0)
    assert loaded.config.id2label == model.config.id2label


def test_auto_classes(saved):
    folder, model, _ = saved
    assert type(AutoConfig.from_pretrained(folder)) is IFAMConfig
    loaded = AutoModelForImageClassification.from_pretrained(folder)
    assert type(loaded) is IFAMForImageClassification


def test_pipeline_on_saved_folder(saved):
    folder, model, image_path = saved
    classifier = pipeline("image-classification", model=str(folder), device="cpu")
    predictions = classifier(str(image_path), top_k=3)
    assert [p["label"] for p in predictions] != [] and {p["label"] for p in predictions} == {"cat", "dog", "bird"}
    inputs = tiny_processor()(Image.open(image_path), return_tensors="pt")
    probabilities = model(**inputs).logits.softmax(-1)[0]
    expected = {model.config.id2label[i]: probabilities[i].item() for i in range(3)}
    for prediction in predictions:
        assert prediction["score"] == pytest.approx(expected[prediction["label"]], abs=1e-5)


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    for name in ("modeling_ifam", "configuration_ifam", "part_losses", "pipeline_ifam", "image_processing_ifam"):
        sys.modules[name] = None  # the package cannot be imported in this process
    import torch
    from PIL import Image
    from transformers import AutoModelForImageClassification, AutoProcessor, pipeline
    folder, image_path = sys.argv[1], sys.argv[2]
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(processor).__name__ == "IFAMImageProcessor", type(processor)  # auto_map of config.json
    assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
    inputs = processor(Image.open(image_path), return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0].tolist()
    classifier = pipeline("image-classification", model=folder, trust_remote_code=True, device="cpu")
    print(json.dumps({"logits": logits, "pipeline": classifier(image_path, top_k=3)}))
    """
)


def test_trust_remote_code_without_the_package(saved, tmp_path):
    folder, model, image_path = saved
    code_files = sorted(p.name for p in folder.glob("*.py"))
    assert code_files == ["configuration_ifam.py", "image_processing_ifam.py", "modeling_ifam.py", "part_losses.py",
                          "pipeline_ifam.py"]
    assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModelForImageClassification"] == (
        "modeling_ifam.IFAMForImageClassification"
    )
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_SCRIPT, str(folder), str(image_path)],
        capture_output=True, text=True, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
                                                           "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    inputs = tiny_processor()(Image.open(image_path), return_tensors="pt")
    expected = model(**inputs).logits[0]
    torch.testing.assert_close(torch.tensor(remote["logits"]), expected, atol=1e-6, rtol=0)
    assert {p["label"] for p in remote["pipeline"]} == {"cat", "dog", "bird"}


def test_remote_code_imports_only_torch_transformers_numpy_and_pil():
    import ast

    from pathlib import Path

    import modeling_ifam

    package = Path(modeling_ifam.__file__).parent
    allowed = {"torch", "transformers", "huggingface_hub", "math", "dataclasses", "typing", "__future__", "io",
               "numpy", "PIL"}
    for name in ("configuration_ifam.py", "modeling_ifam.py", "part_losses.py", "pipeline_ifam.py",
                 "image_processing_ifam.py"):
        tree = ast.parse((package / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{name} imports {roots}"


@pytest.mark.parametrize("with_registers", [False, True])
def test_from_dinov2_loads_both_stages_from_one_checkpoint(tmp_path, with_registers):
    if with_registers:
        dinov2 = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**TINY, num_register_tokens=4))
    else:
        dinov2 = Dinov2Model(Dinov2Config(**TINY))
    dinov2.save_pretrained(tmp_path)
    model = IFAMForImageClassification.from_dinov2(str(tmp_path), num_parts=2, id2label={0: "a", 1: "b"})
    assert model.config.num_register_tokens == (4 if with_registers else 0)
    assert model.config.num_parts == 2 and model.config.num_labels == 2
    for stage in (model.stage1, model.stage2):
        for name, tensor in dinov2.state_dict().items():
            torch.testing.assert_close(stage.backbone.state_dict()[name], tensor, atol=0, rtol=0)
    outputs = model(torch.randn(1, 3, 28, 28))
    assert outputs.logits.shape == (1, 2)


def test_from_dinov2_refuses_other_checkpoints(tmp_path):
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=28, patch_size=7)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'vit' checkpoint"):
        IFAMForImageClassification.from_dinov2(str(tmp_path), num_parts=2)


def test_from_dinov2_refuses_to_override_backbone_options(tmp_path):
    Dinov2Model(Dinov2Config(**TINY)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="hidden_size"):
        IFAMForImageClassification.from_dinov2(str(tmp_path), hidden_size=64)
