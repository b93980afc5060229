"""The demo's callbacks (bad input gives a message, never an exception), the Space writer, a converted checkpoint."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from transformers import BitImageProcessor, Dinov2Config, Dinov2ForImageClassification

from conftest import TINY, load_demo_app, tiny_model
from modeling_ifam import IFAMImageProcessor

gr = pytest.importorskip("gradio", reason="the demo needs gradio: pip install '.[demo]'")

demo_app = load_demo_app()

from ifam_train.space import write_space  # noqa: E402

PROCESSOR = dict(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}, do_convert_rgb=True,
                 image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
EXAMPLE = sorted(demo_app.EXAMPLES_DIR.glob("*.png"))[0]


@pytest.fixture(scope="module")
def uncalibrated(tmp_path_factory):
    """A saved tiny iFAM with no calibration and no part statistics."""
    folder = tmp_path_factory.mktemp("uncalibrated")
    tiny_model().save_pretrained(folder)  # also writes the pipeline's and the image processor's code
    IFAMImageProcessor(**PROCESSOR).save_pretrained(folder)
    return folder


def test_bundled_examples_are_images():
    assert len(list(demo_app.EXAMPLES_DIR.glob("*.png"))) >= 2
    for path in demo_app.EXAMPLES_DIR.glob("*.png"):
        assert Image.open(path).size == (112, 112)


def test_session_explains_and_intervenes(uncalibrated):
    session = demo_app.DemoSession()
    status, parts, removal, legend, *_ = session.load(str(uncalibrated))
    assert status.startswith("Loaded") and parts["value"] == [0, 1, 2]
    assert removal["interactive"] is False and "no calibrated thresholds" in removal["info"]
    assert "presence frequencies unknown" in legend
    status, legend, prediction, parts_image, seen, stage1 = session.explain(str(EXAMPLE), [0, 2], "off")
    expected = session.explainer.pipe(str(EXAMPLE), parts_to_drop=[1])
    assert prediction == {p["label"]: p["score"] for p in expected["predictions"]}
    assert f"{100 * expected['stage2_fraction']:.1f}%" in status and "removed part 1" in status
    assert "(removed)" in legend and stage1 == {p["label"]: p["score"] for p in expected["stage1_predictions"]}
    assert parts_image.size == seen.size == (336, 336)  # 112 px enlarged 3x, nearest neighbour


def test_bad_input_gives_messages_and_the_session_keeps_working(uncalibrated, tmp_path):
    session = demo_app.DemoSession()
    assert session.explain(str(EXAMPLE), [0], "off")[0] == "⚠️ Load an iFAM model first."

    other = tmp_path / "dinov2"
    Dinov2ForImageClassification(Dinov2Config(**TINY, num_labels=2)).save_pretrained(other)
    BitImageProcessor(**PROCESSOR).save_pretrained(other)
    for name, message in [(str(other), "needs an iFAM model"), (str(tmp_path / "missing"), "Could not load"),
                          ("", "Give a model")]:
        status = session.load(name)[0]
        assert status.startswith("⚠️") and message in status, status

    session.load(str(uncalibrated))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    for image, parts, removal, message in [
        (str(broken), [0, 1, 2], "off", "Could not read the image"),
        (str(EXAMPLE), [0, 1, 7], "off", "part indices [7]: this model has 3 parts"),
        (str(EXAMPLE), [0, 1, 2], "97", "percentile 97 is not calibrated"),
        (str(EXAMPLE), ["x"], "off", "Parts must be part indices"),
    ]:
        status = session.explain(image, parts, removal)[0]
        assert status.startswith("⚠️") and message in status, status
    assert session.explain(str(EXAMPLE), [0, 1, 2], "off")[0].startswith("Stage 2 saw")


def test_build_app_without_a_model():
    app = demo_app.build_app(None)
    assert isinstance(app, gr.Blocks)


def test_space_folder(tmp_path):
    files = write_space(tmp_path / "space", "me/ifam-tiny")
    names = {path.relative_to(tmp_path / "space").as_posix() for path in files}
    assert {"app.py", "requirements.txt", "README.md"} <= names and any(n.startswith("examples/") for n in names)
    card = (tmp_path / "space" / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["sdk"] == "gradio" and metadata["app_file"] == "app.py" and metadata["models"] == ["me/ifam-tiny"]
    assert metadata["sdk_version"] == gr.__version__
    assert 'os.environ.get("IFAM_MODEL", \'me/ifam-tiny\')' in (tmp_path / "space" / "app.py").read_text()
    requirements = (tmp_path / "space" / "requirements.txt").read_text()
    assert "transformers>=" in requirements and "torch>=" in requirements and "ifam" not in requirements
    with pytest.raises(ValueError, match="owner/name"):
        write_space(tmp_path / "bad", "not-a-repo-id")


def test_push_to_hub_dry_run_writes_the_space(uncalibrated, tmp_path):
    from ifam_train.hub import main

    main([str(uncalibrated), "--hub_model_id", "me/ifam-tiny", "--dry_run", "--output_dir", str(tmp_path / "upload"),
          "--space_id", "me/ifam-tiny-demo"])
    assert (tmp_path / "upload_space" / "app.py").is_file()
    config = json.loads((tmp_path / "upload" / "config.json").read_text())
    assert "custom_pipelines" in config and (tmp_path / "upload" / "pipeline_ifam.py").is_file()


SPACE_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    for name in ("modeling_ifam", "configuration_ifam", "part_losses", "pipeline_ifam", "image_processing_ifam",
                 "ifam_train", "ifam_interventions"):
        sys.modules[name] = None  # a Space has no ifam package
    spec = importlib.util.spec_from_file_location("space_app", sys.argv[1])
    app = sys.modules["space_app"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    session = app.DemoSession()
    status = session.load(sys.argv[2])[0]
    assert status.startswith("Loaded"), status
    outputs = session.explain(sys.argv[3], [1, 2], "off")
    assert outputs[0].startswith("Stage 2 saw"), outputs[0]
    print(json.dumps({"prediction": outputs[2], "module": type(session.explainer.pipe).__module__}))
    """
)


def converted_reference(tmp_path) -> tuple[Path, torch.nn.Module]:
    """
    A checkpoint as the authors publish it, converted by the command line (`modeling_ifam.convert_reference`, whose
    `save_pretrained` ships the code); and the same checkpoint loaded with `from_reference`, for the expectations.
    """
    from test_convert_reference import published_folder

    from modeling_ifam import IFAMForImageClassification
    from modeling_ifam.convert_reference import main

    published_folder(tmp_path / "hub", "ifam")
    main([str(tmp_path / "hub"), "--output_dir", str(tmp_path / "converted"), "--num_parts", "3", "--num_labels", "3"])
    return tmp_path / "converted", IFAMForImageClassification.from_reference(tmp_path / "hub").eval()


def test_converted_checkpoint_in_the_app_and_the_space_without_the_package(tmp_path):
    folder, model = converted_reference(tmp_path)
    session = demo_app.DemoSession()
    assert session.load(str(folder))[0].startswith("Loaded")
    status, _, prediction, *_ = session.explain(str(EXAMPLE), [1, 2], "off")
    picture = Image.open(EXAMPLE).convert("RGB")
    inputs = session.explainer.pipe.image_processor(picture, return_tensors="pt")
    with torch.no_grad():
        expected = model(inputs["pixel_values"], parts_to_drop=[0]).logits[0].softmax(-1)
    assert prediction == pytest.approx({f"LABEL_{i}": float(expected[i]) for i in range(3)}, abs=1e-5)

    write_space(tmp_path / "space", "me/converted")
    result = subprocess.run(
        [sys.executable, "-c", SPACE_SCRIPT, str(tmp_path / "space" / "app.py"), str(folder), str(EXAMPLE)],
        capture_output=True, text=True, cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin",
             "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert remote["module"].startswith("transformers_modules")
    assert remote["prediction"] == pytest.approx(prediction, abs=1e-6)
