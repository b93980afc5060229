"""Tiny DINOv2-architecture configs built in the test: nothing is downloaded."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from modeling_ifam import IFAMConfig


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


TINY_RUN = [
    "--synthetic_num_train", "64", "--image_size", "28", "--max_eval_samples", "16",
    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--max_train_steps", "4",
    "--checkpointing_steps", "2", "--num_parts", "2", "--model_name_or_path", "scratch",
]


def run_training(output_dir, *extra):
    from ifam_train import train

    return train.main([*TINY_RUN, "--output_dir", str(output_dir), *extra])


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One tiny train.py run shared by the tests that need a trained output folder."""
    folder = tmp_path_factory.mktemp("trained")
    results = run_training(folder, "--with_tracking")
    return folder, results


def load_demo_app():
    """`demo/app.py` (a script, not a package module) loaded by its path, once per process."""
    name = "ifam_demo_app"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "demo" / "app.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]
