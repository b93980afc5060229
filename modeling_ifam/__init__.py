"""iFAM in the transformers layout: configuration, model, image processor and the `ifam-explanation` pipeline.

Importing the package registers `model_type="ifam"` with `AutoConfig`, `AutoModelForImageClassification` and
`AutoImageProcessor`, and the `ifam-explanation` task with transformers' pipeline registry. The config, the model and
the image processor are also registered for their Auto classes (`register_for_auto_class`), so `save_pretrained` and
`push_to_hub` copy the modules (`configuration_ifam.py`, `modeling_ifam.py`, `part_losses.py`, `pipeline_ifam.py`,
`image_processing_ifam.py`) beside the weights and write `auto_map` and `custom_pipelines` into `config.json`
(`IFAMPreTrainedModel.save_pretrained`): `trust_remote_code=True` then loads the folder, pipeline included, where this
package is not installed.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_ifam import IFAMConfig
from .image_processing_ifam import IFAMImageProcessor, IFAMImageProcessorPil, dinov2_image_processor
from .modeling_ifam import IFAMForImageClassification, IFAMImageClassifierOutput, IFAMPreTrainedModel
from .pipeline_ifam import REMOTE_TASK, IFAMExplanationPipeline
from .pipeline_ifam import TASK as PIPELINE_TASK


AutoConfig.register("ifam", IFAMConfig, exist_ok=True)
AutoModelForImageClassification.register(IFAMConfig, IFAMForImageClassification, exist_ok=True)
AutoImageProcessor.register(
    IFAMConfig, image_processor_classes={"torchvision": IFAMImageProcessor, "pil": IFAMImageProcessorPil}, exist_ok=True
)
IFAMConfig.register_for_auto_class()
IFAMForImageClassification.register_for_auto_class("AutoModelForImageClassification")
IFAMImageProcessor.register_for_auto_class("AutoImageProcessor")
IFAMImageProcessorPil.register_for_auto_class("AutoImageProcessor")
# pipeline("ifam-explanation", model=...) with the package installed
if PIPELINE_REGISTRY.supported_tasks.get(PIPELINE_TASK, {}).get("impl") is not IFAMExplanationPipeline:
    PIPELINE_REGISTRY.register_pipeline(
        PIPELINE_TASK, pipeline_class=IFAMExplanationPipeline, pt_model=AutoModelForImageClassification, type="image"
    )
    # `Pipeline.save_pretrained` names the pipeline in the saved config.json after this: the remote-code name (see
    # pipeline_ifam.REMOTE_TASK), as `IFAMPreTrainedModel.save_pretrained` does
    IFAMExplanationPipeline._registered_impl = {REMOTE_TASK: PIPELINE_REGISTRY.supported_tasks[PIPELINE_TASK]}

__all__ = [
    "IFAMConfig",
    "IFAMExplanationPipeline",
    "IFAMForImageClassification",
    "IFAMImageClassifierOutput",
    "IFAMImageProcessor",
    "IFAMImageProcessorPil",
    "IFAMPreTrainedModel",
    "dinov2_image_processor",
]
