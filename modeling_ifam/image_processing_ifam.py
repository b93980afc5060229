"""The image processor of an iFAM model: DINOv2's preprocessing (`dinov2_image_processor`, the one place it is built),
plus the geometry that maps the patch-level explanation back onto the input image (`post_process_part_maps`).

`IFAMImageProcessor` is registered for `AutoImageProcessor` (`register_for_auto_class` in `__init__.py`): its
`save_pretrained` copies this module beside the weights, and `IFAMPreTrainedModel.save_pretrained` names it in
`config.json`'s `auto_map` (see `IFAMImageProcessorMixin.to_dict` for why there and not in `preprocessor_config.json`).
`check_image` / `check_images` are the front door (issue 17): `IFAMImageProcessor.preprocess` calls them on every image
before transformers' code runs, so that an image it cannot take (zero-sized, not a number, NaN or infinite values, an
empty batch, a file that cannot be decoded) raises a `ValueError`/`TypeError` naming that image instead of failing deep
inside a library. `ifam_data.verify` re-exports `check_image`.

This module is copied to the Hub for ``trust_remote_code`` users: it imports only numpy, PIL, torch and transformers.
"""

from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BitImageProcessor, BitImageProcessorPil
from transformers.image_transforms import get_resize_output_image_size
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ChannelDimension, PILImageResampling


# `config.json`'s `auto_map` entry of the processor (written by `IFAMPreTrainedModel.save_pretrained`)
AUTO_MAP_ENTRY = {"AutoImageProcessor": "image_processing_ifam.IFAMImageProcessor"}
OUTSIDE = -1  # `segmentation` value of pixels that the centre crop cut away: no patch, neither stage saw them


def _resized_size(size: dict, do_resize: bool, height: int, width: int) -> tuple[int, int]:
    """The (height, width) that the processor's resize gives an image of `height` x `width` (as its backends do)."""
    if not do_resize:
        return height, width
    size = {key: value for key, value in dict(size).items() if value is not None}
    if "shortest_edge" in size and "longest_edge" in size:
        from transformers.image_transforms import get_size_with_aspect_ratio

        return tuple(get_size_with_aspect_ratio((height, width), size["shortest_edge"], size["longest_edge"]))
    if "shortest_edge" in size:
        shape_only = np.broadcast_to(np.zeros((1, 1, 1), dtype=np.uint8), (1, height, width))  # no memory
        return tuple(get_resize_output_image_size(
            shape_only, size=size["shortest_edge"], default_to_square=False, input_data_format=ChannelDimension.FIRST
        ))
    if "max_height" in size and "max_width" in size:
        from transformers.image_utils import get_image_size_for_max_height_width

        return tuple(get_image_size_for_max_height_width((height, width), size["max_height"], size["max_width"]))
    if "height" in size and "width" in size:
        return size["height"], size["width"]
    raise ValueError(f"Unsupported `size` {size} in the image processor.")


def _crop_window(length: int, crop: int) -> int:
    """Offset of the centre crop along one axis (negative: the image was padded), as the backends compute it."""
    return (length - crop) // 2 if length >= crop else -((crop - length) // 2)


def _patch_index(length: int, resized: int, offset: int, cropped: int, grid: int) -> torch.Tensor:
    """
    For every pixel along one axis of the original image (`length` pixels): the index of the model's patch that covers
    its centre after the resize to `resized` and the crop of `cropped` pixels from `offset`, or -1 outside the crop.
    """
    centre = (torch.arange(length, dtype=torch.float64) + 0.5) * (resized / length) - offset
    index = torch.floor(centre / (cropped / grid)).long()
    return torch.where((centre >= 0) & (index < grid), index, torch.full_like(index, -1))


def _token_grid(num_tokens: int, part_grid: tuple[int, int], input_size: tuple[int, int]) -> tuple[int, int]:
    """
    Stage 2's patch grid `(H, W)`, the token mask's (`num_tokens = H * W`): the part maps' own grid when they have as
    many cells (both stages on one grid, the paper's setting), otherwise (stage 1 at `stage1_image_size`, or with
    another patch size) the factorisation of `num_tokens` whose aspect is closest to the model input's `input_size`.
    """
    if part_grid[0] * part_grid[1] == num_tokens:
        return part_grid
    aspect = input_size[0] / input_size[1]
    shapes = [(rows, num_tokens // rows) for rows in range(1, num_tokens + 1) if num_tokens % rows == 0]
    return min(shapes, key=lambda shape: abs(np.log(shape[0] / shape[1] / aspect)))


def post_process_part_maps(processor, outputs, target_sizes=None) -> list[dict[str, torch.Tensor]]:
    """The body of [`IFAMImageProcessor.post_process_part_maps`], usable with any DINOv2-style processor."""
    part_maps = outputs["part_maps"] if isinstance(outputs, dict) else outputs.part_maps
    token_mask = outputs["token_mask"] if isinstance(outputs, dict) else outputs.token_mask
    batch_size = part_maps.shape[0]
    if target_sizes is None:
        if not processor.do_center_crop:
            raise ValueError("`post_process_part_maps` needs `target_sizes` when the processor does no centre crop.")
        crop = processor.crop_size
        target_sizes = [(crop["height"], crop["width"])] * batch_size
        geometry = None  # the model's input itself
    else:
        geometry = True
    if isinstance(target_sizes, torch.Tensor):
        target_sizes = target_sizes.tolist()
    if len(target_sizes) != batch_size:
        raise ValueError(f"Got {len(target_sizes)} target sizes for a batch of {batch_size} part maps.")

    def model_input_size(height: int, width: int) -> tuple[int, int]:  # the (height, width) the model saw
        if geometry is None:
            return height, width
        if processor.do_center_crop:
            return processor.crop_size["height"], processor.crop_size["width"]
        return _resized_size(processor.size, processor.do_resize, height, width)

    # Everything on stage 2's grid (the token mask's). When stage 1 ran on another grid (`stage1_image_size`), its part
    # probabilities are brought there as the model does to select tokens (bilinear, `align_corners=False`), so that
    # `segmentation` is the argmax that made the stage-2 mask.
    grid_h, grid_w = _token_grid(
        token_mask.shape[-1], tuple(part_maps.shape[-2:]), model_input_size(*map(int, target_sizes[0]))
    )
    if tuple(part_maps.shape[-2:]) != (grid_h, grid_w):
        part_maps = torch.nn.functional.interpolate(
            part_maps.float(), size=(grid_h, grid_w), mode="bilinear", align_corners=False
        )
    assignment = part_maps.argmax(dim=1).cpu()  # [B, h, w], K = background
    visible = token_mask.reshape(batch_size, grid_h, grid_w).cpu().bool()

    results = []
    for index, (height, width) in enumerate(target_sizes):
        height, width = int(height), int(width)
        if geometry is None:
            rows = _patch_index(height, height, 0, height, grid_h)
            columns = _patch_index(width, width, 0, width, grid_w)
        else:
            resized_h, resized_w = _resized_size(processor.size, processor.do_resize, height, width)
            if processor.do_center_crop:
                crop_h, crop_w = processor.crop_size["height"], processor.crop_size["width"]
            else:
                crop_h, crop_w = resized_h, resized_w
            rows = _patch_index(height, resized_h, _crop_window(resized_h, crop_h), crop_h, grid_h)
            columns = _patch_index(width, resized_w, _crop_window(resized_w, crop_w), crop_w, grid_w)
        inside = (rows[:, None] >= 0) & (columns[None, :] >= 0)  # [H, W]
        r, c = rows.clamp_min(0)[:, None], columns.clamp_min(0)[None, :]
        segmentation = torch.where(inside, assignment[index][r, c], torch.full_like(inside, OUTSIDE, dtype=torch.long))
        stage2_mask = inside & visible[index][r, c]
        results.append({"segmentation": segmentation, "stage2_mask": stage2_mask})
    return results


def check_image(image: Any, name: str = "image") -> None:
    """
    Raise ``ValueError``/``TypeError`` naming ``name`` when ``image`` (a PIL image, or a numpy array / torch tensor in
    HW, HWC or CHW layout) cannot be preprocessed: zero-sized, not 2- or 3-dimensional, a dtype that is not a real
    number, or float values that are NaN or infinite. Called on every image at the top of
    `IFAMImageProcessor.preprocess` (through `check_images`) and by the `ifam-explanation` pipeline.
    """
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"{name} is zero-sized ({image.width}x{image.height} pixels).")
        return
    if isinstance(image, torch.Tensor):
        shape, dtype = tuple(image.shape), image.dtype
        real = not (image.is_complex() or dtype in (torch.quint8, torch.qint8, torch.qint32))
        floating = image.is_floating_point()
    elif isinstance(image, np.ndarray):
        shape, dtype = image.shape, image.dtype
        real = (np.issubdtype(dtype, np.number) or dtype == np.bool_) and not np.iscomplexobj(image)
        floating = np.issubdtype(dtype, np.floating)
    else:
        raise TypeError(f"{name} must be a PIL image, a numpy array, a torch tensor or a path or URL, got "
                        f"{type(image).__name__}.")
    if len(shape) not in (2, 3):
        raise ValueError(f"{name} must have 2 (HW) or 3 (HWC or CHW) dimensions, got shape {shape}.")
    if 0 in shape:
        raise ValueError(f"{name} is empty (shape {shape}).")
    if not real:
        raise TypeError(f"{name} must hold real numbers, got dtype {dtype}.")
    if floating:
        if isinstance(image, torch.Tensor):
            nan, inf = int(torch.isnan(image).sum()), int(torch.isinf(image).sum())
        else:
            nan, inf = int(np.isnan(image).sum()), int(np.isinf(image).sum())
        if nan or inf:
            raise ValueError(f"{name} holds {nan} NaN and {inf} infinite values.")


def check_images(images: Any, name: str = "images") -> None:
    """
    `check_image` on every image of what an image processor is given: one image (named "image"), a list or tuple of
    images (named ``images[i]``, nested lists ``images[i][j]``) or a batch array/tensor of 4 dimensions. Paths and URLs
    are skipped: `IFAMImageProcessorMixin.fetch_images` reads and checks them. Raises ``ValueError`` for an empty batch.
    """
    if isinstance(images, str):
        return
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError(f"`{name}` is an empty {type(images).__name__}: there is no image to preprocess.")
        for index, item in enumerate(images):
            if isinstance(item, (list, tuple)) or getattr(item, "ndim", None) == 4:
                check_images(item, f"{name}[{index}]")
            elif not isinstance(item, str):
                check_image(item, f"{name}[{index}]")
        return
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        if images.shape[0] == 0:
            raise ValueError(f"`{name}` is an empty batch (shape {tuple(images.shape)}): there is no image to "
                             "preprocess.")
        for index in range(images.shape[0]):
            check_image(images[index], f"{name}[{index}]")
        return
    check_image(images, "image" if name == "images" else name)


def describe_source(source: str, limit: int = 120) -> str:
    """A path, URL or base64 string, quoted and shortened for an error message."""
    return repr(source) if len(source) <= limit else repr(source[:limit]) + f"... ({len(source)} characters)"


class IFAMImageProcessorMixin:
    """What iFAM adds to DINOv2's image processor: the front-door checks and `post_process_part_maps`."""

    def preprocess(self, images, *args, **kwargs):
        """
        DINOv2's preprocessing (the backend's `preprocess`), after `check_images`: an image it cannot take raises a
        `ValueError`/`TypeError` naming it (`images[i]` in a batch) before transformers' code runs.
        """
        check_images(images)
        return super().preprocess(images, *args, **kwargs)

    def fetch_images(self, image_url_or_urls):
        """The backend's `fetch_images` (paths and URLs), where a source that cannot be decoded raises a `ValueError`
        naming it and the decoded image goes through `check_image`."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if not isinstance(image_url_or_urls, str):
            return super().fetch_images(image_url_or_urls)
        name = f"image {describe_source(image_url_or_urls)}"
        try:
            image = super().fetch_images(image_url_or_urls)
        except Exception as error:  # missing file, undecodable or truncated bytes, a zoo of PIL exception types
            raise ValueError(f"Could not read {name} ({type(error).__name__}: {error}).") from error
        check_image(image, name)
        return image

    def post_process_part_maps(self, outputs, target_sizes=None) -> list[dict[str, torch.Tensor]]:
        """
        Turn the patch-level explanation of [`IFAMForImageClassification`] into pixel maps, in the style of
        `post_process_semantic_segmentation`.

        Args:
            outputs ([`IFAMImageClassifierOutput`] or `dict`):
                Model outputs with `part_maps` (`[B, K + 1, h, w]`, background last) and `token_mask` (`[B, h * w]`).
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor` of shape `(batch_size, 2)`, *optional*):
                The (height, width) of the original images that this processor turned into the model's input: its
                resize and centre crop are inverted, so pixel (y, x) of an original image gets the label of the patch
                that covers it. Pixels the crop cut away belong to no part. `None`: the maps at the resolution of the
                model's input (`crop_size`).

        Returns:
            `list[dict]`, one per image: `segmentation` (`torch.LongTensor` of shape `(height, width)`: the part index,
            `K` for the background, `-1` outside the crop) and `stage2_mask` (`torch.BoolTensor` of shape
            `(height, width)`: the pixels whose patches stage 2 saw). Both are piecewise constant on the patch grid:
            a pixel's value is its patch's, exactly what the model used. When stage 1 ran at its own resolution
            (`config.stage1_image_size`), both are on stage 2's patch grid: `segmentation` is then the argmax of the
            part probabilities resized bilinearly to that grid, the rule that made the stage-2 mask.
        """
        return post_process_part_maps(self, outputs, target_sizes)

    def to_dict(self) -> dict:
        """
        The processor's parameters as `preprocessor_config.json` holds them: without `image_processor_type` and
        `auto_map`. `AutoImageProcessor` then reads the model's `config.json`, whose `auto_map` names this class
        (`IFAMPreTrainedModel.save_pretrained` writes it). An `auto_map` here would make every pipeline, the stock
        `image-classification` one included, try to load a remote *video* processor (transformers 5 derives
        `AutoVideoProcessor`'s entry from `AutoImageProcessor`'s, `IFAMVideoProcessor`, which does not exist) and ask
        "Do you wish to run the custom code?" on a terminal; `image_processor_type: IFAMImageProcessor` would stop
        `AutoImageProcessor` from reading `config.json` where the package is not installed.
        """
        output = super().to_dict()
        output.pop("image_processor_type", None)
        output.pop("auto_map", None)
        return output


class IFAMImageProcessor(IFAMImageProcessorMixin, BitImageProcessor):
    """DINOv2's image processor (`BitImageProcessor`, the torchvision backend) with `post_process_part_maps`."""


class IFAMImageProcessorPil(IFAMImageProcessorMixin, BitImageProcessorPil):
    """DINOv2's image processor (`BitImageProcessorPil`, the PIL backend) with `post_process_part_maps`."""


def dinov2_image_processor(image_size: int) -> IFAMImageProcessor:
    """
    DINOv2's evaluation preprocessing at a resolution: resize the short side to `image_size * 256 / 224` (bicubic),
    centre-crop to `image_size`, normalise with the ImageNet statistics.

    Args:
        image_size (`int`):
            The side of the square crop the model sees.

    Returns:
        `IFAMImageProcessor`: `BitImageProcessor`'s preprocessing, with `post_process_part_maps`.
    """
    return IFAMImageProcessor(
        size={"shortest_edge": round(image_size * 256 / 224)},
        crop_size={"height": image_size, "width": image_size},
        resample=PILImageResampling.BICUBIC,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
        do_convert_rgb=True,
    )


__all__ = ["IFAMImageProcessor", "IFAMImageProcessorPil", "dinov2_image_processor", "post_process_part_maps",
           "check_image", "check_images", "OUTSIDE", "AUTO_MAP_ENTRY"]
