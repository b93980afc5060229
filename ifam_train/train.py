"""Train iFAM with Hugging Face Accelerate (`ifam-train`, `python train.py`).

    ifam-train                                         # small model from scratch on the built-in benchmark (CPU)
    accelerate launch train.py --model_name_or_path facebook/dinov2-base --dataset_name waterbirds --data_dir ...

The same code path runs in one process or several, with mixed precision and gradient accumulation from
`accelerate launch` / `accelerate config`. A killed run resumes with `--resume_from_checkpoint latest`.
"""

import argparse
import json
import math
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoConfig, Dinov2Config, Dinov2ForImageClassification, get_scheduler

from ifam_data.verify import skip_unreadable_images
from ifam_interventions.calibration import calibrate_token_removal, save_statistics
from modeling_ifam import IFAMConfig, IFAMForImageClassification, dinov2_image_processor

from . import guards
from .arguments import DataArguments, parse_args
from .data import BatchTransform, collate, eval_dataloader, load_training_data, random_crop_flip
from .evaluation import compute_metrics, given_token_mask, predict
from .optim import parameter_groups, set_trainable
from .reporting import results_table

logger = get_logger(__name__)

# The default from-scratch model: DINOv2's architecture at a size that trains on 2 CPU cores in minutes.
SMALL_BACKBONE = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=4)


def build_model(
    args: argparse.Namespace, data_args: DataArguments, id2label: dict[int, str]
) -> IFAMForImageClassification | Dinov2ForImageClassification:
    """
    The model a training run starts from.

    Args:
        args (`argparse.Namespace`):
            The model options of `parse_args` (`model_type`, `model_name_or_path`, `num_parts`, the loss weights, ...).
        data_args (`DataArguments`):
            The input geometry (`image_size`, `patch_size`) of a from-scratch model.
        id2label (`dict[int, str]`):
            The data's classes.

    Returns:
        A small from-scratch model, iFAM built on a DINOv2 checkpoint, an iFAM checkpoint to fine-tune, or (with
        `model_type="dinov2"`) transformers' `Dinov2ForImageClassification`.
    """
    patch_size, image_size = data_args.patch_size, data_args.image_size or 56
    if args.model_type == "dinov2":
        if args.model_name_or_path is None:
            config = Dinov2Config(**SMALL_BACKBONE, patch_size=patch_size, image_size=image_size, id2label=id2label)
            return Dinov2ForImageClassification(config)
        return Dinov2ForImageClassification.from_pretrained(args.model_name_or_path, id2label=id2label)
    ifam_options = dict(
        num_parts=args.num_parts, part_dropout=args.part_dropout, part_dropout_stage2=args.part_dropout_stage2,
        use_soft_masks=args.use_soft_masks, id2label=id2label, stage1_image_size=args.stage1_image_size,
        **{name: getattr(args, name) for name in IFAMConfig.__dataclass_fields__ if name.endswith("_loss_weight")},
    )
    if args.stage1_model_name_or_path is not None and args.model_name_or_path is None:
        raise ValueError("`--stage1_model_name_or_path` needs `--model_name_or_path` (stage 2's DINOv2 checkpoint).")
    if args.model_name_or_path is None:
        config = IFAMConfig(**SMALL_BACKBONE, patch_size=patch_size, image_size=image_size, **ifam_options)
        return IFAMForImageClassification(config)
    if AutoConfig.from_pretrained(args.model_name_or_path).model_type == "ifam":
        model = IFAMForImageClassification.from_pretrained(args.model_name_or_path)
        if model.config.id2label != id2label:
            raise ValueError(
                f"{args.model_name_or_path} was trained on labels {model.config.id2label}, the data has {id2label}."
            )
        stage1_size = model.config.stage1_image_size
        if args.stage1_model_name_or_path is not None or args.stage1_image_size not in (None, stage1_size):
            raise ValueError(
                f"{args.model_name_or_path} is an iFAM checkpoint: its stage 1 (`stage1_image_size`="
                f"{model.config.stage1_image_size}, its own backbone) is fixed; drop `--stage1_image_size`/"
                "`--stage1_model_name_or_path`."
            )
        return model
    return IFAMForImageClassification.from_dinov2(
        args.model_name_or_path, stage1=args.stage1_model_name_or_path, **ifam_options
    )


def initialize_prototypes_from_data(args: argparse.Namespace) -> bool:
    """Whether the run sets stage 1's prototypes from the data (`--prototype_init`; auto: when iFAM starts from a
    DINOv2 backbone, whose features are worth splitting, and stage 1 chooses the patches)."""
    if args.prototype_init != "auto":
        return args.prototype_init == "data"
    if args.model_name_or_path is None or args.token_mask_source != "stage1":
        return False
    return AutoConfig.from_pretrained(args.model_name_or_path).model_type != "ifam"


def main(argv: list[str] | None = None) -> dict:
    """Train, evaluate every split, calibrate, save; returns the metrics of every evaluation split."""
    data_args, args = parse_args(argv)
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.report_to if args.with_tracking else None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(args.seed)

    # Data and model
    # a typo of a built-in name is named in every process before the barrier (issue 17); Hub failures explained
    with (
        guards.dataset_name_guard(data_args.dataset_name, data_args.train_dir, data_args.data_dir),
        accelerator.main_process_first(),
    ):
        data = load_training_data(data_args, seed=args.seed)
    # Bad data (issue 17): unreadable images listed (or skipped), a split smaller than one global batch named
    verify_mode = guards.resolve_verify_mode(data_args.verify_images, data_args.dataset_name, data_args.train_dir,
                                             data_args.validation_dir, data_args.data_dir)
    data = guards.verify_training_images(data, verify_mode, data_args.skip_bad_images, output_dir, accelerator)
    guards.check_train_split_fits(len(data["train"]), args.per_device_train_batch_size, accelerator.num_processes,
                                  args.gradient_accumulation_steps, data_args.dataloader_drop_last)
    id2label = dict(enumerate(data["train"].features["label"].names))
    model = build_model(args, data_args, id2label)
    image_size = data_args.image_size or model.config.image_size
    processor = dinov2_image_processor(image_size)
    pretrained = args.model_name_or_path is not None
    is_ifam = isinstance(model, IFAMForImageClassification)
    if is_ifam:
        freeze_stage1 = pretrained if args.freeze_stage1_backbone is None else args.freeze_stage1_backbone
        set_trainable(model, freeze_stage1_backbone=freeze_stage1, freeze_stage2_backbone=args.freeze_stage2_backbone)
    source = args.token_mask_source
    if is_ifam and initialize_prototypes_from_data(args) and not args.resume_from_checkpoint:
        # issue 12: the background prototype starts on the border patches' features, the K parts on the rest; from
        # the first training images in their stored order (no randomness; a resumed run loads its prototypes instead)
        images = data["train"].select(range(min(args.prototype_init_images, len(data["train"]))))
        pixels = torch.cat([b["pixel_values"] for b in eval_dataloader(images, processor, args.prototype_init_images)])
        model.initialize_prototypes(pixels, seed=args.seed)

    # a file that turns bad after the check is skipped with a warning, up to --max_skipped_images (issue 17)
    train_data = skip_unreadable_images(data["train"], BatchTransform(processor, train=True),
                                        data_args.max_skipped_images)
    eval_splits = [name for name in data if name != "train"]
    # its own generator: creating an iterator must not draw from the global RNG that checkpoints restore
    train_loader = DataLoader(train_data, batch_size=args.per_device_train_batch_size, shuffle=True,
                              collate_fn=collate, num_workers=data_args.dataloader_num_workers,
                              drop_last=data_args.dataloader_drop_last,
                              generator=torch.Generator().manual_seed(args.seed))
    eval_loaders = {name: eval_dataloader(data[name], processor, args.per_device_eval_batch_size,
                                          data_args.dataloader_num_workers) for name in eval_splits}

    # Optimisation: AdamW over the recipe's groups, cosine schedule with warm-up, clipping, optional EMA
    effective_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    # 1e-3 from scratch; 1e-6, the paper's rate, for DINOv2; 1e-4 for the default backbone, a from-scratch-sized model
    # pretrained briefly (at 1e-3 fine-tuning it sometimes never leaves chance: README, issue 12)
    default_backbone = getattr(args, "uses_default_backbone", False)
    backbone_lr = args.backbone_learning_rate or (1e-3 if not pretrained else 1e-4 if default_backbone else 1e-6)
    optimizer = torch.optim.AdamW(parameter_groups(
        model, backbone_lr, args.prototype_learning_rate, args.head_learning_rate, args.weight_decay,
        effective_batch, args.reference_batch_size,
    ))
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    warmup = args.num_warmup_steps if args.num_warmup_steps is not None else int(0.05 * max_steps)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                              num_training_steps=max_steps * accelerator.num_processes)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    eval_loaders = {name: accelerator.prepare(loader) for name, loader in eval_loaders.items()}
    ema = None
    if args.ema_decay > 0:
        ema = AveragedModel(accelerator.unwrap_model(model), multi_avg_fn=get_ema_multi_avg_fn(args.ema_decay))
        accelerator.register_for_checkpointing(ema)
    if args.with_tracking:
        options = {**vars(args), **vars(data_args)}
        accelerator.init_trackers("ifam", {k: v for k, v in options.items() if isinstance(v, (int, float, str, bool))})

    # Resume: the state (weights, optimizer, scheduler, EMA, RNG, sampler) of the last checkpoint, then skip the
    # batches of the interrupted epoch that were already seen.
    completed_steps, start_epoch, skip_batches = 0, 0, 0
    if args.resume_from_checkpoint:
        checkpoint = latest_checkpoint(output_dir) if args.resume_from_checkpoint == "latest" else Path(
            args.resume_from_checkpoint)
        if checkpoint is None or not checkpoint.is_dir():
            raise FileNotFoundError(f"No checkpoint to resume from at {args.resume_from_checkpoint!r} "
                                    f"(looked in {output_dir}).")
        accelerator.print(f"Resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))
        completed_steps = json.loads((checkpoint / "progress.json").read_text())["completed_steps"]
        start_epoch, step_in_epoch = divmod(completed_steps, steps_per_epoch)
        skip_batches = step_in_epoch * args.gradient_accumulation_steps

    # non-finite loss: stop with a checkpoint of the last good state; SIGINT/SIGTERM: checkpoint, exit (issue 17)
    with guards.RunGuard(accelerator, model, optimizer, output_dir,
                         save=lambda step: save_checkpoint(accelerator, output_dir, step)) as guard:
        accelerator.print(f"Training {sum(p.numel() for p in model.parameters() if p.requires_grad):,} parameters for "
                          f"{max_steps} steps ({num_epochs} epochs, effective batch {effective_batch}).")
        progress = tqdm(total=max_steps, initial=completed_steps, disable=not accelerator.is_local_main_process)
        for epoch in range(start_epoch, num_epochs):
            model.train()
            train_loader.set_epoch(epoch)
            loader = accelerator.skip_first_batches(train_loader, skip_batches) if skip_batches else train_loader
            skip_batches = 0
            for batch in loader:
                batch = random_crop_flip(batch, crop=(image_size, image_size))
                with accelerator.accumulate(model):
                    extra = {}
                    if source != "stage1":
                        extra["token_mask"] = given_token_mask(source, batch, data_args.patch_size)
                    outputs = model(pixel_values=batch["pixel_values"], labels=batch["labels"], **extra)
                    guard.check_loss(outputs, completed_steps)
                    accelerator.backward(outputs.loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                if not accelerator.sync_gradients:
                    continue
                completed_steps += 1
                progress.update(1)
                if ema is not None:
                    ema.update_parameters(accelerator.unwrap_model(model))
                if completed_steps % args.logging_steps == 0:
                    logs = {"train/loss": outputs.loss.item(), "lr/backbone": scheduler.get_last_lr()[0],
                            "epoch": epoch}
                    terms = getattr(outputs, "loss_terms", None) or {}  # iFAM's terms; a plain classifier has none
                    logs.update({f"train/{name}": value.item() for name, value in terms.items()})
                    progress.set_postfix(loss=f"{logs['train/loss']:.3f}")
                    if args.with_tracking:
                        accelerator.log(logs, step=completed_steps)
                if args.checkpointing_steps.isdigit() and completed_steps % int(args.checkpointing_steps) == 0:
                    save_checkpoint(accelerator, output_dir, completed_steps)
                guard.stop_if_signalled(completed_steps)
                if completed_steps >= max_steps:
                    break
            if args.checkpointing_steps == "epoch" and completed_steps < max_steps:
                save_checkpoint(accelerator, output_dir, completed_steps)
            if "validation" in eval_loaders:
                metrics = compute_metrics(predict(model, eval_loaders["validation"], accelerator, source))
                accelerator.print(f"epoch {epoch}: " + format_metrics(metrics))
                if args.with_tracking:
                    accelerator.log({f"validation/{k}": v for k, v in metrics.items() if not isinstance(v, dict)},
                                    step=completed_steps)
            if completed_steps >= max_steps:
                break
        progress.close()

    # Final model (EMA weights when on), evaluated on every evaluation split and saved ready for pipeline()
    final = accelerator.unwrap_model(model) if ema is None else ema.module
    results = {name: compute_metrics(predict(final, loader, accelerator, source),
                                     worst_group_auc=data_args.dataset_name == "siim_acr")
               for name, loader in eval_loaders.items()}
    if args.with_tracking:
        accelerator.end_training()
    statistics = None
    if is_ifam and args.calibration_percentiles:  # token-removal thresholds from the training images, as in the paper
        calibration_loader = eval_dataloader(data["train"], processor, args.per_device_eval_batch_size,
                                             data_args.dataloader_num_workers)
        statistics = calibrate_token_removal(final, calibration_loader, tuple(args.calibration_percentiles))
    if accelerator.is_main_process:
        final.save_pretrained(output_dir)
        if statistics is not None:
            save_statistics(statistics, output_dir)
        processor.save_pretrained(output_dir)
        # the picture shows stage 1's masks: only where stage 1 chose what stage 2 saw (not for given masks)
        if is_ifam and source == "stage1" and args.num_picture_images > 0 and eval_splits:
            write_parts_picture(final, data[eval_splits[-1]], processor, output_dir / "parts.png",
                                args.num_picture_images)
        if results:
            (output_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
        print(results_table(results) if results else guards.NO_EVALUATION)  # one line, not an empty table
        if args.push_to_hub:
            from .hub import publish

            publish(output_dir, repo_id=args.hub_model_id or output_dir.name, token=args.hub_token)
    accelerator.wait_for_everyone()
    return results


def write_parts_picture(model: IFAMForImageClassification, split, processor, path: Path, num_images: int) -> Path:
    """`parts.png` of a run: the split's first images, their part maps, the stage-2 mask, and the mask and prediction
    with each part dropped and under each calibrated token-removal threshold (`ifam_interventions.pictures`)."""
    from ifam_interventions.pictures import part_grid

    images = split.select(range(min(num_images, len(split))))
    batch = next(iter(eval_dataloader(images, processor, num_images)))
    model = model.eval()
    interventions = {f"drop part {k}": {"parts_to_drop": [k]} for k in range(model.config.num_parts)}
    interventions.update({f"q={float(q):g}": {"token_removal_percentile": float(q)}
                          for q in sorted(model.config.part_distance_thresholds or {}, key=float)})
    device = next(model.parameters()).device
    return part_grid(model, batch["pixel_values"].to(device), path, interventions, processor.image_mean,
                     processor.image_std, labels=batch.get("labels"))


def save_checkpoint(accelerator: Accelerator, output_dir: Path, completed_steps: int) -> None:
    """A resumable state; written to a temporary folder first so that a kill mid-save never corrupts the last one."""
    folder = output_dir / f"checkpoint-{completed_steps}"
    partial = output_dir / f".partial-checkpoint-{completed_steps}"
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        (partial / "progress.json").write_text(json.dumps({"completed_steps": completed_steps}))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    accelerator.wait_for_everyone()


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint (`checkpoint-<step>` with its `progress.json`) in `output_dir`, or `None`."""
    checkpoints = [p for p in output_dir.glob("checkpoint-*") if (p / "progress.json").is_file()]
    return max(checkpoints, key=lambda p: int(p.name.split("-")[1]), default=None)


def format_metrics(metrics: dict) -> str:
    """One line of the scalar metrics in percent."""
    return ", ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items() if not isinstance(v, dict))


if __name__ == "__main__":
    main()
