"""Command-line options of `ifam-train`. Flag names follow transformers' `run_image_classification_no_trainer.py`."""

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from transformers import HfArgumentParser

from modeling_ifam import IFAMConfig

from .guards import parse_verify_mode


class VerifyMode(str):
    """A `--verify_images` value, normalised: auto, header, full or off (true/yes/1 are header, false/no/none/0 off);
    anything else is a usage error of the command line."""

    def __new__(cls, value: str) -> "VerifyMode":
        return super().__new__(cls, parse_verify_mode(value))


@dataclass
class DataArguments:
    """
    Where the images come from and how they are sized: the options of `load_training_data`, shared by `ifam-train`, the
    intervention commands and the experiments (parsed with `HfArgumentParser`, which also accepts `--dataset-name`-style
    spellings).
    """

    dataset_name: str = field(default="synthetic", metadata={
        "help": "A built-in benchmark (synthetic, waterbirds, metashift, cub, imagenet9, siim_acr, imagenet) or a "
        "dataset id on the Hub."})
    data_dir: str | None = field(default=None, metadata={"help": "Root of a benchmark's raw layout."})
    train_dir: str | None = field(default=None, metadata={
        "help": "An imagefolder for training (with metadata file)."})
    validation_dir: str | None = field(default=None, metadata={"help": "An imagefolder for validation."})
    image_column_name: str = "image"
    label_column_name: str = "label"
    group_column_name: str | None = None
    synthetic_regime: Literal["correlated", "ood"] = field(default="correlated", metadata={"aliases": ["--regime"]})
    synthetic_num_train: int = field(default=3000, metadata={"aliases": ["--num_train"]})
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    image_size: int | None = field(default=None, metadata={
        "help": "Input resolution (default: 56 from scratch, else the backbone's own)."})
    patch_size: int = field(default=7, metadata={
        "help": "Patch size of the from-scratch model; the synthetic benchmark draws its stripes to it."})
    dataloader_num_workers: int = 0
    dataloader_drop_last: bool = field(default=True, metadata={
        "help": "Drop the last incomplete training batch of each epoch (off: --no_dataloader_drop_last or "
        "--dataloader_drop_last false, to train on a split smaller than one global batch)."})
    # bad data (issue 17): checked by ifam-train before the first step
    verify_images: VerifyMode = field(default="auto", metadata={"nargs": "?", "const": "header", "help": (
        "Check that every image decodes before training: header (fast: header, size and checksums), full (decode "
        "every pixel) or off (also --no_verify_images; true/false are header/off); auto: header for local folders, "
        "off for the Hub and the synthetic benchmark.")})
    skip_bad_images: bool = field(default=False, metadata={
        "help": "Train without the images that fail the check (their paths go to bad_images.txt in --output_dir) "
        "instead of stopping."})
    max_skipped_images: int = field(default=10, metadata={
        "help": "Files that turn unreadable during training are skipped with a warning, up to this many."})

    def __post_init__(self):
        self.verify_images = parse_verify_mode(self.verify_images)  # a plain str, its true/false spellings resolved

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> "DataArguments":
        """The data options held by a parsed namespace (they are removed from it)."""
        return cls(**{name: vars(namespace).pop(name) for name in cls.__dataclass_fields__})


# The main job's backbone (issue 12). It ships in the repository (pretrained/), not in the Python packages: a path
# relative to the repository root, resolved by `resolve_model_name_or_path`.
DEFAULT_BACKBONE = "pretrained/dinov2-tiny-upstream"
REPOSITORY = Path(__file__).resolve().parents[1]
SCRATCH = ("scratch", "none")


def resolve_model_name_or_path(value: str | None) -> str | None:
    """
    `None` for a from-scratch model ('scratch', 'none' or `None`); the default backbone's folder in the repository
    (next to the `ifam_train` package: a checkout, `pip install -e .`, or `PYTHONPATH`), whatever the working directory;
    any other value unchanged (a hub id or a folder, relative to the working directory as transformers reads it).
    """
    if value is None or value.lower() in SCRATCH:
        return None
    if value != DEFAULT_BACKBONE or Path(value, "config.json").is_file():
        return value
    folder = REPOSITORY / DEFAULT_BACKBONE
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"The default backbone {DEFAULT_BACKBONE} ships in the ifam repository, not in the installed package, and "
            f"is not at {folder}. Run from a checkout (pip install -e .), or pass --model_name_or_path <a DINOv2 "
            "folder or hub id>, or --model_name_or_path scratch."
        )
    return str(folder)


def build_parser() -> HfArgumentParser:
    """The training command line: `DataArguments`, then the model, optimisation and run options."""
    parser = HfArgumentParser(
        DataArguments,
        description="Train iFAM with Accelerate. `ifam-train` (or `python train.py`) with no option trains a small "
        "iFAM from the repository's pretrained/dinov2-tiny-upstream on the built-in synthetic benchmark. Every option "
        "can also come from --config (YAML or JSON).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", type=str, default=None,
                        help="YAML/JSON file of option values; command-line flags override it.")
    parser.add_argument("--no_verify_images", "--no-verify-images", dest="verify_images", action="store_const",
                        const="off", help="Same as --verify_images off.")

    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", type=str, default=DEFAULT_BACKBONE,
                       help="A DINOv2 hub id/folder (both stages start from it) or an iFAM checkpoint to fine-tune; "
                       "'scratch': a small DINOv2-architecture model (hidden 64, 4 layers) trained from scratch. "
                       f"Default: the repository's {DEFAULT_BACKBONE} (a small DINOv2 pretrained once on generated "
                       "images, issue 12), found next to the installed ifam_train package, so from any directory of a "
                       "checkout or an editable install.")
    model.add_argument("--model_type", choices=["ifam", "dinov2"], default="ifam",
                       help="dinov2: the single-pass baseline, transformers' Dinov2ForImageClassification (ERM).")
    model.add_argument("--token_mask_source", choices=["stage1", "ground_truth", "center"], default="stage1",
                       help="ground_truth: stage 2 sees the ground-truth foreground patches in training and evaluation "
                       "(the paper's early-masking upper bound; needs a `mask` column); center: the central square of "
                       "half the patch grid's side in every image (a positional-prior control).")
    model.add_argument("--num_parts", type=int, default=2)
    model.add_argument("--part_dropout", type=float, default=0.3)
    model.add_argument("--part_dropout_stage2", type=float, default=0.3)
    model.add_argument("--use_soft_masks", action="store_true")
    model.add_argument("--stage1_image_size", type=int, default=None,
                       help="Stage 1 sees the image resized to this side (a cheaper stage 1; default: the image's).")
    model.add_argument("--stage1_model_name_or_path", type=str, default=None,
                       help="Another DINOv2 checkpoint for stage 1 (e.g. a smaller one; with --model_name_or_path).")
    model.add_argument("--prototype_init", choices=["auto", "data", "random"], default="auto",
                       help="data: stage 1's background prototype from the border patches' features and the K part "
                       "prototypes from a k-means of the rest, on the first --prototype_init_images training images "
                       "(IFAMForImageClassification.initialize_prototypes); random: the default small uniform draw; "
                       "auto: data when iFAM starts from a DINOv2 backbone, else random.")
    model.add_argument("--prototype_init_images", type=int, default=256)
    model.add_argument("--freeze_stage1_backbone", action=argparse.BooleanOptionalAction, default=None,
                       help="Freeze stage 1's backbone but for its CLS, register and position tokens (default: on "
                       "from a pretrained backbone, off from scratch).")
    model.add_argument("--freeze_stage2_backbone", action=argparse.BooleanOptionalAction, default=False)
    for name, option in IFAMConfig.__dataclass_fields__.items():  # the config holds the recipe's defaults
        if name.endswith("_loss_weight"):
            model.add_argument(f"--{name}", type=float, default=option.default)

    optim = parser.add_argument_group("optimization (the paper's recipe)")
    optim.add_argument("--per_device_train_batch_size", type=int, default=32)
    optim.add_argument("--per_device_eval_batch_size", type=int, default=64)
    optim.add_argument("--num_train_epochs", type=int, default=4,
                       help="4: the main job (`python train.py`) on 2 CPU cores; the paper trains 90 (Waterbirds).")
    optim.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--backbone_learning_rate", type=float, default=None,
                       help="Backbone tokens and stage-2 layers at batch 16 (default: 1e-3 from scratch, 1e-4 from the "
                       f"default {DEFAULT_BACKBONE}, 1e-6, the paper's DINOv2 rate, from any other pretrained "
                       "checkpoint).")
    optim.add_argument("--prototype_learning_rate", type=float, default=1e-3)
    optim.add_argument("--head_learning_rate", type=float, default=1e-2)
    optim.add_argument("--reference_batch_size", type=int, default=16,
                       help="Learning rates are given at this batch size and scaled by sqrt(effective batch / it).")
    optim.add_argument("--weight_decay", type=float, default=0.05)
    optim.add_argument("--max_grad_norm", type=float, default=2.0)
    optim.add_argument("--lr_scheduler_type", type=str, default="cosine")
    optim.add_argument("--num_warmup_steps", type=int, default=None, help="Default: 5%% of the training steps.")
    optim.add_argument("--ema_decay", type=float, default=0.0, help="EMA of the weights (0: off), e.g. 0.999.")

    run = parser.add_argument_group("run")
    run.add_argument("--calibration_percentiles", type=float, nargs="*", default=[97.0, 99.0],
                     help="Calibrate the token-removal thresholds at these percentiles on the training split after "
                     "training (none: skip).")
    run.add_argument("--num_picture_images", type=int, default=8,
                     help="Write parts.png (part maps, stage-2 masks, interventions) of this many images of the last "
                     "evaluation split with the model (0: none).")
    run.add_argument("--output_dir", type=str, default="outputs/synthetic")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--checkpointing_steps", type=str, default="epoch",
                     help="'epoch', or save a resumable state every N optimizer steps.")
    run.add_argument("--resume_from_checkpoint", type=str, default=None,
                     help="A checkpoint folder, or 'latest' for the newest one in --output_dir.")
    run.add_argument("--with_tracking", action="store_true")
    run.add_argument("--report_to", type=str, default="tensorboard")
    run.add_argument("--logging_steps", type=int, default=10)
    run.add_argument("--push_to_hub", action="store_true")
    run.add_argument("--hub_model_id", type=str, default=None)
    run.add_argument("--hub_token", type=str, default=None)
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[DataArguments, argparse.Namespace]:
    """The data options and the other training options of a command line (and of its `--config` file)."""
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            parser.error(f"--config {path} does not exist")
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        if not isinstance(values, dict):
            parser.error(f"--config {path} must hold a mapping of option names to values")
        unknown = sorted(set(values) - {action.dest for action in parser._actions})
        if unknown:
            parser.error(f"--config {path} sets unknown options {unknown}")
        parser.set_defaults(**values)
    args = parser.parse_args(argv)
    args.uses_default_backbone = args.model_name_or_path == DEFAULT_BACKBONE
    try:
        args.model_name_or_path = resolve_model_name_or_path(args.model_name_or_path)
    except FileNotFoundError as error:
        parser.error(str(error))
    if args.checkpointing_steps != "epoch" and not args.checkpointing_steps.isdigit():
        parser.error(f"--checkpointing_steps must be 'epoch' or a number, got {args.checkpointing_steps!r}")
    return DataArguments.from_namespace(args), args
