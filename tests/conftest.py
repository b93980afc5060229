"""Tiny DINOv2-architecture configs built in the test: nothing is downloaded."""

import pytest
import torch

from configuration_ifam import IFAMConfig


TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    mlp_ratio=2,
    image_size=28,
    patch_size=7,
)


def tiny_config(**overrides) -> IFAMConfig:
    kwargs = {**TINY, "num_parts": 3, "id2label": {0: "cat", 1: "dog", 2: "bird"}, **overrides}
    return IFAMConfig(**kwargs)


def tiny_model(**overrides):
    from modeling_ifam import IFAMForImageClassification

    torch.manual_seed(0)
    return IFAMForImageClassification(tiny_config(**overrides)).eval()


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture
def pixel_values():
    return torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(1))
