"""Configuration of iFAM (Inherently Faithful Attention Maps for Vision Transformers).

`save_pretrained` copies this module beside the weights for ``trust_remote_code`` users: it imports only transformers
(and huggingface_hub's `strict`, which transformers depends on).
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, Dinov2Config, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.dinov2_with_registers import Dinov2WithRegistersConfig

# The DINOv2 variants a separate stage-1 backbone may be (`stage1_config["model_type"]`).
STAGE1_BACKBONE_TYPES = ("dinov2", "dinov2_with_registers")

# The backbone's architecture: what a DINOv2(-with-registers) config adds to every config, but its backbone-API outputs.
_DINOV2_OPTIONS = (
    set(Dinov2WithRegistersConfig.__dataclass_fields__) - set(PreTrainedConfig.__dataclass_fields__)
    - {"_out_features", "_out_indices"}
)


@strict
class IFAMConfig(Dinov2Config):
    r"""
    Configuration of [`IFAMForImageClassification`]: two DINOv2 backbones (of the same size by default, as in the
    paper), a PDiscoFormer part discovery head on the first, and a classifier on the second that only sees the patches
    the first one selects.

    Every DINOv2 option (size, patch size, image size, SwiGLU, ...) is inherited from [`Dinov2Config`].
    `num_register_tokens > 0` builds DINOv2-with-registers backbones (the public checkpoints use 4).

    Args:
        num_register_tokens (`int`, *optional*, defaults to 0):
            Register tokens of the backbones (0: plain DINOv2, 4: DINOv2-with-registers). They are never masked.
        num_parts (`int`, *optional*, defaults to 8):
            K, the number of foreground parts. Stage 1 learns K + 1 prototypes; the last one is the background.
        part_dropout (`float`, *optional*, defaults to 0.3):
            Probability of dropping a whole foreground part from the stage-1 classifier during training.
        part_dropout_stage2 (`float`, *optional*, defaults to 0.3):
            Probability of dropping a whole foreground part from the stage-2 token mask during training.
        gumbel_softmax (`bool`, *optional*, defaults to `True`):
            Draw the part maps with Gumbel-softmax during training (plain softmax at inference).
        softmax_temperature (`float`, *optional*, defaults to 1.0):
            Temperature of the (Gumbel-)softmax over the negative squared distances to the prototypes.
        use_soft_masks (`bool`, *optional*, defaults to `False`):
            The paper's ablation: stage 2 attends to every patch with a soft weight (log of the foreground probability
            added to the attention logits) instead of a binary mask. This breaks the faithfulness guarantee.
        parts_to_drop (`list[int]`, *optional*, defaults to `[]`):
            Foreground parts removed from the stage-2 mask by default at inference (part-removal intervention).
        part_distance_thresholds (`dict[str, list[float]]`, *optional*, defaults to `{}`):
            Token-removal thresholds filled by calibration: for a percentile q (key, e.g. `"97"`), the K squared
            distances tau_k^q beyond which a token assigned to part k is sent to the background.
        token_removal_percentile (`float`, *optional*):
            The percentile whose thresholds are applied by default at inference; `None` turns token removal off.
        stage2_inference (`str`, *optional*, defaults to `"packed"`):
            How stage 2 runs at inference. `"packed"`: the selected tokens alone, several images per sequence with a
            block-diagonal mask (no padding to the largest selection). `"padded"`: the selected tokens alone, one image
            per sequence padded to the batch's largest selection (the authors' pruning). `"masked"`: every token, with
            the attention mask. All three give the same logits.
        stage2_training (`str`, *optional*, defaults to `"masked"`):
            How stage 2 runs in training: `"masked"` (every token, attention mask) or `"packed"` (the selected tokens
            only). Both give the same loss and the same gradients, stage 1's straight-through gradient included: an
            unselected token is never attended, so its gradient is zero in the full-length computation too. `"packed"`
            needs `drop_path_rate=0` (stochastic depth would drop the images sharing a sequence together).
        stage1_image_size (`int`, *optional*):
            `None` (the paper): stage 1 sees the image as stage 2 does. An int: stage 1 sees the image resized
            (bilinear, antialiased) to `stage1_image_size x stage1_image_size` and produces its part maps on its own
            patch grid; the stage-2 token mask is the argmax of the part probabilities resized bilinearly to stage 2's
            grid (token removal compares the bilinearly resized distances; see
            `IFAMForImageClassification.part_maps_on_grid`). The guarantee is unchanged: it concerns stage 2's input.
            Must be a multiple of stage 1's patch size.
        stage1_config (`dict` or [`Dinov2Config`] / [`Dinov2WithRegistersConfig`], *optional*):
            `None` (the paper): stage 1's backbone is the same architecture as stage 2's (this config's DINOv2
            options). Otherwise the DINOv2 (`model_type="dinov2"`) or DINOv2-with-registers config of a separate
            stage-1 backbone, of any width, depth, patch size or register count (e.g. DINOv2-small for stage 1 with
            DINOv2-base for stage 2). It is saved nested in `config.json`. `from_dinov2(..., stage1=checkpoint)` fills
            it.
        *_loss_weight (`float`):
            Weights of the training objective. A weight of 0 turns a term off. Defaults follow the reference recipe:
            stage-1 and stage-2 classification 1, presence 1, equivariance 1, orthogonality 1, total variation 1,
            entropy 1, background presence 2, concentration 0.

    Example:

    ```python
    >>> from modeling_ifam import IFAMConfig
    >>> config = IFAMConfig(num_parts=4, num_labels=2, hidden_size=384, num_attention_heads=6)
    ```"""

    model_type = "ifam"
    sub_configs_defaults = {
        "stage1_config": SubConfigSpec(config_class=AutoConfig, model_type="dinov2", optional=True),
    }

    num_register_tokens: int = 0
    num_parts: int = 8
    part_dropout: float | int = 0.3
    part_dropout_stage2: float | int = 0.3
    gumbel_softmax: bool = True
    softmax_temperature: float | int = 1.0
    use_soft_masks: bool = False
    parts_to_drop: list[int] | tuple[int, ...] = ()
    part_distance_thresholds: dict[str, list[float]] | None = None
    token_removal_percentile: float | int | None = None
    stage2_inference: str = "packed"
    stage2_training: str = "masked"
    stage1_image_size: int | None = None
    stage1_config: dict | PreTrainedConfig | None = None

    stage1_classification_loss_weight: float | int = 1.0
    stage2_classification_loss_weight: float | int = 1.0
    presence_loss_weight: float | int = 1.0
    equivariance_loss_weight: float | int = 1.0
    orthogonality_loss_weight: float | int = 1.0
    total_variation_loss_weight: float | int = 1.0
    entropy_loss_weight: float | int = 1.0
    background_loss_weight: float | int = 2.0
    concentration_loss_weight: float | int = 0.0

    def __post_init__(self, **kwargs):
        self.parts_to_drop = list(self.parts_to_drop)
        if self.part_distance_thresholds is None:
            self.part_distance_thresholds = {}
        super().__post_init__(**kwargs)

    @property
    def stage1_backbone_config(self) -> PreTrainedConfig:
        """The config stage 1's backbone is built from: `stage1_config`, or this config (both stages alike)."""
        return self if self.stage1_config is None else self.stage1_config

    @property
    def loss_weights(self) -> dict[str, float]:
        """The weights of the training objective, keyed by the term's name (`presence`, `equivariance`, ...)."""
        suffix = "_loss_weight"
        names = [name for name in self.__dataclass_fields__ if name.endswith(suffix)]
        return {name[: -len(suffix)]: getattr(self, name) for name in names}

    def validate_ifam(self):
        """Part of `@strict` validation: the iFAM options."""
        if self.num_parts < 1:
            raise ValueError(f"`num_parts` must be at least 1, got {self.num_parts}.")
        if self.num_register_tokens < 0:
            raise ValueError(f"`num_register_tokens` must be >= 0, got {self.num_register_tokens}.")
        for name in ("part_dropout", "part_dropout_stage2"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {value}.")
        if self.stage2_inference not in ("packed", "padded", "masked"):
            raise ValueError(
                f"`stage2_inference` must be 'packed', 'padded' or 'masked', got {self.stage2_inference!r}."
            )
        if self.stage2_training not in ("masked", "packed"):
            raise ValueError(f"`stage2_training` must be 'masked' or 'packed', got {self.stage2_training!r}.")
        if self.stage2_training == "packed" and self.drop_path_rate > 0:
            raise ValueError("`stage2_training='packed'` needs `drop_path_rate=0`: stochastic depth drops whole "
                             "sequences, and a packed sequence holds several images.")
        if self.softmax_temperature <= 0:
            raise ValueError(f"`softmax_temperature` must be > 0, got {self.softmax_temperature}.")
        for name, weight in self.loss_weights.items():
            if weight < 0:
                raise ValueError(f"`{name}_loss_weight` must be >= 0, got {weight}.")
        bad = [p for p in self.parts_to_drop if not 0 <= p < self.num_parts]
        if bad:
            raise ValueError(f"`parts_to_drop` holds part indices {bad} outside [0, num_parts={self.num_parts}).")
        for percentile, thresholds in self.part_distance_thresholds.items():
            if not 0 < float(percentile) <= 100:
                raise ValueError(f"`part_distance_thresholds` key {percentile!r} is not a percentile in (0, 100].")
            if len(thresholds) != self.num_parts:
                raise ValueError(
                    f"`part_distance_thresholds[{percentile!r}]` has {len(thresholds)} values, expected one per "
                    f"foreground part ({self.num_parts})."
                )
        if self.token_removal_percentile is not None and self.thresholds_for(self.token_removal_percentile) is None:
            raise self.missing_thresholds_error([self.token_removal_percentile])
        if not isinstance(self.patch_size, int):
            raise ValueError(f"iFAM needs square patches: `patch_size` must be an int, got {self.patch_size}.")
        if not isinstance(self.image_size, int):
            raise ValueError(
                f"`image_size` must be an int (the side of the square position table), got {self.image_size}."
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be a multiple of `patch_size` ({self.patch_size})."
            )
        stage1 = self.stage1_backbone_config
        if self.stage1_config is not None:
            if stage1.model_type not in STAGE1_BACKBONE_TYPES:
                raise ValueError(f"`stage1_config` must be a DINOv2 config (model_type in {STAGE1_BACKBONE_TYPES}), "
                                 f"got model_type={stage1.model_type!r}.")
            if not isinstance(stage1.patch_size, int) or not isinstance(stage1.image_size, int):
                raise ValueError("`stage1_config` needs an int `patch_size` and `image_size` (square patches and "
                                 f"position table), got {stage1.patch_size} and {stage1.image_size}.")
        if self.stage1_image_size is not None:
            if isinstance(self.stage1_image_size, bool) or not isinstance(self.stage1_image_size, int) \
                    or self.stage1_image_size <= 0:
                raise ValueError(f"`stage1_image_size` must be a positive int or None, got {self.stage1_image_size!r}.")
            if self.stage1_image_size % stage1.patch_size:
                raise ValueError(f"`stage1_image_size` ({self.stage1_image_size}) must be a multiple of stage 1's "
                                 f"`patch_size` ({stage1.patch_size}).")

    @staticmethod
    def dinov2_options(dinov2_config: PreTrainedConfig | dict) -> dict:
        """
        The backbone options (size, patch size, position table, SwiGLU, registers, ...) of a DINOv2,
        DINOv2-with-registers or iFAM config (or its `to_dict()`), as `IFAMConfig` keyword arguments.

        Args:
            dinov2_config (`PreTrainedConfig` or `dict`):
                The backbone's configuration.

        Returns:
            `dict`: the options, with `num_register_tokens` (0 for plain DINOv2).
        """
        values = dinov2_config if isinstance(dinov2_config, dict) else dinov2_config.to_dict()
        options = {name: value for name, value in values.items() if name in _DINOV2_OPTIONS}
        options.setdefault("num_register_tokens", 0)
        return options

    @classmethod
    def from_dinov2_config(cls, dinov2_config: PreTrainedConfig | dict, **kwargs) -> "IFAMConfig":
        """
        An `IFAMConfig` whose backbone options come from a DINOv2 (or DINOv2-with-registers, or iFAM) config.

        Args:
            dinov2_config (`PreTrainedConfig` or `dict`):
                The backbone's configuration (see `dinov2_options`).
            kwargs:
                iFAM options (`num_parts=`, `id2label=`, ...); they override the inherited ones.

        Returns:
            `IFAMConfig`
        """
        return cls(**{**cls.dinov2_options(dinov2_config), **kwargs})

    def missing_thresholds_error(self, percentiles: list[float]) -> ValueError:
        """The error for token removal asked at `percentiles` that have no calibrated thresholds (the one message)."""
        plural = "s" if len(percentiles) > 1 else ""
        listed = ", ".join(f"{float(q):g}" for q in percentiles)
        return ValueError(
            f"No token-removal thresholds for percentile{plural} {listed}: the config has no calibrated thresholds for "
            f"{'them' if plural else 'it'} (calibrated: {sorted(self.part_distance_thresholds, key=float)}). Calibrate "
            "first (`ifam-calibrate` or `python -m ifam_interventions.calibration`)."
        )

    def thresholds_for(self, percentile: float) -> list[float] | None:
        """The calibrated thresholds of `percentile` (`97`, `97.0` and `"97"` are the same key), or `None`."""
        for key, thresholds in self.part_distance_thresholds.items():
            if float(key) == float(percentile):
                return thresholds
        return None


__all__ = ["IFAMConfig"]
