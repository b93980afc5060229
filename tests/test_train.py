"""train.py end to end on a tiny built-in benchmark: metrics, saved model, checkpoints, exact resume, options."""

import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

from ifam_train.arguments import parse_args
from ifam_train.optim import parameter_groups, set_trainable
from conftest import run_training, tiny_model

run = run_training


def test_training_writes_metrics_model_and_checkpoints(trained_run):
    folder, results = trained_run
    assert set(results) == {"validation", "test"}
    for metrics in results.values():
        for key in ("accuracy", "worst_group_accuracy", "stage1_accuracy", "fg_miou", "coverage"):
            assert 0.0 <= metrics[key] <= 1.0
    assert json.loads((folder / "metrics.json").read_text()) == results
    assert (folder / "checkpoint-2" / "progress.json").is_file()
    assert not list(folder.glob(".partial-*"))
    assert list((folder / "logs").rglob("events.out.tfevents.*"))  # TensorBoard through Accelerate's trackers
    statistics = json.loads((folder / "part_statistics.json").read_text())  # calibrated on the training split
    assert statistics["num_images"] == 64 and len(statistics["parts"]) == 2


def test_trained_model_loads_for_pipeline(trained_run):
    folder, _ = trained_run
    model = AutoModelForImageClassification.from_pretrained(folder)
    assert model.config.id2label and model.config.num_parts == 2
    image = Image.fromarray((torch.rand(28, 28, 3) * 255).byte().numpy())
    predictions = pipeline("image-classification", model=str(folder), device="cpu")(image)
    assert {p["label"] for p in predictions} == set(model.config.id2label.values())


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    run(tmp_path / "whole")
    reference = AutoModelForImageClassification.from_pretrained(tmp_path / "whole").state_dict()

    original_step, calls = torch.optim.AdamW.step, []

    def step_then_die(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # killed during the third step, after checkpoint-2
            raise KeyboardInterrupt
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed")
    monkeypatch.setattr(torch.optim.AdamW, "step", original_step)
    assert (tmp_path / "killed" / "checkpoint-2").is_dir() and not (tmp_path / "killed" / "model.safetensors").exists()

    run(tmp_path / "killed", "--resume_from_checkpoint", "latest")
    resumed = AutoModelForImageClassification.from_pretrained(tmp_path / "killed").state_dict()
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=0, msg=name)


def test_resume_without_checkpoint_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        run(tmp_path, "--resume_from_checkpoint", "latest")


def test_options_from_a_config_file(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("num_parts: 5\nhead_learning_rate: 0.5\nper_device_train_batch_size: 4\n")
    _, args = parse_args(["--config", str(config), "--num_parts", "3"])
    assert (args.num_parts, args.head_learning_rate, args.per_device_train_batch_size) == (3, 0.5, 4)
    (tmp_path / "bad.json").write_text(json.dumps({"num_part": 2}))
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--config", str(tmp_path / "bad.json")])
    assert exit_info.value.code == 2  # argparse's usage error, with the message naming the unknown option
    assert "sets unknown options ['num_part']" in capsys.readouterr().err


def test_recipe_freezes_stage1_backbone_but_its_tokens():
    model = tiny_model(num_register_tokens=4)
    set_trainable(model, freeze_stage1_backbone=True, freeze_stage2_backbone=False)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "stage1.backbone.embeddings.cls_token" in trainable
    assert "stage1.backbone.embeddings.register_tokens" in trainable
    assert "stage1.backbone.embeddings.position_embeddings" in trainable
    assert not any(name.startswith("stage1.backbone.encoder") for name in trainable)
    assert "stage2.backbone.encoder.layer.0.mlp.fc1.weight" in trainable
    assert not any(name.endswith("mask_token") for name in trainable)

    groups = parameter_groups(model, backbone_lr=1e-6, prototype_lr=1e-3, head_lr=1e-2, weight_decay=0.05,
                              effective_batch_size=64, reference_batch_size=16)  # sqrt(64 / 16) = 2
    by_name = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_name[id(named["stage1.prototypes"])]["lr"] == pytest.approx(2e-3)
    assert by_name[id(named["stage2.classifier.weight"])]["lr"] == pytest.approx(2e-2)
    assert by_name[id(named["stage1.modulation.weight"])]["lr"] == pytest.approx(2e-2)
    assert by_name[id(named["stage2.backbone.encoder.layer.0.mlp.fc1.weight"])]["lr"] == pytest.approx(2e-6)
    assert by_name[id(named["stage2.backbone.encoder.layer.0.mlp.fc1.weight"])]["weight_decay"] == 0.05
    assert by_name[id(named["stage1.backbone.embeddings.cls_token"])]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(trainable)


def test_given_token_masks_ground_truth_and_center_block():
    from ifam_data.synthetic import mask_to_token_mask
    from ifam_train.evaluation import given_token_mask

    mask = torch.zeros(2, 56, 56, dtype=torch.uint8)
    mask[0, :28, :28] = 1
    batch = {"pixel_values": torch.zeros(2, 3, 56, 56), "mask": mask}
    ground_truth = given_token_mask("ground_truth", batch, 7)
    assert torch.equal(ground_truth, mask_to_token_mask(mask, 7)) and ground_truth[0].sum() == 16
    center = given_token_mask("center", batch, 7).view(2, 8, 8)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:6, 2:6] = True  # half the side, centred, whatever the image shows
    assert torch.equal(center[0], expected) and torch.equal(center[1], expected)
    odd = given_token_mask("center", {"pixel_values": torch.zeros(1, 3, 42, 42)}, 7).view(6, 6)
    assert odd.sum() == 9 and odd[1:4, 1:4].all()
    with pytest.raises(ValueError, match="'stage2'"):
        given_token_mask("stage2", batch, 7)


def test_center_token_mask_run_shows_stage2_only_the_block(tmp_path):
    results = run(tmp_path, "--token_mask_source", "center", "--max_train_steps", "2", "--checkpointing_steps", "100")
    for metrics in results.values():  # 28 px, patch 7: the central 2 x 2 of the 4 x 4 grid
        assert metrics["coverage"] == pytest.approx(0.25)
