"""PyTorch iFAM: Inherently Faithful Attention Maps for Vision Transformers (Aniraj et al., arXiv 2506.08915).

Stage 1 (PDiscoFormer part discovery on DINOv2) assigns every patch to one of K foreground parts or the background.
The foreground patches form a binary token mask; stage 2 (a second DINOv2) classifies the raw image with an attention
mask that hides every other patch in every layer, so nothing outside the mask can move the prediction.

`save_pretrained` copies this module, `configuration_ifam.py`, `part_losses.py`, `pipeline_ifam.py` and
`image_processing_ifam.py` beside the weights for ``trust_remote_code`` users (`register_for_auto_class` in
`__init__.py`; transformers copies every relatively imported module): they import only torch, transformers, numpy and
PIL, and each other relatively.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, Dinov2Model, Dinov2PreTrainedModel, Dinov2WithRegistersModel
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask, packed_sequence_mask_function
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import (
    Dinov2WithRegistersEmbeddings,
    Dinov2WithRegistersLayerScale,
)
from transformers.utils import ModelOutput

from .configuration_ifam import IFAMConfig
from .part_losses import (
    RandomAffine,
    background_presence_loss,
    concentration_loss,
    equivariance_loss,
    orthogonality_loss,
    pixelwise_entropy_loss,
    presence_loss,
    total_variation_loss,
)


# `forward` rejects larger pixel magnitudes: finite inputs past this overflow to NaN logits (the float16 range)
MAX_PIXEL_MAGNITUDE = torch.finfo(torch.float16).max


@dataclass
class IFAMPartDiscoveryOutput(ModelOutput):
    """
    Output of stage 1 (part discovery), on stage 1's own patch grid (`height x width`: the image's, or that of
    `config.stage1_image_size`).

    part_distances (`torch.FloatTensor` of shape `(batch_size, num_parts + 1, height, width)`):
        Squared distance of every patch feature to every part prototype (background last); float32 whatever the
        autocast state, like `part_maps`.
    part_maps (`torch.FloatTensor` of shape `(batch_size, num_parts + 1, height, width)`):
        Part assignment probabilities: softmax (Gumbel-softmax in training) of the negative distances.
    part_features (`torch.FloatTensor` of shape `(batch_size, hidden_size, num_parts + 1)`):
        Part-weighted mean patch features after modulation.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Stage-1 class scores: the per-part classifier scores averaged over the foreground parts.
    """

    part_distances: torch.FloatTensor | None = None
    part_maps: torch.FloatTensor | None = None
    part_features: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


@dataclass
class IFAMImageClassifierOutput(ModelOutput):
    """
    Output of [`IFAMForImageClassification`].

    loss (`torch.FloatTensor` of shape `()`, returned when `labels` is given):
        The weighted training objective: both classification losses plus the stage-1 part-shaping losses.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Stage-2 class scores: a function of the selected patches only.
    stage1_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Stage-1 (PDiscoFormer) class scores, computed from the whole image.
    part_maps (`torch.FloatTensor` of shape `(batch_size, num_parts + 1, height, width)`):
        Part assignment probabilities, background last, on stage 1's patch grid (which differs from stage 2's when
        `config.stage1_image_size` is set or stage 1 has another patch size).
    part_distances (`torch.FloatTensor` of shape `(batch_size, num_parts + 1, height, width)`):
        Squared distances of the patch features to the part prototypes (what the token-removal thresholds apply to),
        on stage 1's patch grid.
    token_mask (`torch.BoolTensor` of shape `(batch_size, num_patches)`):
        True for the patches that stage 2 sees, on stage 2's patch grid (row-major).
    loss_terms (`dict[str, torch.FloatTensor]`, returned when `labels` is given):
        Every unweighted term of `loss`, keyed like `IFAMConfig.loss_weights`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    stage1_logits: torch.FloatTensor | None = None
    part_maps: torch.FloatTensor | None = None
    part_distances: torch.FloatTensor | None = None
    token_mask: torch.BoolTensor | None = None
    loss_terms: dict[str, torch.FloatTensor] | None = None


def build_dinov2_backbone(config) -> Dinov2Model | Dinov2WithRegistersModel:
    """A transformers DINOv2 model of the configured size, with register tokens when the config asks for them."""
    return Dinov2WithRegistersModel(config) if num_register_tokens(config) > 0 else Dinov2Model(config)


def num_register_tokens(config) -> int:
    """Register tokens of a backbone config (a plain `Dinov2Config` has none)."""
    return getattr(config, "num_register_tokens", 0) or 0


def resize_part_outputs(
    part_maps: torch.Tensor, part_distances: torch.Tensor | None, grid: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    Bring stage 1's part probabilities and distances (`[B, K+1, h, w]`) to another patch grid (`grid = (H, W)`):
    bilinear interpolation of both, `align_corners=False` (the patch centres of two grids covering the same image).
    Unchanged when the grids are equal. The resized probabilities still sum to 1 at every patch (convex combinations),
    and the resize is differentiable, so the straight-through gradient of the token mask reaches stage 1.
    """
    if tuple(part_maps.shape[-2:]) == tuple(grid):
        return part_maps, part_distances

    def resize(tensor):
        return None if tensor is None else F.interpolate(tensor, size=tuple(grid), mode="bilinear", align_corners=False)

    return resize(part_maps), resize(part_distances)


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """`hard` in the forward pass (exactly: `soft - soft` is 0), the gradient of `soft` in the backward pass."""
    return hard.to(soft.dtype) + (soft - soft.detach())


class IFAMPartDiscovery(nn.Module):
    """
    Stage 1, PDiscoFormer: DINOv2 patch features -> K + 1 prototypes -> part maps -> per-part classifier.

    Its backbone is `config.stage1_backbone_config` (stage 2's architecture unless `config.stage1_config` is set), and
    with `config.stage1_image_size` it sees the image resized to that size (bilinear, antialiased): the part maps are
    then on that size's patch grid.
    """

    def __init__(self, config: IFAMConfig):
        super().__init__()
        self.config = config
        backbone_config = config.stage1_backbone_config
        num_parts, hidden_size = config.num_parts, backbone_config.hidden_size
        self.patch_size = backbone_config.patch_size
        self.num_prefix_tokens = 1 + num_register_tokens(backbone_config)
        self.backbone = build_dinov2_backbone(backbone_config)
        self.prototypes = nn.Parameter(torch.empty(num_parts + 1, hidden_size))  # background last
        self.modulation = nn.LayerNorm([hidden_size, num_parts + 1])
        self.part_dropout = nn.Dropout1d(config.part_dropout)
        self.classifier = nn.Linear(hidden_size, config.num_labels, bias=False)

    def patch_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The backbone's layer-normed patch features `[B, N, D]` of the image as stage 1 sees it, and its grid."""
        pixel_values = self.resize_image(pixel_values)
        grid = tuple(size // self.patch_size for size in pixel_values.shape[-2:])
        return self.backbone(pixel_values).last_hidden_state[:, self.num_prefix_tokens:], grid

    def forward(self, pixel_values: torch.Tensor) -> IFAMPartDiscoveryOutput:
        features, (height, width) = self.patch_features(pixel_values)  # [B, N, D]

        # ||x - p||^2 = ||x||^2 - 2 x.p + ||p||^2, for every patch x and prototype p. Always in float32, whatever the
        # autocast state: with D-dimensional layer-normed features ||x||^2 is about D (768 for ViT-B), where bfloat16
        # resolves steps of 4, so a bfloat16 x.p would reorder nearby prototypes and change the explanation itself.
        with torch.autocast(device_type=features.device.type, enabled=False):
            features32, prototypes = features.float(), self.prototypes.float()
            distances = (
                features32.pow(2).sum(-1, keepdim=True)
                - 2 * features32 @ prototypes.T
                + prototypes.pow(2).sum(-1)
            )  # [B, N, K+1], float32
            if self.training and self.config.gumbel_softmax:
                part_maps = F.gumbel_softmax(-distances, tau=self.config.softmax_temperature, dim=-1)
            else:
                part_maps = (-distances / self.config.softmax_temperature).softmax(dim=-1)

        part_features = torch.einsum("bnk,bnd->bdk", part_maps, features) / features.shape[1]  # [B, D, K+1]
        part_features = self.modulation(part_features)
        foreground = part_features[..., :-1].transpose(1, 2)  # [B, K, D]
        logits = self.classifier(self.part_dropout(foreground)).mean(dim=1)  # [B, C]

        def to_grid(tensor):  # [B, N, K+1] -> [B, K+1, h, w]
            return tensor.transpose(1, 2).unflatten(-1, (height, width))

        return IFAMPartDiscoveryOutput(
            part_distances=to_grid(distances),
            part_maps=to_grid(part_maps),
            part_features=part_features,
            logits=logits,
        )

    def resize_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The image stage 1 sees: resized to `config.stage1_image_size` (bilinear, antialiased), or as it is."""
        size = self.config.stage1_image_size
        if size is None or tuple(pixel_values.shape[-2:]) == (size, size):
            return pixel_values
        return F.interpolate(pixel_values, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class IFAMMaskedClassifier(nn.Module):
    """Stage 2: DINOv2 on the raw image where no masked patch token is attended by any token in any layer."""

    def __init__(self, config: IFAMConfig):
        super().__init__()
        self.config = config
        self.backbone = build_dinov2_backbone(config)
        self.fc_norm = nn.LayerNorm(config.hidden_size)  # eps 1e-5, as the reference head
        self.classifier = nn.Linear(config.hidden_size, config.num_labels, bias=False)

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.config.num_register_tokens

    def forward(self, pixel_values: torch.Tensor, visible: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """
        Classify the image from the visible patches only.

        With `"masked"` (`stage2_training`'s default) every patch token is computed and the attention mask hides the
        unselected ones; with `"packed"`/`"padded"` (`stage2_inference`'s) the selected tokens alone are computed. The
        results, and in training the gradients, are the same: an unselected token is never attended and its output is
        never read, so the straight-through gradient of its weight is exactly zero either way.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                The images.
            visible (`torch.BoolTensor` of shape `(batch_size, num_patches)`):
                The patches stage 2 may see.
            weights (`torch.FloatTensor` of shape `(batch_size, num_patches)`):
                The straight-through mask, 1.0 on visible patches in the forward pass; it carries the gradient of the
                stage-2 loss back to stage 1. With soft masks, the soft foreground probabilities.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, num_labels)`: the stage-2 logits.
        """
        embeddings = self.backbone.embeddings(pixel_values)  # [B, P+N, D], P = CLS + registers
        prefix = embeddings.new_ones(embeddings.shape[0], self.num_prefix_tokens)
        weights = torch.cat([prefix, weights.to(embeddings.dtype)], dim=1)  # [B, P+N]
        if self.config.use_soft_masks:
            # Ablation: every patch stays visible, down-weighted by log(p_fg) in every attention row.
            bias = weights.clamp_min(1e-10).log()
            attention_mask = bias[:, None, None, :].expand(-1, 1, embeddings.shape[1], -1)
            cls_token = self.backbone.encoder(embeddings, attention_mask=attention_mask).last_hidden_state[:, 0]
        else:
            keep = torch.cat([prefix.bool(), visible], dim=1)  # [B, P+N]
            # Masked tokens are zeroed (so even non-finite pixels there cannot leak through 0 * NaN) and never attended.
            embeddings = torch.where(keep[..., None], embeddings * weights[..., None], 0.0)
            mode = self.config.stage2_training if self.training else self.config.stage2_inference
            if mode == "masked":
                attention_mask = create_bidirectional_mask(self.config, embeddings, keep)
                cls_token = self.backbone.encoder(embeddings, attention_mask=attention_mask).last_hidden_state[:, 0]
            else:
                cls_token = self._encode_selected_tokens(embeddings, keep)
        return self.classifier(self.fc_norm(self.backbone.layernorm(cls_token)))

    def _encode_selected_tokens(self, embeddings: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """
        Run the encoder on the kept tokens only. Each image's tokens form one segment of a row; rows hold several images
        (`"packed"`, first-fit decreasing into rows whose length `pack_sequences` chooses by cost) or one (`"padded"`,
        the authors' pruning). A block-diagonal mask keeps the images apart, so the result equals the full-length masked
        computation. Returns the CLS token of every image, `[B, D]`.
        """
        hidden_size = embeddings.shape[-1]
        lengths = keep.sum(dim=1).tolist()
        one_per_row = not self.training and self.config.stage2_inference == "padded"
        rows, starts, capacity = pack_sequences(lengths, one_per_row=one_per_row, hidden_size=hidden_size)
        image, position = keep.nonzero(as_tuple=True)  # image-major order
        rank = (keep.cumsum(dim=1) - 1)[image, position]  # index of a token within its image's selection
        rows = torch.tensor(rows, device=keep.device)
        offsets = rows * capacity + torch.tensor(starts, device=keep.device)  # [B], where each image's segment starts
        destination = offsets[image] + rank
        num_slots = (int(rows.max()) + 1) * capacity

        packed = embeddings.new_zeros(num_slots, hidden_size).index_copy(0, destination, embeddings[image, position])
        # padding slots get segments of their own (attending to themselves only, never NaN)
        segments = -torch.arange(1, num_slots + 1, device=keep.device)
        segments = segments.index_copy(0, destination, image).view(-1, capacity)  # [rows, capacity]
        packed = packed.view(-1, capacity, hidden_size)
        attention_mask = create_bidirectional_mask(
            self.config, packed, None, and_mask_function=packed_sequence_mask_function(segments)
        )
        hidden_states = self.backbone.encoder(packed, attention_mask=attention_mask).last_hidden_state
        return hidden_states.reshape(num_slots, hidden_size)[offsets]  # CLS opens every segment


def pack_sequences(
    lengths: list[int], one_per_row: bool = False, hidden_size: int | None = None
) -> tuple[list[int], list[int], int]:
    """
    Place sequences of `lengths` into rows, first-fit decreasing (or one per row, as long as the longest sequence).
    Returns the row and the start slot of every sequence, and the row length.

    Without `hidden_size` the rows are as long as the longest sequence. With it, the row length minimises the encoder's
    cost, `slots * (6 * hidden_size + row_length)`: a transformer layer (MLP ratio 4) spends `24 D^2` FLOPs per slot in
    its linear layers and `4 D L` in attention, so longer rows waste fewer padding slots but pay more per slot. Each
    row count `r` below the one at the longest sequence is a candidate with the shortest row length (at least
    `ceil(total / r)`) at which first-fit decreasing needs at most `r` rows, found by bisection; row counts are tried
    from the most to the fewest until even a row without padding would cost more than the best found.
    """
    longest = max(lengths)
    if one_per_row:
        return list(range(len(lengths))), [0] * len(lengths), longest
    rows, starts, num_rows = _first_fit_decreasing(lengths, longest)
    if hidden_size is None:
        return rows, starts, longest

    def cost(num_rows: int, capacity: int) -> int:
        return num_rows * capacity * (6 * hidden_size + capacity)

    total = sum(lengths)
    best = (cost(num_rows, longest), rows, starts, longest)
    for target in range(num_rows - 1, 0, -1):
        low = max(longest, -(-total // target))
        if total * (6 * hidden_size + low) >= best[0]:
            break  # even without padding, this and every longer row length would cost more
        # the longest rows worth trying: `target` rows of them cost less than the best found
        high = int((math.sqrt(36 * hidden_size**2 + 4 * best[0] / target) - 6 * hidden_size) / 2)
        if high < low:
            continue
        fit = _first_fit_decreasing(lengths, high)  # the packing at `high`, kept as `high` shrinks
        if fit[2] > target:
            continue
        while low < high:  # first-fit decreasing needs fewer rows as they lengthen (nearly always: it is a heuristic)
            middle = (low + high) // 2
            attempt = _first_fit_decreasing(lengths, middle)
            if attempt[2] <= target:
                high, fit = middle, attempt
            else:
                low = middle + 1
        if cost(fit[2], high) < best[0]:
            best = (cost(fit[2], high), fit[0], fit[1], high)
    return best[1], best[2], best[3]


def _first_fit_decreasing(lengths: list[int], capacity: int) -> tuple[list[int], list[int], int]:
    rows, starts, free = [0] * len(lengths), [0] * len(lengths), []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, space in enumerate(free) if space >= lengths[index]), len(free))
        if row == len(free):
            free.append(capacity)
        rows[index], starts[index] = row, capacity - free[row]
        free[row] -= lengths[index]
    return rows, starts, len(free)


class IFAMPreTrainedModel(Dinov2PreTrainedModel):
    """
    DINOv2's pretrained-model base (weight initialisation, attention backends, gradient checkpointing) with the iFAM
    config. Two declarations differ from DINOv2's, for measured reasons:

    - `_supports_flash_attn = False`: flash-attention kernels cannot express the packed stage-2 path's block-diagonal
      mask, and a mask that is not applied would let packed images see each other. SDPA, eager and flex attention all
      take the masks exactly (tested: probabilities to masked keys are 0 in every layer).
    - `_can_compile_fullgraph = False`: stage 2's token selection has data-dependent shapes (`nonzero`, packing), so
      `torch.compile(fullgraph=True)` breaks the graph there; `torch.compile` with graph breaks works (tested).
    """

    config: IFAMConfig
    config_class = IFAMConfig
    base_model_prefix = "ifam"
    _no_split_modules = ["Dinov2Embeddings", "Dinov2Layer", "Dinov2WithRegistersEmbeddings", "Dinov2WithRegistersLayer"]
    _supports_flash_attn = False
    _can_compile_fullgraph = False
    _can_record_outputs = None  # the stages' backbones record their own hidden states and attentions

    def save_pretrained(self, save_directory, *args, **kwargs):
        """
        [`PreTrainedModel.save_pretrained`], and the folder serves the `ifam-explanation` pipeline and iFAM's image
        processor too: `config.json` names them (`custom_pipelines`, as `Pipeline.save_pretrained` writes it, and
        `auto_map["AutoImageProcessor"]`) and their modules are copied beside this one. The one place every save path
        (training, conversion, publishing, `push_to_hub`, `Pipeline.save_pretrained`) goes through.
        """
        # A relative import, on purpose: transformers' `custom_object_save` copies every relatively imported module of
        # this file (here `pipeline_ifam.py` and its `image_processing_ifam.py`) beside the weights. Imported here, not
        # at the top, so that loading the model does not import the pipeline machinery.
        from .pipeline_ifam import name_in_config

        name_in_config(self.config)
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module) -> None:
        # DINOv2's initialisation (embeddings, linear and convolution layers, layer scale); transformers' registers
        # variant has its own embedding and layer-scale classes, initialised alike; then the prototypes.
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, Dinov2WithRegistersEmbeddings):
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            init.trunc_normal_(module.cls_token, mean=0.0, std=std)
            if module.mask_token is not None:
                init.zeros_(module.mask_token)
            init.zeros_(module.register_tokens)
        elif isinstance(module, Dinov2WithRegistersLayerScale):
            init.constant_(module.lambda1, self.config.layerscale_value)
        elif isinstance(module, IFAMPartDiscovery):
            # PyTorch's default for a 1x1 projection, as in PDiscoFormer: prototypes comparable to unit-variance
            # features (stage 1's width, which differs from stage 2's with a separate stage-1 backbone)
            bound = 1 / math.sqrt(module.prototypes.shape[1])
            init.uniform_(module.prototypes, -bound, bound)


class IFAMForImageClassification(IFAMPreTrainedModel):
    """
    iFAM image classifier. `logits` come from stage 2, which sees only `token_mask`: stage 1's foreground patches, or
    the `token_mask` passed by the caller (to audit a prediction, or to run the ground-truth-mask baseline).

    Example:

    ```python
    >>> import torch, modeling_ifam
    >>> from modeling_ifam import IFAMForImageClassification
    >>> model = IFAMForImageClassification.from_dinov2("facebook/dinov2-small", num_parts=4, id2label={0: "a", 1: "b"})
    >>> outputs = model(torch.randn(1, 3, 224, 224))
    >>> outputs.logits.shape, outputs.token_mask.shape  # (1, 2), (1, 256)
    ```
    """

    # The loss is a batch mean of several terms, not a sum to be divided by `num_items_in_batch`: `Trainer` must not
    # pass that keyword to `forward`, and averages over gradient-accumulation steps itself.
    accepts_loss_kwargs = False

    def __init__(self, config: IFAMConfig):
        super().__init__(config)
        self.stage1 = IFAMPartDiscovery(config)
        self.stage2 = IFAMMaskedClassifier(config)
        self.post_init()

    @classmethod
    def from_dinov2(
        cls, pretrained_model_name_or_path: str, stage1: str | None = None, **config_kwargs
    ) -> "IFAMForImageClassification":
        """
        Build iFAM whose two stages both start from one DINOv2 (or DINOv2-with-registers) checkpoint, a hub id or a
        local folder. `config_kwargs` set the iFAM options (`num_parts=`, `id2label=`, `stage1_image_size=`, ...); the
        backbone's own options (size, patch size, position table) come from the checkpoint.

        `stage1`: another DINOv2 checkpoint for stage 1's backbone (e.g. `"facebook/dinov2-small"` with
        `"facebook/dinov2-base"` for stage 2); its config becomes `config.stage1_config`. By default (or when it
        names the same checkpoint) both stages start from `pretrained_model_name_or_path`, as in the paper.
        """
        backbone = cls._load_dinov2(pretrained_model_name_or_path)
        stage1_backbone = None
        if stage1 is not None and str(stage1) != str(pretrained_model_name_or_path):
            if "stage1_config" in config_kwargs:
                raise ValueError("Give either `stage1=` (a checkpoint) or `stage1_config=`, not both.")
            stage1_backbone = cls._load_dinov2(stage1)
            # the backbone's own config (model_type "dinov2"/"dinov2_with_registers"), nested as `stage1_config`
            config_kwargs["stage1_config"] = stage1_backbone.config.to_dict()
        clash = sorted(set(IFAMConfig.dinov2_options(backbone.config)) & set(config_kwargs))
        if clash:
            raise ValueError(f"{clash} come from the DINOv2 checkpoint and cannot be overridden in `from_dinov2`.")
        config = IFAMConfig.from_dinov2_config(backbone.config, **config_kwargs)
        model = cls(config)
        model.stage2.backbone.load_state_dict(backbone.state_dict())
        model.stage1.backbone.load_state_dict((stage1_backbone or backbone).state_dict())
        return model

    @staticmethod
    def _load_dinov2(name_or_path: str) -> Dinov2Model | Dinov2WithRegistersModel:
        model_type = AutoConfig.from_pretrained(name_or_path).model_type
        backbone_classes = {"dinov2": Dinov2Model, "dinov2_with_registers": Dinov2WithRegistersModel}
        if model_type not in backbone_classes:
            raise ValueError(
                f"{name_or_path!r} is a {model_type!r} checkpoint; `from_dinov2` takes a DINOv2 or "
                "DINOv2-with-registers checkpoint (load iFAM checkpoints with `from_pretrained`)."
            )
        return backbone_classes[model_type].from_pretrained(name_or_path)

    @classmethod
    def from_reference(cls, path_or_repo_id, **kwargs) -> "IFAMForImageClassification":
        """
        Convert a checkpoint of the authors' reference code (a file, a folder or a Hub repository id, in the iFAM or
        PDiscoFormer layouts, timm or transformers backbones); every size is read from the tensors. `kwargs`: see
        `modeling_ifam.convert_reference.convert_reference` (`id2label=`, checks such as `num_parts=`, `revision=`).
        """
        # The converter is not part of the Hub remote code, and no import statement may name it: transformers copies
        # every relatively imported file of a remote-code module, and would demand convert_reference.py.
        try:
            converter = __import__(f"{__package__}.convert_reference", fromlist=["convert_reference"])
        except ImportError as error:
            raise ImportError("`from_reference` needs the ifam package (modeling_ifam.convert_reference).") from error
        return converter.convert_reference(path_or_repo_id, **kwargs)

    @torch.no_grad()
    def initialize_prototypes(
        self, pixel_values: torch.Tensor, iterations: int = 20, seed: int = 0
    ) -> torch.Tensor:
        """
        Set stage 1's K + 1 prototypes from the patch features of a batch of images (no labels, no masks), using the
        prior that the background-presence loss encodes: the background touches the image border.

        The default initialisation draws every prototype from one small uniform distribution, so which prototype is
        nearest to the object's features is chance, the background prototype included; with a frozen, object-salient
        backbone the first assignment can then give the whole object to the background and keep it there (issue 12:
        the background took most of the object in 6/10, 2/10 and 0/10 initialisations for K = 1, 2, 4). Here:

        1. a 2-means split of all the batch's patch features into background and foreground, started from the mean
           feature of the border patches (background) and the mean of each image's third of patches farthest from it
           (foreground);
        2. the background prototype (last) is the background side's mean; the K foreground prototypes are a k-means
           (k = K, `seed` picks the starting points) of the foreground side.

        Deterministic for given images and `seed`. Call it once, before training, on a model built from a pretrained
        backbone (a random backbone has no object-salient features to split). Returns the new prototypes `[K+1, D]`.
        """
        stage1 = self.stage1
        was_training = stage1.training
        stage1.eval()
        try:  # on stage 1's own grid: its resolution, patch size and registers
            features, (height, width) = stage1.patch_features(pixel_values)
            features = features.float()  # [B, N, D]
        finally:
            stage1.train(was_training)
        _, n, d = features.shape
        border = torch.zeros(height, width, dtype=torch.bool, device=features.device)
        border[0], border[-1], border[:, 0], border[:, -1] = True, True, True, True
        border = border.flatten()
        flat = features.reshape(-1, d)
        background = features[:, border].reshape(-1, d).mean(0)
        distance = (features - background).pow(2).sum(-1)  # [B, N]
        far = distance.topk(max(1, n // 3), dim=1).indices  # per image, the patches least like the border
        foreground = torch.gather(features, 1, far[..., None].expand(-1, -1, d)).reshape(-1, d).mean(0)
        is_foreground = torch.ones(len(flat), dtype=torch.bool, device=flat.device)
        for _ in range(iterations):  # 2-means, background against foreground
            is_foreground = (flat - foreground).pow(2).sum(-1) < (flat - background).pow(2).sum(-1)
            if is_foreground.all() or not is_foreground.any():
                break
            foreground, background = flat[is_foreground].mean(0), flat[~is_foreground].mean(0)
        candidates = flat[is_foreground] if is_foreground.any() else flat
        num_parts = self.config.num_parts
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(candidates), generator=generator)[:num_parts].to(candidates.device)
        centres = candidates[order].clone()
        if len(centres) < num_parts:  # fewer foreground patches than parts: repeat them
            centres = centres[torch.arange(num_parts, device=centres.device) % len(centres)]
        for _ in range(iterations):  # k-means of the foreground side, one centre per part
            assignment = torch.cdist(candidates, centres).argmin(1)
            for part in range(num_parts):
                if (assignment == part).any():
                    centres[part] = candidates[assignment == part].mean(0)
        prototypes = torch.cat([centres, background[None]])
        stage1.prototypes.copy_(prototypes.to(stage1.prototypes))
        return stage1.prototypes.detach().clone()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        parts_to_drop: list[int] | None = None,
        token_removal_percentile: float | None = None,
        use_token_removal: bool | None = None,
        **kwargs,
    ) -> IFAMImageClassifierOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Height and width must be multiples of the patch size; position embeddings are interpolated as in
                DINOv2.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class indices in `[0, num_labels)`; when given, `loss` is the full training objective.
            token_mask (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
                Replaces stage 1's selection: True for the patches stage 2 may see.
            parts_to_drop (`list[int]`, *optional*):
                Foreground parts whose patches are hidden from stage 2 (part removal). Defaults to
                `config.parts_to_drop`.
            token_removal_percentile (`float`, *optional*):
                Apply the calibrated thresholds of this percentile (token removal). Defaults to
                `config.token_removal_percentile`.
            use_token_removal (`bool`, *optional*):
                `False` switches token removal off for this call whatever the defaults say.

        Returns:
            [`IFAMImageClassifierOutput`]
        """
        if kwargs:
            raise TypeError(f"IFAMForImageClassification.forward got unexpected arguments {sorted(kwargs)}.")
        num_patches = self._check_pixel_values(pixel_values)
        given = None if token_mask is None else self._check_token_mask(token_mask, pixel_values.shape[0], num_patches)
        self._check_pixel_range(pixel_values, given)
        if labels is not None:
            self._check_loss_grid(pixel_values)
        grid = tuple(size // self.config.patch_size for size in pixel_values.shape[-2:])  # stage 2's patch grid
        stage1 = self.stage1(pixel_values)

        if token_mask is not None:
            visible = self._check_token_mask(token_mask, pixel_values.shape[0], num_patches)
            weights = visible.to(stage1.part_maps.dtype)
        else:
            visible, weights = self.select_tokens(
                stage1,
                parts_to_drop=self.config.parts_to_drop if parts_to_drop is None else parts_to_drop,
                thresholds=self._thresholds(token_removal_percentile, use_token_removal),
                grid=grid,
            )
        logits = self.stage2(pixel_values, visible, weights)

        loss = loss_terms = None
        if labels is not None:
            self._check_labels(labels, pixel_values.shape[0])
            loss_terms = self.loss_terms(pixel_values, labels, logits, stage1)
            weights_by_term = self.config.loss_weights
            loss = sum(weights_by_term[name] * value for name, value in loss_terms.items())

        return IFAMImageClassifierOutput(
            loss=loss,
            logits=logits,
            stage1_logits=stage1.logits,
            part_maps=stage1.part_maps,
            part_distances=stage1.part_distances,
            token_mask=visible,
            loss_terms=loss_terms,
        )

    def select_tokens(
        self,
        stage1: IFAMPartDiscoveryOutput,
        parts_to_drop: list[int] = (),
        thresholds: torch.Tensor | None = None,
        grid: tuple[int, int] | None = None,
    ) -> tuple[torch.BoolTensor, torch.FloatTensor]:
        """
        Discretize the part maps into the stage-2 token mask, on `grid` (stage 2's patch grid `(H, W)`; default:
        stage 1's).

        When stage 1's grid differs (`config.stage1_image_size`, another stage-1 patch size), its part probabilities
        and distances are first brought to `grid` by bilinear interpolation (`resize_part_outputs`); the rule below
        then applies on `grid` as it is. With equal grids nothing is resized (the paper's computation).

        A patch is visible when its argmax part is a kept foreground part; with `thresholds` (`[K]`), a patch farther
        from its part's prototype than that part's threshold goes to the background (token removal). In training, each
        foreground part is also dropped with probability `config.part_dropout_stage2`, independently per image.

        Returns the hard mask `[B, N]` (bool) and its straight-through version `[B, N]` (float: hard values forward,
        gradient of the soft foreground probability backward; the soft probability itself with soft masks).
        """
        part_maps, part_distances = self.part_maps_on_grid(stage1, grid, with_distances=thresholds is not None)
        part_maps = part_maps.flatten(2)  # [B, K+1, N]
        batch_size, num_parts = part_maps.shape[0], part_maps.shape[1] - 1
        if isinstance(parts_to_drop, (str, bytes)) or not all(isinstance(p, int) for p in parts_to_drop):
            raise TypeError(f"`parts_to_drop` must be a list of part indices (int), got {parts_to_drop!r}.")
        bad = [p for p in parts_to_drop if not 0 <= p < num_parts]
        if bad:
            raise ValueError(f"`parts_to_drop` holds part indices {bad} outside [0, num_parts={num_parts}).")
        keep = torch.ones(batch_size, num_parts + 1, dtype=torch.bool, device=part_maps.device)  # [B, K+1]
        keep[:, list(parts_to_drop)] = False
        keep[:, -1] = False  # the background is never visible
        if self.training and self.config.part_dropout_stage2 > 0:
            dropped = torch.rand(batch_size, num_parts, device=keep.device) < self.config.part_dropout_stage2
            keep[:, :-1] &= ~dropped

        assignment = part_maps.argmax(dim=1)  # [B, N]
        visible = keep.gather(1, assignment)
        if thresholds is not None:
            distance = part_distances.flatten(2).gather(1, assignment[:, None]).squeeze(1)  # [B, N]
            # float32 like the distances (stage 1 computes them so under autocast too): thresholds are calibrated there
            distance = distance.float()
            limit = F.pad(thresholds.to(distance), (0, 1), value=float("inf"))[assignment]
            visible &= distance <= limit
        soft_foreground = (part_maps * keep[..., None]).sum(dim=1)  # [B, N]
        if self.config.use_soft_masks:
            return visible, soft_foreground
        return visible, straight_through(visible, soft_foreground)

    @staticmethod
    def part_maps_on_grid(
        stage1: IFAMPartDiscoveryOutput, grid: tuple[int, int] | None = None, with_distances: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Stage 1's part probabilities and squared distances (`[B, K+1, H, W]`) on `grid` (default: stage 1's own):
        what `select_tokens` discretizes and token removal thresholds. Bilinear (`align_corners=False`) when the grids
        differ; `stage1`'s tensors as they are otherwise.
        """
        grid = stage1.part_maps.shape[-2:] if grid is None else grid
        return resize_part_outputs(stage1.part_maps, stage1.part_distances if with_distances else None, grid)

    def loss_terms(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor,
        stage1: IFAMPartDiscoveryOutput,
    ) -> dict[str, torch.Tensor]:
        """
        The unweighted terms of the training objective; a term whose weight is 0 is not computed. Equivariance (a
        second stage-1 pass on a randomly transformed batch) is a training-only term.
        """
        weights = self.config.loss_weights
        maps = stage1.part_maps
        terms = {
            "stage2_classification": lambda: F.cross_entropy(logits, labels),
            "stage1_classification": lambda: F.cross_entropy(stage1.logits, labels),
            "presence": lambda: presence_loss(maps),
            "background": lambda: background_presence_loss(maps),
            "entropy": lambda: pixelwise_entropy_loss(maps),
            "total_variation": lambda: total_variation_loss(maps),
            "orthogonality": lambda: orthogonality_loss(stage1.part_features),
            "concentration": lambda: concentration_loss(maps),
            "equivariance": lambda: self._equivariance_loss(pixel_values, maps),
        }
        if not self.training:
            del terms["equivariance"]
        return {name: compute() for name, compute in terms.items() if weights[name] > 0}

    def _equivariance_loss(self, pixel_values: torch.Tensor, part_maps: torch.Tensor) -> torch.Tensor:
        """The part maps of an affine-transformed batch, warped back, should be the batch's part maps."""
        transform = RandomAffine.sample(pixel_values.shape[0], device=pixel_values.device)
        transformed_maps = self.stage1(transform.apply(pixel_values)).part_maps
        return equivariance_loss(part_maps, transform.invert(transformed_maps))

    def _thresholds(self, percentile: float | None, enabled: bool | None) -> torch.Tensor | None:
        if enabled is False:
            return None
        percentile = self.config.token_removal_percentile if percentile is None else percentile
        if percentile is None:
            if enabled:
                raise ValueError("`use_token_removal=True` needs `token_removal_percentile` (call or config).")
            return None
        thresholds = self.config.thresholds_for(percentile)
        if thresholds is None:
            raise self.config.missing_thresholds_error([percentile])
        return torch.tensor(thresholds, device=self.device)

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> int:
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
            raise ValueError(f"`pixel_values` must be a tensor of shape (batch, channels, height, width), got {shape}.")
        if not pixel_values.is_floating_point():
            raise TypeError(f"`pixel_values` must be a floating-point tensor (normalized pixels, as the image "
                            f"processor returns them), got {pixel_values.dtype}.")
        if pixel_values.shape[0] == 0:
            raise ValueError(f"`pixel_values` is an empty batch (shape {tuple(pixel_values.shape)}).")
        if pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"`pixel_values` has {pixel_values.shape[1]} channels, the model expects {self.config.num_channels}."
            )
        height, width = pixel_values.shape[-2:]
        patch = self.config.patch_size
        if height % patch or width % patch or not height or not width:
            raise ValueError(
                f"`pixel_values` of size {height}x{width} is not a (non-zero) multiple of the patch size {patch}; "
                f"resize or crop to a multiple (the image processor does)."
            )
        stage1_patch = self.stage1.patch_size
        if self.config.stage1_image_size is None and (height % stage1_patch or width % stage1_patch):
            # stage 1 sees the image as it is: its patches (another size with a separate stage-1 backbone) must tile it
            raise ValueError(
                f"`pixel_values` of size {height}x{width} is not a multiple of stage 1's patch size "
                f"{self.stage1.patch_size}; resize or crop to a multiple, or set `stage1_image_size`."
            )
        return (height // patch) * (width // patch)

    def _check_pixel_range(self, pixel_values: torch.Tensor, token_mask: torch.Tensor | None) -> None:
        """NaN/inf, or values past the float16 range (normalized pixels are within a few units), give NaN logits;
        with a given `token_mask`, only the patches stage 2 sees count (the others cannot reach the logits)."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        patch, (batch_size, _, height, width) = self.config.patch_size, pixel_values.shape
        peaks = pixel_values.detach().abs().amax(1).view(batch_size, height // patch, patch, width // patch, patch)
        peaks = peaks.amax((2, 4)).flatten(1)  # [B, N], NaN where a patch holds one
        if token_mask is not None:
            peaks = peaks.masked_fill(~token_mask, 0)
        peak = float(peaks.max())
        if not peak <= MAX_PIXEL_MAGNITUDE:
            finite = torch.isfinite(peaks).all(1)
            raise ValueError(
                f"`pixel_values` holds non-finite values (NaN or inf) in images "
                f"{(~finite).nonzero().flatten().tolist()} of the batch." if not finite.all() else
                f"`pixel_values` holds values up to {peak:.3g} in magnitude; expected normalized pixels (the image "
                f"processor's output), at most {MAX_PIXEL_MAGNITUDE:g} (the float16 range)."
            )

    def _check_loss_grid(self, pixel_values: torch.Tensor) -> None:
        """The presence losses pool the part maps 3x3 (the background's also needs a border): at least 3 (4) patches,
        on stage 1's grid (where the part losses are computed: `stage1_image_size`'s when it is set)."""
        weights = self.config.loss_weights
        need = 4 if weights["background"] > 0 else 3 if weights["presence"] > 0 else 1
        patch, size = self.stage1.patch_size, self.config.stage1_image_size
        height, width = pixel_values.shape[-2:] if size is None else (size, size)
        rows, columns = height // patch, width // patch
        if min(rows, columns) < need:
            seen = "" if size is None else f" (stage 1 sees it at `stage1_image_size` {size}x{size})"
            raise ValueError(
                f"`pixel_values` of size {pixel_values.shape[-2]}x{pixel_values.shape[-1]}{seen} gives a "
                f"{rows}x{columns} patch grid (stage 1's); with `labels`, the part losses need at least "
                f"{need}x{need} patches ({need * patch}x{need * patch} pixels)."
            )

    @staticmethod
    def _check_token_mask(token_mask: torch.Tensor, batch_size: int, num_patches: int) -> torch.BoolTensor:
        if not isinstance(token_mask, torch.Tensor):
            raise TypeError(f"`token_mask` must be a boolean tensor, got {type(token_mask).__name__}.")
        if tuple(token_mask.shape) != (batch_size, num_patches):
            raise ValueError(
                f"`token_mask` must have shape (batch_size, num_patches) = ({batch_size}, {num_patches}), "
                f"got {tuple(token_mask.shape)}."
            )
        if token_mask.dtype != torch.bool:
            if ((token_mask != 0) & (token_mask != 1)).any():
                raise ValueError("`token_mask` must be boolean (or hold only 0 and 1).")
            token_mask = token_mask.bool()
        return token_mask

    def _check_labels(self, labels: torch.Tensor, batch_size: int) -> None:
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"`labels` must be a tensor of class indices, got {type(labels).__name__}.")
        if tuple(labels.shape) != (batch_size,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(
                f"`labels` must be integer class indices of shape ({batch_size},), got {labels.dtype} of shape "
                f"{tuple(labels.shape)}."
            )
        out_of_range = labels[(labels < 0) | (labels >= self.config.num_labels)]
        if out_of_range.numel():
            raise ValueError(
                f"`labels` holds {out_of_range.unique().tolist()} outside [0, num_labels={self.config.num_labels})."
            )


__all__ = ["IFAMForImageClassification", "IFAMPreTrainedModel", "IFAMImageClassifierOutput"]
