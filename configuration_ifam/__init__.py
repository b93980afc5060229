"""iFAM configuration; importing it registers `model_type="ifam"` with `AutoConfig`."""

from transformers import AutoConfig

from .configuration_ifam import IFAMConfig


AutoConfig.register("ifam", IFAMConfig, exist_ok=True)

__all__ = ["IFAMConfig"]
