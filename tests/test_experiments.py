"""The experiment helpers: the linear probes of experiments/probe_features.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from transformers import Dinov2Config, Dinov2Model

from experiments import probe_features


def test_linear_probe_separates_separable_data_and_reads_standardised_inputs():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(400, 5, generator=generator) * torch.tensor([1.0, 50.0, 0.01, 3.0, 1.0]) + 100.0
    targets = (inputs[:, 2] > 100.0).long()  # carried by the smallest-scale feature only
    probe, standardise = probe_features.fit_linear(inputs, targets, 2)
    assert torch.equal(probe_features.predict(probe, standardise, inputs), targets)
    shuffled = targets[torch.randperm(400, generator=generator)]  # no signal: far from perfect
    probe, standardise = probe_features.fit_linear(inputs, shuffled, 2)
    assert (probe_features.predict(probe, standardise, inputs) == shuffled).float().mean() < 0.7


def test_probe_script_reports_every_layer(tmp_path):
    config = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=7,
                          image_size=56)
    torch.manual_seed(0)
    Dinov2Model(config).save_pretrained(tmp_path / "backbone")
    probe_features.main([str(tmp_path / "backbone"), "--num_train", "64", "--output", str(tmp_path / "probe.json")])
    report = json.loads((tmp_path / "probe.json").read_text())
    assert [row["layer"] for row in report["layers"]] == [1, 2]
    assert 20 < report["object_patch_share"] < 45
    for row in report["layers"]:
        for split in ("validation", "test"):
            assert 0 <= row[f"{split}_foreground_iou"] <= 100 and 0 <= row[f"{split}_class_accuracy"] <= 100


def test_throughput_benchmark_writes_its_figures(tmp_path):
    """A tiny run of benchmarks/throughput.py (ViT-S at 28 px, one repeat) prints and writes every ratio of its groups;
    the settings, paths included, are written as JSON (a Path once ended a 7-minute run at the last line)."""
    root = Path(__file__).resolve().parents[1]
    output = tmp_path / "figures" / "throughput.json"
    subprocess.run([sys.executable, str(root / "benchmarks" / "throughput.py"), "--image_size", "28", "--batch_size",
                    "2", "--warmup", "0", "--repeats", "1", "--varied_draws", "1", "--only", "main", "stage1_half",
                    "--output_file", str(output)], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    figures = json.loads(output.read_text())
    assert figures["setting"]["output_file"] == str(output) and figures["setting"]["image_size"] == 28
    assert {"inference_ratio_vs_dinov2", "inference_ratio_vs_dinov2_varied", "stage2_ratio_25_vs_100",
            "inference_ratio_vs_dinov2_stage1_half"} <= set(figures["ratios"])
    assert all(value > 0 for value in figures["ratios"].values())
    assert 0 <= figures["varied_padding"]["packed"] <= figures["varied_padding"]["padded"]


def test_experiment_evaluates_a_run_at_the_size_it_was_trained_at(tmp_path):
    """A 112-px run from the shipped 56-px backbone keeps a 56-px position table (`config.image_size`); the
    experiment's evaluation (parts, throughput) must read its images at 112 px, the size of its saved processor."""
    from experiments import synthetic
    from modeling_ifam import IFAMConfig, IFAMForImageClassification, dinov2_image_processor

    folder = tmp_path / "run"
    IFAMForImageClassification(IFAMConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                          intermediate_size=64, patch_size=7, image_size=56, num_parts=1,
                                          num_labels=2)).save_pretrained(folder)
    dinov2_image_processor(112).save_pretrained(folder)
    args = synthetic.parse(["--num_train", "40", "--work_dir", str(tmp_path / "work")])
    model, loader = synthetic.evaluate_split(folder, "ood", 0, "train", args)
    batch = next(iter(loader))
    assert model.config.image_size == 56
    assert batch["pixel_values"].shape[1:] == (3, 112, 112)
