"""
Bad data never costs a run (issue 17): the checks `ifam_train.train` makes before the first step, and the guards of
its loop.

Before the first step:
* `dataset_name_guard`: a `--dataset_name` that is neither built in nor a local path is checked for a typo of a built-in
  name before anything reaches the Hub; a Hub load that fails says so and lists the built-in names.
* `verify_training_images`: every image decoded up front (header check, or a full decode), bad files listed, and with
  `--skip_bad_images` dropped and written to `bad_images.txt` beside the outputs.
* `check_train_split_fits`: a training split smaller than one global batch, with the numbers.

In the loop, `RunGuard`:
* `check_loss`: a non-finite loss stops the run naming the step and the non-finite loss terms, after checkpointing the
  last good state (never non-finite weights).
* SIGINT/SIGTERM (`install`/`stop_if_signalled`): the step in progress finishes, a checkpoint is written, and the
  process exits with status 128 + the signal number; `--resume_from_checkpoint latest` continues. A second signal stops
  at once.
"""

from __future__ import annotations

import difflib
import math
import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from ifam_data.benchmarks import BENCHMARKS
from ifam_data.verify import (
    REPORT_NAME, VERIFY_MODES, drop_bad_images, find_bad_images, write_bad_image_report,
)

BUILT_IN_DATASETS = sorted(name for name in BENCHMARKS if name != "generic")
NO_EVALUATION = ("No evaluation split (validation or test) in the data: nothing was evaluated and no metrics.json was "
                 "written; give one with --validation_dir to evaluate.")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step, the terms and the checkpoint written."""


# ---------------------------------------------------------------------------------------------------------------------
# The dataset name
# ---------------------------------------------------------------------------------------------------------------------
def _packaged_builders() -> set[str]:
    try:
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

        return set(_PACKAGED_DATASETS_MODULES)
    except ImportError:  # pragma: no cover - a datasets without the private table
        return {"imagefolder", "csv", "json", "parquet", "arrow", "text"}


def check_dataset_name(dataset_name: str, train_dir: str | None = None, data_dir: str | None = None) -> bool:
    """
    Raise `ValueError` before any Hub request when `dataset_name` looks like a typo of a built-in benchmark or names a
    packaged builder (imagefolder, csv...) with no folder to read. Returns True when the name will be looked up on the
    Hub.
    """
    if train_dir or dataset_name in BUILT_IN_DATASETS or os.path.exists(dataset_name):
        return False
    if dataset_name in _packaged_builders():
        if data_dir is None:
            raise ValueError(f"--dataset_name {dataset_name} needs the images: pass --train_dir (and "
                             "--validation_dir).")
        return False
    close = difflib.get_close_matches(dataset_name.lower().replace("-", "_"), BUILT_IN_DATASETS, n=3, cutoff=0.75)
    if close and "/" not in dataset_name:
        raise ValueError(
            f"--dataset_name {dataset_name!r} is not a built-in benchmark, nor a local folder; did you mean "
            f"{' or '.join(repr(c) for c in close)}? Built-in: {', '.join(BUILT_IN_DATASETS)}. (A Hub dataset is "
            "named by its full id, owner/name; your own images go in --train_dir.)"
        )
    return True


@contextmanager
def dataset_name_guard(dataset_name: str, train_dir: str | None = None, data_dir: str | None = None):
    """`check_dataset_name` on entry; a failed Hub load inside the block becomes a `ValueError` naming the dataset."""
    from_hub = check_dataset_name(dataset_name, train_dir, data_dir)
    try:
        yield
    except OSError as err:  # ConnectionError, DatasetNotFoundError (a FileNotFoundError), HTTP errors
        if not from_hub:
            raise
        close = difflib.get_close_matches(dataset_name.split("/")[-1].lower(), BUILT_IN_DATASETS, n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"--dataset_name {dataset_name!r} is not a built-in benchmark ({', '.join(BUILT_IN_DATASETS)}), nor a "
            f"local folder, and loading it from the Hub failed ({type(err).__name__}: {err}).{hint} Your own images "
            "go in --train_dir."
        ) from err


# ---------------------------------------------------------------------------------------------------------------------
# The images
# ---------------------------------------------------------------------------------------------------------------------
def parse_verify_mode(value: str) -> str:
    """`--verify_images` values: auto (default), header (alias true/yes/on), full, off (alias false/no/none)."""
    value = str(value).lower()
    aliases = {"true": "header", "yes": "header", "on": "header", "1": "header",
               "false": "off", "no": "off", "none": "off", "0": "off"}
    value = aliases.get(value, value)
    if value not in ("auto", "off", *VERIFY_MODES):
        import argparse

        raise argparse.ArgumentTypeError(f"expected auto, header, full or off (true/false), got {value!r}")
    return value


def resolve_verify_mode(value: str, dataset_name: str, train_dir=None, validation_dir=None,
                        data_dir=None) -> str | None:
    """The check to run: "auto" is a header check for local folders and none for the Hub or the synthetic benchmark."""
    value = parse_verify_mode(value)
    if value == "auto":
        local = bool(train_dir or validation_dir or (data_dir and dataset_name != "synthetic")
                     or os.path.isdir(dataset_name))
        value = "header" if local else "off"
    return None if value == "off" else value


def verify_training_images(data, mode: str | None, skip: bool, output_dir, accelerator):
    """
    Check every image of every split (`mode` "header" or "full"; None: no check), each process a share of the rows.
    Bad files are written to `output_dir/bad_images.txt`; without `skip` a `ValueError` lists them, with `skip` their
    rows are dropped and the run says how many. Returns the data to train on.
    """
    if mode is None:
        return data
    from accelerate.utils import gather_object

    bad = find_bad_images(data, mode=mode, progress=accelerator.is_local_main_process,
                          shard=(accelerator.process_index, accelerator.num_processes))
    if accelerator.num_processes > 1:
        bad = sorted(gather_object(bad), key=lambda b: (str(b.split), b.column, b.row))
    total = sum(len(ds) for ds in data.values())
    if not bad:
        accelerator.print(f"Checked {total} images ({mode}): all readable.")
        return data
    report = Path(output_dir) / REPORT_NAME
    if accelerator.is_main_process:
        write_bad_image_report(bad, report)
    accelerator.wait_for_everyone()
    listed = "\n  ".join(str(b) for b in bad[:50])
    more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
    if not skip:
        raise ValueError(
            f"{len(bad)} of {total} images cannot be decoded (all listed in {report}):\n  {listed}{more}\n"
            "Fix or remove them, or pass --skip_bad_images to train without them."
        )
    per_split = ", ".join(f"{split}: {sum(b.split == split for b in bad)}" for split in data
                          if any(b.split == split for b in bad))
    accelerator.print(f"Skipping {len(bad)} unreadable images of {total} ({per_split}); their paths are in {report}.")
    return drop_bad_images(data, bad)


def check_train_split_fits(num_examples: int, per_device_batch_size: int, num_processes: int = 1,
                           gradient_accumulation_steps: int = 1, drop_last: bool = True) -> None:
    """Raise `ValueError` naming the numbers when the training split cannot fill one global batch."""
    if num_examples == 0:
        raise ValueError("The training split is empty (0 examples).")
    global_batch = per_device_batch_size * num_processes * gradient_accumulation_steps
    if drop_last and num_examples < global_batch:
        fits = num_examples // (num_processes * gradient_accumulation_steps)
        advice = (f"lower --per_device_train_batch_size to {fits} or less, or" if fits else "use fewer processes or "
                  "gradient-accumulation steps, or")
        raise ValueError(
            f"The training split has {num_examples} examples, fewer than one global batch of {global_batch} "
            f"(--per_device_train_batch_size {per_device_batch_size} x {num_processes} processes x "
            f"--gradient_accumulation_steps {gradient_accumulation_steps}), and the last incomplete batch is dropped: "
            f"there is nothing to train on. {advice[0].upper() + advice[1:]} pass --no_dataloader_drop_last to train "
            "on the smaller batch."
        )


# ---------------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------------
class RunGuard:
    """
    Non-finite losses and SIGINT/SIGTERM in the training loop. `save(step)` writes the resumable state as
    `output_dir/checkpoint-{step}` (`ifam_train.train.save_checkpoint`).
    """

    def __init__(self, accelerator, model, optimizer, output_dir, save: Callable[[int], None]):
        self.accelerator, self.model, self.optimizer = accelerator, model, optimizer
        self.output_dir, self.save = Path(output_dir), save
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    # -- non-finite loss ----------------------------------------------------------------------------------------------
    def _any(self, flag: bool) -> bool:
        """`flag` on any process (a collective in a multi-process run, so every process takes the same branch)."""
        if self.accelerator.num_processes == 1:
            return flag
        return bool(self.accelerator.reduce(torch.tensor(float(flag), device=self.accelerator.device), "sum") > 0)

    def check_loss(self, outputs, completed_steps: int) -> None:
        """Before the backward pass of step `completed_steps + 1`: stop on a non-finite `outputs.loss`."""
        if not self._any(not bool(torch.isfinite(outputs.loss.detach()).all())):
            return
        step = completed_steps + 1
        terms = getattr(outputs, "loss_terms", None) or {}
        bad_terms = {name: value.item() for name, value in terms.items() if not math.isfinite(value.item())}
        loss = outputs.loss.item()
        what = (f"non-finite terms: {', '.join(f'{k}={v}' for k, v in bad_terms.items())}" if bad_terms
                else f"loss {loss}" + (", every loss term finite" if terms else ""))
        if self._any(not self._state_is_finite()):
            saved = ("the weights or the optimizer state are already non-finite, so no checkpoint was written; the "
                     f"last good one is {self._latest() or 'none (no checkpoint was written before)'}")
        else:
            folder = self.output_dir / f"checkpoint-{completed_steps}"
            if not (folder / "progress.json").is_file():
                self.save(completed_steps)
            saved = f"the last good state (after step {completed_steps}) is in {folder}"
        self.uninstall()
        raise NonFiniteLossError(
            f"Step {step}: the training loss is not finite ({what}). Training stopped; {saved}. Lower the learning "
            "rates (or --max_grad_norm), check the data, then continue with --resume_from_checkpoint latest."
        )

    def _state_is_finite(self) -> bool:
        tensors = [p.detach() for p in self.model.parameters()]
        tensors += [v for state in self.optimizer.state.values() for v in state.values()
                    if isinstance(v, torch.Tensor) and v.is_floating_point()]
        return all(bool(torch.isfinite(t).all()) for t in tensors)

    def _latest(self) -> Path | None:
        checkpoints = [p for p in self.output_dir.glob("checkpoint-*") if (p / "progress.json").is_file()]
        return max(checkpoints, key=lambda p: int(p.name.split("-")[1]), default=None)

    # -- signals ------------------------------------------------------------------------------------------------------
    def install(self) -> RunGuard:
        """Catch SIGINT and SIGTERM until `uninstall` (no-op outside the main thread)."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def __enter__(self) -> RunGuard:
        return self.install()

    def __exit__(self, *exc_info) -> None:
        self.uninstall()

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signal is None:  # no printing here: a handler that writes to stderr can re-enter tqdm's write
            self.signal = signum
            return
        previous = self._previous.get(signum, signal.SIG_DFL)  # a second signal: stop at once
        self.uninstall()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signum)

    def stop_if_signalled(self, completed_steps: int) -> None:
        """After a step: if SIGINT/SIGTERM came, checkpoint this step, then exit with status 128 + signal number."""
        if not self._any(self.signal is not None):
            return
        signum = self.signal or signal.SIGTERM
        folder = self.output_dir / f"checkpoint-{completed_steps}"
        if not (folder / "progress.json").is_file():
            self.save(completed_steps)
        self.uninstall()
        self.accelerator.print(f"\nStopped by {signal.Signals(signum).name} after step {completed_steps}; the state is "
                               f"in {folder}. Continue with --resume_from_checkpoint latest.")
        raise SystemExit(128 + int(signum))
