"""Ship the `ifam-explanation` pipeline and iFAM's image processor with a saved model folder.

`register_pipeline_in(folder)` copies `pipeline_ifam.py` and `image_processing_ifam.py` beside the weights, names the
pipeline in `config.json` (`custom_pipelines`, the format of transformers' `Pipeline.save_pretrained`) and makes
`AutoImageProcessor` load `IFAMImageProcessor` (`auto_map` in `config.json`), so that `pipeline(model=folder_or_repo, trust_remote_code=True)`
returns explanations where the package is not installed. `pipeline("image-classification", model=folder)` is unchanged.
"""

import json
import shutil
from pathlib import Path

from . import image_processing_ifam, pipeline_ifam


PIPELINE_FILES = {
    "pipeline_ifam.py": Path(pipeline_ifam.__file__),
    "image_processing_ifam.py": Path(image_processing_ifam.__file__),
}
CUSTOM_PIPELINES = {
    pipeline_ifam.REMOTE_TASK: {
        "impl": "pipeline_ifam.IFAMExplanationPipeline",
        "pt": ["AutoModelForImageClassification"],
        "type": "image",
    }
}
# DINOv2's processor classes that IFAMImageProcessor extends without changing a parameter
_DINOV2_PROCESSORS = {"BitImageProcessor", "BitImageProcessorPil", "BitImageProcessorFast", "IFAMImageProcessor"}


def register_pipeline_in(folder: str | Path) -> list[Path]:
    """
    Make a folder written by `save_pretrained` (model and image processor) serve the `ifam-explanation` pipeline with
    `trust_remote_code=True`. Idempotent. Returns the files written.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist: call `save_pretrained({str(folder)!r})` first.")
    written = []
    for name, source in PIPELINE_FILES.items():
        shutil.copyfile(source, folder / name)
        written.append(folder / name)
    config = json.loads(config_path.read_text())
    config["custom_pipelines"] = {**config.get("custom_pipelines", {}), **CUSTOM_PIPELINES}
    processor_path = folder / "preprocessor_config.json"
    if processor_path.is_file():
        processor = json.loads(processor_path.read_text())
        if processor.get("image_processor_type") in _DINOV2_PROCESSORS:
            # AutoImageProcessor reads the model config's `auto_map` when the processor's file names no class. (An
            # `auto_map` in preprocessor_config.json would make every pipeline, image-classification included, offer
            # to run it as a *video* processor: transformers 5 infers video processors from image processors.)
            del processor["image_processor_type"]
            processor.pop("auto_map", None)
            processor_path.write_text(json.dumps(processor, indent=2, sort_keys=True) + "\n")
            written.append(processor_path)
        if "image_processor_type" not in processor:
            config["auto_map"] = {**config.get("auto_map", {}),
                                  "AutoImageProcessor": "image_processing_ifam.IFAMImageProcessor"}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    written.append(config_path)
    return written


__all__ = ["register_pipeline_in", "CUSTOM_PIPELINES", "PIPELINE_FILES"]
