"""iFAM model; importing it registers `IFAMForImageClassification` with `AutoModelForImageClassification`."""

from transformers import AutoModelForImageClassification

from configuration_ifam import IFAMConfig

from .modeling_ifam import IFAMForImageClassification, IFAMImageClassifierOutput, IFAMPreTrainedModel
from .remote_code import write_remote_code


AutoModelForImageClassification.register(IFAMConfig, IFAMForImageClassification, exist_ok=True)

__all__ = [
    "IFAMConfig",
    "IFAMForImageClassification",
    "IFAMImageClassifierOutput",
    "IFAMPreTrainedModel",
    "write_remote_code",
]
