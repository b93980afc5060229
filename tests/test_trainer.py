"""transformers' `Trainer` trains and predicts with iFAM (its loss is one batch mean: `accepts_loss_kwargs = False`)."""

import math

import pytest
import torch
from transformers import Trainer, TrainingArguments

from conftest import tiny_model
from ifam_train.arguments import DataArguments
from ifam_train.data import BatchTransform, collate, load_training_data
from modeling_ifam import dinov2_image_processor


def pixel_values_and_labels(examples: list[dict]) -> dict:
    """The model's inputs only (the transform also gives groups and masks, which `forward` does not take)."""
    batch = collate(examples)
    return {"pixel_values": batch["pixel_values"], "labels": batch["labels"]}


@pytest.fixture(scope="module")
def tiny_data():
    data = load_training_data(DataArguments(synthetic_num_train=32, image_size=28, max_eval_samples=12), seed=0)
    transform = BatchTransform(dinov2_image_processor(28), train=False)
    names = data["train"].features["label"].names
    return data["train"].with_transform(transform), data["test"].with_transform(transform), dict(enumerate(names))


def test_trainer_trains_and_predicts(tiny_data, tmp_path):
    train, test, id2label = tiny_data
    model = tiny_model(num_parts=2, id2label=id2label)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8, per_device_eval_batch_size=8,
        gradient_accumulation_steps=2, learning_rate=1e-3, remove_unused_columns=False, report_to="none",
        save_strategy="no", logging_steps=1, use_cpu=True, dataloader_num_workers=0, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=pixel_values_and_labels)
    assert trainer.model_accepts_loss_kwargs is False  # `num_items_in_batch` is not passed to `forward`
    result = trainer.train()
    assert trainer.state.global_step == 4 and math.isfinite(result.training_loss)
    changed = [name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])]
    assert any(name.startswith("stage1.") for name in changed) and any(name.startswith("stage2.") for name in changed)

    prediction = trainer.predict(test)
    logits = torch.as_tensor(prediction.predictions[0])
    assert logits.shape == (len(test), len(id2label))
    assert math.isfinite(prediction.metrics["test_loss"])
    model.eval()
    batch = pixel_values_and_labels([test[i] for i in range(len(test))])
    with torch.no_grad():
        expected = model(pixel_values=batch["pixel_values"]).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert (torch.as_tensor(prediction.label_ids) == batch["labels"]).all()
