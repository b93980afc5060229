"""iFAM model; importing it registers `IFAMForImageClassification` with `AutoModelForImageClassification`."""

from transformers import AutoImageProcessor, AutoModelForImageClassification
from transformers.pipelines import PIPELINE_REGISTRY

from configuration_ifam import IFAMConfig

from .modeling_ifam import IFAMForImageClassification, IFAMImageClassifierOutput, IFAMPreTrainedModel
from .image_processing_ifam import IFAMImageProcessor, IFAMImageProcessorPil
from .pipeline_ifam import REMOTE_TASK, TASK as PIPELINE_TASK
from .pipeline_ifam import IFAMExplanationPipeline
from .pipeline_registration import register_pipeline_in
from .remote_code import write_remote_code


AutoModelForImageClassification.register(IFAMConfig, IFAMForImageClassification, exist_ok=True)
AutoImageProcessor.register(
    IFAMConfig, image_processor_classes={"torchvision": IFAMImageProcessor, "pil": IFAMImageProcessorPil}, exist_ok=True
)
# pipeline("ifam-explanation", model=...) with the package installed
if PIPELINE_REGISTRY.supported_tasks.get(PIPELINE_TASK, {}).get("impl") is not IFAMExplanationPipeline:
    PIPELINE_REGISTRY.register_pipeline(
        PIPELINE_TASK, pipeline_class=IFAMExplanationPipeline, pt_model=AutoModelForImageClassification, type="image"
    )
    # `Pipeline.save_pretrained` names the pipeline in the saved config.json after this: the remote-code name (see
    # pipeline_ifam.REMOTE_TASK), as `register_pipeline_in` does
    IFAMExplanationPipeline._registered_impl = {
        REMOTE_TASK: PIPELINE_REGISTRY.supported_tasks[PIPELINE_TASK]
    }

__all__ = [
    "IFAMConfig",
    "IFAMExplanationPipeline",
    "IFAMImageProcessor",
    "IFAMImageProcessorPil",
    "IFAMForImageClassification",
    "IFAMImageClassifierOutput",
    "IFAMPreTrainedModel",
    "register_pipeline_in",
    "write_remote_code",
]
