"""Make a saved model folder loadable with `trust_remote_code=True` where this package is not installed."""

import json
import shutil
from pathlib import Path

import configuration_ifam

from . import modeling_ifam as _modeling


# The files the Hub serves beside the weights, flat: modeling_ifam.py imports the other two relatively.
REMOTE_CODE_FILES = {
    "configuration_ifam.py": Path(configuration_ifam.__file__).with_name("configuration_ifam.py"),
    "modeling_ifam.py": Path(_modeling.__file__),
    "part_losses.py": Path(_modeling.__file__).with_name("part_losses.py"),
}
AUTO_MAP = {
    "AutoConfig": "configuration_ifam.IFAMConfig",
    "AutoModelForImageClassification": "modeling_ifam.IFAMForImageClassification",
}


def write_remote_code(save_directory: str | Path) -> list[Path]:
    """
    Copy the modeling code into a folder written by `save_pretrained` and point its `config.json` at it (`auto_map`),
    so that `AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)` and
    `pipeline("image-classification", model=folder, trust_remote_code=True)` work without this package.
    Returns the files written.
    """
    save_directory = Path(save_directory)
    config_path = save_directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist: call `save_pretrained({str(save_directory)!r})` first.")
    written = []
    for name, source in REMOTE_CODE_FILES.items():
        shutil.copyfile(source, save_directory / name)
        written.append(save_directory / name)
    config = json.loads(config_path.read_text())
    config["auto_map"] = AUTO_MAP
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    from .pipeline_registration import register_pipeline_in  # the ifam-explanation pipeline and image processor

    return written + [config_path] + register_pipeline_in(save_directory)
