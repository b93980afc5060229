"""train.py's recipes end to end on a few steps: EMA weights saved and evaluated, epoch checkpoints, the ERM baseline
(`--model_type dinov2`), the ground-truth-mask upper bound, and two processes (gloo) equal to one with accumulation."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.swa_utils import AveragedModel
from transformers import AutoModelForImageClassification, Dinov2ForImageClassification

from conftest import TINY_RUN, run_training
from modeling_ifam import IFAMForImageClassification

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--calibration_percentiles", "--max_eval_samples", "8", "--per_device_eval_batch_size", "8"]


def test_ema_weights_are_saved_and_evaluated_and_epochs_checkpointed(tmp_path, monkeypatch):
    """64 images in batches of 16: 4 steps an epoch; 6 steps end mid-epoch 2, so `epoch` saves checkpoint-4 only."""
    decay = 0.5
    trained, evaluated = [], []
    update = AveragedModel.update_parameters

    def record_update(self, model):  # the training weights after every optimizer step
        trained.append({name: p.detach().clone() for name, p in model.named_parameters()})
        return update(self, model)

    forward = IFAMForImageClassification.forward

    def record_forward(self, *args, **kwargs):  # the weights of every model evaluated
        if not self.training:
            evaluated.append({name: p.detach().clone() for name, p in self.named_parameters()})
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(AveragedModel, "update_parameters", record_update)
    monkeypatch.setattr(IFAMForImageClassification, "forward", record_forward)
    run_training(tmp_path, *QUICK, "--per_device_train_batch_size", "16", "--max_train_steps", "6",
                 "--ema_decay", str(decay), "--checkpointing_steps", "epoch")

    assert len(trained) == 6
    ema = dict(trained[0])  # the first update copies the weights, later ones average: e = d e + (1 - d) w
    for weights in trained[1:]:
        ema = {name: decay * ema[name] + (1 - decay) * weights[name] for name in ema}
    saved = dict(IFAMForImageClassification.from_pretrained(tmp_path).named_parameters())
    for name, value in ema.items():
        torch.testing.assert_close(saved[name].detach(), value, atol=1e-6, rtol=1e-5, msg=name)
    assert any(not torch.allclose(saved[n].detach(), trained[-1][n], atol=1e-4) for n in ema)  # EMA != last weights
    final_evaluations = evaluated[-2:]  # validation and test, after training
    for weights in final_evaluations:
        for name, value in ema.items():
            torch.testing.assert_close(weights[name], value, atol=1e-6, rtol=1e-5, msg=name)

    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-4"]
    assert json.loads((tmp_path / "checkpoint-4" / "progress.json").read_text()) == {"completed_steps": 4}


def test_dinov2_erm_baseline_end_to_end(tmp_path):
    results = run_training(tmp_path, *QUICK, "--model_type", "dinov2", "--max_train_steps", "2",
                           "--checkpointing_steps", "100")
    model = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert type(model) is Dinov2ForImageClassification and model.config.num_labels == 2
    assert not (tmp_path / "modeling_ifam.py").exists()
    for metrics in results.values():  # a single-pass classifier: no stage 1, no token mask
        assert {"accuracy", "worst_group_accuracy", "roc_auc"} <= set(metrics)
        assert not {"stage1_accuracy", "coverage", "fg_miou"} & set(metrics)
    assert json.loads((tmp_path / "metrics.json").read_text()) == results


def test_ground_truth_token_masks_end_to_end(tmp_path, monkeypatch):
    """Stage 2 sees the ground-truth foreground patches in every training and evaluation forward, never stage 1's."""
    from ifam_data.synthetic import mask_to_token_mask
    from ifam_train.arguments import parse_args
    from ifam_train.data import eval_dataloader, load_training_data
    from modeling_ifam import dinov2_image_processor

    calls = []
    forward = IFAMForImageClassification.forward

    def record_forward(self, pixel_values, *args, token_mask=None, **kwargs):
        calls.append((self.training, token_mask))
        return forward(self, pixel_values, *args, token_mask=token_mask, **kwargs)

    monkeypatch.setattr(IFAMForImageClassification, "forward", record_forward)
    argv = [*TINY_RUN, *QUICK, "--token_mask_source", "ground_truth", "--max_train_steps", "2",
            "--checkpointing_steps", "100", "--output_dir", str(tmp_path)]
    results = run_training(tmp_path, *argv[:-2])

    assert sum(training for training, _ in calls) == 2
    assert all(token_mask is not None for _, token_mask in calls)
    # the evaluated coverage is the ground-truth patches' share, computed here from the split's masks
    data_args, args = parse_args(argv)
    data = load_training_data(data_args, seed=args.seed)
    for split in ("validation", "test"):
        loader = eval_dataloader(data[split], dinov2_image_processor(28), batch_size=8)
        expected = torch.cat([mask_to_token_mask(batch["mask"], 7, threshold=0.5).float().mean(-1) for batch in loader])
        assert results[split]["coverage"] == pytest.approx(expected.mean().item(), abs=1e-6)
        assert 0 < results[split]["coverage"] < 1


def test_two_processes_equal_one_with_gradient_accumulation(tmp_path):
    """
    Two gloo processes with batch 4 each, and one process accumulating two batches of 4: the same 8 images per step
    (the seedable sampler shards batch 2k to process 0 and 2k + 1 to process 1, which one process accumulates in that
    order), the same mean gradient, the same learning rates (scaled by the effective batch, 8 in both). Random draws
    are made deterministic (tests/deterministic_train.py; dropouts 0), and the model has no batch norm.
    Not bit-exact: the all-reduce sums the two gradients in another order than accumulation does. 1e-5 bounds the
    difference after 3 AdamW steps (7.7e-7 measured, on key biases: their gradient is mathematically 0, and Adam
    normalises its rounding noise).

    `accelerate launch --cpu --num_processes 2` starts ONE process (its simple launcher); two CPU processes need the
    multi-process launcher with the CPU forced: `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2`.
    """
    script = str(ROOT / "tests" / "deterministic_train.py")
    common = ["--synthetic_num_train", "64", "--image_size", "28", "--num_parts", "2", "--max_train_steps", "3",
              "--checkpointing_steps", "100", "--part_dropout", "0", "--part_dropout_stage2", "0",
              "--per_device_train_batch_size", "4", *QUICK]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, script, *common, "--gradient_accumulation_steps", "2",
                          "--output_dir", str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    with socket.socket() as probe:  # a free port: not 29500, which a concurrent run of the suite may hold
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--main_process_port", port,
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", script, *common,
                          "--output_dir", str(tmp_path / "two")],
                         env={**env, "ACCELERATE_USE_CPU": "true"}, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    for run in (one, two):  # really 8 images a step: two processes, or one accumulating two batches
        assert "for 3 steps (1 epochs, effective batch 8)" in run.stdout + run.stderr

    reference = load_file(tmp_path / "one" / "model.safetensors")
    distributed = load_file(tmp_path / "two" / "model.safetensors")
    assert reference.keys() == distributed.keys() and "stage1.prototypes" in reference
    for name, value in reference.items():
        torch.testing.assert_close(distributed[name], value, atol=1e-5, rtol=0, msg=name)
