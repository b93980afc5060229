"""The image processor of an iFAM model: DINOv2's, as transformers builds it.

No subclass and no `register_for_auto_class` here: `BitImageProcessor` is a transformers class, so a saved
`preprocessor_config.json` (`"image_processor_type": "BitImageProcessor"`) loads with `AutoImageProcessor` and
`pipeline` with or without `trust_remote_code`, and there is no code to ship. Registering transformers' own class would
copy transformers' module (with its package-relative imports) into the model folder; a subclass would add remote code
that does nothing but rename it.
"""

from transformers import BitImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling


def dinov2_image_processor(image_size: int) -> BitImageProcessor:
    """
    DINOv2's evaluation preprocessing at a resolution: resize the short side to `image_size * 256 / 224` (bicubic),
    centre-crop to `image_size`, normalise with the ImageNet statistics.

    Args:
        image_size (`int`):
            The side of the square crop the model sees.

    Returns:
        `BitImageProcessor`
    """
    return BitImageProcessor(
        size={"shortest_edge": round(image_size * 256 / 224)},
        crop_size={"height": image_size, "width": image_size},
        resample=PILImageResampling.BICUBIC,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
        do_convert_rgb=True,
    )
