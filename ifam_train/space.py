"""A ready Hugging Face Space (Gradio) that demonstrates a published iFAM model: `demo/app.py` pointed at the model.

    write_space("/tmp/space", model_id="me/ifam-cub")                 # app.py, requirements.txt, README.md, examples/
    publish_space("/tmp/space", space_id="me/ifam-cub-demo")          # create the Space and upload the folder

The Space installs no `ifam` package: the app runs the model repository's own code (`trust_remote_code`), which
`ifam-push-to-hub` uploads with the model (the modeling code, the `ifam-explanation` pipeline and the image processor).
"""

import shutil
from importlib import metadata
from pathlib import Path

import yaml


DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"
DEFAULT_MODEL_LINE = 'DEFAULT_MODEL = os.environ.get("IFAM_MODEL")'


def _version(package: str, fallback: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return fallback


def requirements() -> str:
    """What the Space installs: the versions this package was tested with, as lower bounds."""
    return "\n".join([
        f"torch>={_version('torch', '2.4').split('+')[0]}",
        f"transformers>={_version('transformers', '5.0')}",
        f"huggingface_hub>={_version('huggingface_hub', '1.0')}",
        "numpy",
        "pillow",
    ]) + "\n"


def space_card(model_id: str, title: str | None = None) -> str:
    metadata_block = {
        "title": title or f"iFAM: {model_id.split('/')[-1]}",
        "emoji": "🔍",
        "colorFrom": "blue",
        "colorTo": "green",
        "sdk": "gradio",
        "sdk_version": _version("gradio", "5.0.0"),
        "app_file": "app.py",
        "pinned": False,
        "license": "apache-2.0",
        "models": [model_id],
        "tags": ["ifam", "interpretability", "image-classification"],
        "short_description": "Faithful part-based explanations with live interventions",
    }
    return "\n".join([
        "---", yaml.safe_dump(metadata_block, sort_keys=False, allow_unicode=True).strip(), "---", "",
        f"# iFAM demo: [{model_id}](https://huggingface.co/{model_id})", "",
        "Upload an image (or pick an example): the app shows the prediction with its scores, the parts that stage 1 "
        "found (one colour each; the legend says how often each part is present in the training data), **what stage "
        "2 saw** (everything else greyed: nothing there can move the prediction), and stage 1's own prediction.", "",
        "Untick a part to hide it from stage 2, or apply token removal at a calibrated percentile: the prediction and "
        "the pictures update. The explanation is a guarantee, not a heat map: stage 2 attends to nothing outside it.",
        "",
    ])


def write_space(destination: str | Path, model_id: str, title: str | None = None,
                examples: list[str | Path] | None = None) -> list[Path]:
    """
    Write a Gradio Space folder for the model `model_id` (a Hub repository id) into `destination`: `app.py` (the demo,
    defaulting to the model), `requirements.txt`, `README.md` with the Space metadata block, and `examples/` (the
    demo's bundled examples unless `examples` are given). Returns the files written.
    """
    source = DEMO_DIR / "app.py"
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing: the Space writer needs the repository's demo/ folder "
                                "(install the package from a checkout, `pip install -e .`).")
    if not model_id or model_id.count("/") != 1:
        raise ValueError(f"The Space needs the model's Hub repository id (owner/name), got {model_id!r}.")
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    app = source.read_text()
    if DEFAULT_MODEL_LINE not in app:
        raise RuntimeError(f"demo/app.py no longer holds `{DEFAULT_MODEL_LINE}`: update the Space writer.")
    app = app.replace(DEFAULT_MODEL_LINE, f'DEFAULT_MODEL = os.environ.get("IFAM_MODEL", {model_id!r})')
    written = [destination / "app.py", destination / "requirements.txt", destination / "README.md"]
    written[0].write_text(app)
    written[1].write_text(requirements())
    written[2].write_text(space_card(model_id, title))
    example_dir = destination / "examples"
    example_dir.mkdir(exist_ok=True)
    for path in examples if examples is not None else sorted((DEMO_DIR / "examples").glob("*.png")):
        written.append(Path(shutil.copyfile(path, example_dir / Path(path).name)))
    return written


def publish_space(folder: str | Path, space_id: str, token: str | None = None, private: bool = False) -> str:
    """Create the Space (Gradio SDK) if needed and upload `folder` to it. Returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=space_id, repo_type="space", folder_path=str(folder),
                               commit_message="Upload iFAM demo")
    return str(commit)


__all__ = ["write_space", "publish_space", "space_card", "requirements"]
