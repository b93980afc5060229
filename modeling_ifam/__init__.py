"""iFAM in the transformers layout: configuration, model and DINOv2's image processor.

Importing the package registers `model_type="ifam"` with `AutoConfig` and `AutoModelForImageClassification`. The config
and the model are also registered for their Auto classes (`register_for_auto_class`), so `save_pretrained` and
`push_to_hub` copy `configuration_ifam.py`, `modeling_ifam.py` and `part_losses.py` beside the weights and write
`auto_map` into `config.json`: `trust_remote_code=True` then loads the folder where this package is not installed.
"""

from transformers import AutoConfig, AutoModelForImageClassification

from .configuration_ifam import IFAMConfig
from .image_processing_ifam import dinov2_image_processor
from .modeling_ifam import IFAMForImageClassification, IFAMImageClassifierOutput, IFAMPreTrainedModel


AutoConfig.register("ifam", IFAMConfig, exist_ok=True)
AutoModelForImageClassification.register(IFAMConfig, IFAMForImageClassification, exist_ok=True)
IFAMConfig.register_for_auto_class()
IFAMForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "IFAMConfig",
    "IFAMForImageClassification",
    "IFAMImageClassifierOutput",
    "IFAMPreTrainedModel",
    "dinov2_image_processor",
]
