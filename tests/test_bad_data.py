"""Bad data never costs a run (issue 17): checks before the first step, and a loop that survives what it can."""

import logging
import math
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_RUN, run_training
from ifam_data.benchmarks import load_generic
from ifam_data.verify import find_bad_images, skip_unreadable_images, verify_images
from ifam_train import guards
from ifam_train.arguments import DataArguments, parse_args

REPO = Path(__file__).resolve().parents[1]
# a small image folder of one's own: the tiny default model, 2 steps, no calibration
FOLDER_RUN = ["--dataset_name", "imagefolder", "--image_size", "28", "--max_train_steps", "2", "--num_parts", "2",
              "--calibration_percentiles"]


@pytest.fixture(autouse=True)
def default_sigint_handler():
    """The signal tests expect Python's own SIGINT handler, which a launcher may have replaced (a shell's background job
    or `nohup` starts with SIGINT ignored); the run must restore whatever it found."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def image_folder(root: Path, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


def corrupt(path: Path, how: str = "random") -> Path:
    data = path.read_bytes() if path.exists() else b""
    path.write_bytes({"random": os.urandom(200), "truncated": data[: len(data) // 2], "empty": b""}[how])
    return path


def zero_sized_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)  # 0 x 0, 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------------------------------
# Item 1: checked before the first step
# ---------------------------------------------------------------------------------------------------------------------
def test_split_smaller_than_a_global_batch_names_the_numbers(tmp_path):
    folder = image_folder(tmp_path / "images")
    with pytest.raises(ValueError, match=r"12 examples, fewer than one global batch of 32 .*to 12 or less"):
        run_training(tmp_path / "out", *FOLDER_RUN, "--train_dir", str(folder), "--per_device_train_batch_size", "32")
    with pytest.raises(ValueError, match=r"5 examples, fewer than one global batch of 12 .*x 4 processes x "
                                         r"--gradient_accumulation_steps 3\).* fewer processes"):
        guards.check_train_split_fits(5, 1, num_processes=4, gradient_accumulation_steps=3)
    with pytest.raises(ValueError, match="empty"):
        guards.check_train_split_fits(0, 8, drop_last=False)
    guards.check_train_split_fits(5, 32, drop_last=False)  # the smaller last batch, as asked


def test_skip_bad_images_trains_on_a_smaller_batch_without_evaluation_split(tmp_path, capsys):
    """One run: a corrupt file skipped and reported, 11 images < batch 32 kept as one batch, no evaluation split."""
    folder = image_folder(tmp_path / "images")
    bad = corrupt(folder / "cat" / "3.png")
    with pytest.raises(ValueError, match=rf"(?s)1 of 12 images cannot be decoded.*{bad}.*--skip_bad_images"):
        run_training(tmp_path / "out", *FOLDER_RUN, "--train_dir", str(folder))  # header check on by default
    assert str(bad) in (tmp_path / "out" / "bad_images.txt").read_text()
    capsys.readouterr()
    results = run_training(tmp_path / "out", *FOLDER_RUN, "--train_dir", str(folder), "--skip_bad_images",
                           "--per_device_train_batch_size", "32", "--no_dataloader_drop_last")
    out = capsys.readouterr().out
    assert "Skipping 1 unreadable images of 12 (train: 1)" in out and "bad_images.txt" in out
    assert results == {} and guards.NO_EVALUATION in out and "| split |" not in out
    assert (tmp_path / "out" / "model.safetensors").is_file() and not (tmp_path / "out" / "metrics.json").exists()
    lines = (tmp_path / "out" / "bad_images.txt").read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith(f"{bad}\ttrain\timage\t")


def test_header_check_and_full_decode(tmp_path):
    folder = image_folder(tmp_path / "images", per_class=3)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        folder / "cat" / "cut.jpg")
    corrupt(folder / "cat" / "cut.jpg", "truncated")  # a JPEG header survives: only a full decode sees it
    corrupt(folder / "dog" / "0.png", "truncated")  # PNG checksums: the header check sees it
    corrupt(folder / "dog" / "1.png", "empty")
    (folder / "dog" / "zero.png").write_bytes(zero_sized_png())  # PIL cannot write one
    os.remove(folder / "dog" / "2.png")  # listed, then deleted
    data = datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"image": sorted(str(p) for p in folder.rglob("*.*")) + [str(folder / "dog" / "2.png")]},
        features=datasets.Features({"image": datasets.Image()}))})
    header = {Path(b.path).name: b.reason for b in find_bad_images(data, mode="header")}
    full = {Path(b.path).name: b.reason for b in find_bad_images(data, mode="full", shard=(0, 1), chunk_size=2)}
    assert set(header) == {"0.png", "1.png", "zero.png", "2.png"}
    assert set(full) == set(header) | {"cut.jpg"} and "truncated" in full["cut.jpg"]
    assert header["2.png"] == "file not found" and "0 bytes" in header["1.png"] and "zero.png" in header["zero.png"]
    shards = [find_bad_images(data, mode="full", shard=(i, 2), chunk_size=2) for i in range(2)]
    assert sorted(b.row for s in shards for b in s) == sorted(b.row for b in find_bad_images(data, mode="full"))
    with pytest.raises(ValueError, match=r"cut\.jpg.*\(and 4 more\)"):
        verify_images(data)


def test_verify_images_options():
    def mode(*argv):
        return parse_args(list(argv))[0].verify_images  # a data option (DataArguments)

    assert mode() == "auto"
    assert mode("--verify_images") == "header"
    assert mode("--verify_images", "full") == "full"
    assert mode("--verify_images", "false") == mode("--verify-images", "no") == "off"
    assert mode("--no_verify_images") == mode("--no-verify-images") == "off"
    with pytest.raises(SystemExit):
        parse_args(["--verify_images", "sometimes"])
    data_args, _ = parse_args(["--skip_bad_images", "--max_skipped_images", "3", "--no_dataloader_drop_last"])
    assert (data_args.skip_bad_images, data_args.max_skipped_images, data_args.dataloader_drop_last) == (True, 3, False)
    assert parse_args(["--dataloader_drop_last", "false"])[0].dataloader_drop_last is False
    assert DataArguments(verify_images="true").verify_images == "header"
    assert guards.resolve_verify_mode("auto", "synthetic") is None  # generated in memory
    assert guards.resolve_verify_mode("auto", "imagefolder", train_dir="x") == "header"
    assert guards.resolve_verify_mode("auto", "waterbirds", data_dir="x") == "header"
    assert guards.resolve_verify_mode("auto", "owner/name") is None  # the Hub
    assert guards.resolve_verify_mode("full", "owner/name") == "full"


def test_unknown_dataset_names_list_the_built_ins_before_the_hub(tmp_path, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("reached datasets.load_dataset")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    for typo, closest in [("waterbird", "waterbirds"), ("Metashift", "metashift"), ("imagenet-9", "imagenet9")]:
        with pytest.raises(ValueError, match=rf"{typo}.*did you mean '{closest}'.*Built-in: cub, imagenet, "):
            run_training(tmp_path, "--dataset_name", typo)
    with pytest.raises(ValueError, match="needs the images: pass --train_dir"):
        run_training(tmp_path, "--dataset_name", "imagefolder")

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/waterbirdz' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)  # a Hub id: asked, and the failure explained
    with pytest.raises(ValueError, match=r"not a built-in benchmark \(cub, .*waterbirds\).*OfflineModeIsEnabled"
                                         r".*Did you mean 'waterbirds'"):
        run_training(tmp_path, "--dataset_name", "someone/waterbirdz")


def test_file_that_turns_bad_in_the_loop_is_skipped_with_a_warning(tmp_path, caplog):
    """The check off (as if the file broke after it): the run warns naming the file and finishes."""
    folder = image_folder(tmp_path / "images")
    bad = corrupt(folder / "dog" / "4.png")
    with caplog.at_level(logging.WARNING, logger="ifam_data.verify"):
        run_training(tmp_path / "out", *FOLDER_RUN, "--train_dir", str(folder), "--no_verify_images",
                     "--per_device_train_batch_size", "12", "--no_dataloader_drop_last")  # every image, every step
    assert [r for r in caplog.records if str(bad) in r.getMessage() and "Skipping" in r.getMessage()]
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_skipped_example_is_replaced_in_its_batch_up_to_the_limit(tmp_path):
    folder = image_folder(tmp_path / "images", per_class=2)
    data = load_generic(train_dir=str(folder))["train"]
    bad = corrupt(Path(data.cast_column("image", datasets.Image(decode=False))[1]["image"]["path"]))

    def sizes(batch):
        return {"labels": torch.tensor(batch["label"]), "size": torch.tensor([im.size for im in batch["image"]])}

    dataset = skip_unreadable_images(data, sizes, limit=1)
    batch = dataset[0:4]
    assert batch["labels"].shape == (4,) and batch["size"].tolist() == [[24, 20]] * 4  # same size, copy of row 0
    assert batch["labels"].tolist() == [data[0]["label"], data[2]["label"], data[2]["label"], data[3]["label"]]
    with pytest.raises(RuntimeError, match=rf"Every image of a training batch is unreadable.*{bad}"):
        dataset[1:2]
    corrupt(folder / "dog" / "1.png")
    with pytest.raises(RuntimeError, match=r"2 images became unreadable during training, more than "
                                           r"--max_skipped_images 1.*dog"):
        dataset[0:4]


# ---------------------------------------------------------------------------------------------------------------------
# Item 2: a run that cannot finish well says so and keeps its work
# ---------------------------------------------------------------------------------------------------------------------
def test_non_finite_loss_stops_naming_step_and_terms_after_a_checkpoint(tmp_path, monkeypatch):
    from modeling_ifam import IFAMForImageClassification

    original, calls = IFAMForImageClassification.loss_terms, []

    def nan_at_step_2(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            terms["presence"] = terms["presence"] * float("nan")
            terms["entropy"] = terms["entropy"] + float("inf")
        return terms

    monkeypatch.setattr(IFAMForImageClassification, "loss_terms", nan_at_step_2)
    with pytest.raises(guards.NonFiniteLossError, match=r"Step 2: the training loss is not finite \(non-finite "
                                                        r"terms: presence=nan, entropy=inf\).*checkpoint-1"):
        run_training(tmp_path, "--checkpointing_steps", "100")
    checkpoint = tmp_path / "checkpoint-1"
    assert (checkpoint / "progress.json").is_file() and not (tmp_path / "model.safetensors").exists()
    from safetensors.torch import load_file

    weights = load_file(checkpoint / "model.safetensors")
    assert weights and all(torch.isfinite(t).all() for t in weights.values())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    from types import SimpleNamespace

    from conftest import tiny_model

    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    saved = []
    guard = guards.RunGuard(SimpleNamespace(num_processes=1), model, optimizer, tmp_path, save=saved.append)
    outputs = model(pixel_values=torch.randn(2, 3, 28, 28), labels=torch.tensor([0, 1]))
    guard.check_loss(outputs, 4)  # finite: nothing happens
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "progress.json").write_text("{}")
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = math.inf
    outputs.loss = outputs.loss * float("nan")
    with pytest.raises(guards.NonFiniteLossError, match=r"Step 5: .*already non-finite, so no checkpoint was "
                                                        r"written; the last good one is .*checkpoint-3"):
        guard.check_loss(outputs, 4)
    assert saved == []


def test_sigterm_to_a_real_run_checkpoints_and_resume_continues(tmp_path):
    """A real `python train.py` process gets SIGTERM mid-run: it saves checkpoint-N and exits 143; resume continues."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(REPO / "train.py"), *TINY_RUN, "--output_dir", str(tmp_path), "--max_train_steps",
               "1000", "--checkpointing_steps", "5000", "--calibration_percentiles"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               cwd=tmp_path)
    lines = []
    try:
        for line in process.stdout:  # the handler is in place once the run says it is training
            lines.append(line)
            if line.startswith("Training "):
                break
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        output = "".join(lines) + process.communicate(timeout=120)[0]
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, output
    checkpoints = sorted(tmp_path.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "progress.json").is_file(), output
    steps = int(checkpoints[0].name.split("-")[1])
    assert f"Stopped by SIGTERM after step {steps}" in output and not (tmp_path / "model.safetensors").exists()

    run_training(tmp_path, "--resume_from_checkpoint", "latest", "--max_train_steps", str(steps + 1),
                 "--calibration_percentiles")
    assert (tmp_path / "model.safetensors").is_file()


def test_sigint_finishes_the_step_then_checkpoints_and_a_second_stops_at_once(tmp_path, monkeypatch):
    original_step, calls = torch.optim.AdamW.step, []

    def step_then_ctrl_c(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_ctrl_c)
    with pytest.raises(SystemExit) as stopped:
        run_training(tmp_path, "--calibration_percentiles")
    assert stopped.value.code == 128 + signal.SIGINT and len(calls) == 1
    assert (tmp_path / "checkpoint-1" / "progress.json").is_file()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored

    guard = guards.RunGuard(None, None, None, tmp_path, save=None).install()
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)
    assert guard.signal == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
