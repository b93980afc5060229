"""Benchmark loaders (``datasets.DatasetDict``) and a built-in synthetic spurious-background benchmark."""

from .benchmarks import (
    BENCHMARKS,
    imagenet_to_in9_index,
    load_benchmark,
    load_cub,
    load_generic,
    load_imagenet,
    load_imagenet9,
    load_metashift,
    load_siim_acr,
    load_waterbirds,
    verify_images,
)
from .synthetic import BACKGROUND_KINDS, KEYPOINT_NAMES, make_synthetic_benchmark, mask_to_token_mask

__all__ = [
    "BACKGROUND_KINDS",
    "BENCHMARKS",
    "KEYPOINT_NAMES",
    "imagenet_to_in9_index",
    "load_benchmark",
    "load_cub",
    "load_generic",
    "load_imagenet",
    "load_imagenet9",
    "load_metashift",
    "load_siim_acr",
    "load_waterbirds",
    "make_synthetic_benchmark",
    "mask_to_token_mask",
    "verify_images",
]
