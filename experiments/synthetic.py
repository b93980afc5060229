"""Reproduce the paper's central claim at CPU scale on the built-in spurious-background benchmark.

    python experiments/synthetic.py                        # 3 seeds, both regimes
    python experiments/synthetic.py --regimes ood          # 3 seeds, the ood regime only
    python experiments/synthetic.py --quick                # 1 seed, the ood regime, K = 2

Every method trains with train.py on the same data and the same backbone (hidden 64, 4 layers, patch 7, 56 px):
ERM (transformers' Dinov2ForImageClassification on the whole image), iFAM with K = 1, 2, 4, iFAM with soft masks,
iFAM without stage 2 (the stage-1 prediction of a model trained with the stage-2 loss off: PDiscoFormer), early
masking with the ground-truth foreground masks passed as `token_mask` (the upper bound), and early masking with a fixed
central block of patches (a control: what the objects' central placement alone gives, with no look at the image); plus
the interventions on the iFAM models (token removal at q = 97 and 99, and the leave-one-out part removal chosen on
validation). The (regime, seed) pairs run `--jobs` at a time in separate processes.

The paper's regime is a backbone pretrained once on a large, varied collection (DINOv2) with stage 1 frozen. Here every
method starts from the repository's `pretrained/dinov2-tiny-upstream` (`--backbone`; a small DINOv2 pretrained once on
generated images that are not the benchmark, issue 12): ERM and stage 2 fine-tune it, stage 1 keeps it frozen but for
its CLS and position tokens, as in the paper, with its prototypes initialised from the first 256 training images
(`IFAMForImageClassification.initialize_prototypes`). The backbone learning rate is 1e-4 (the paper's 1e-6 is for
DINOv2-B; at 1e-3 fine-tuning this backbone sometimes never leaves chance). `--backbone mim` instead pretrains a
backbone per regime and seed on that regime's training images (masked-patch regression, `pretrain_mim.py`,
`--pretrain_epochs`, default 30: the previous table, kept as reference rows), and `--backbone scratch` trains
everything from scratch (stage 1 then trains too, and collapses).

Regimes: "ood" (CUB -> Waterbird200 analogue: backgrounds independent of the class in training, unseen kinds at test,
among them line textures that resemble the class stripes) and "correlated" (Waterbirds analogue: each class on its own
background kind 95% of the time in training, balanced test).

The iFAM rows (and their token-removal rows) also say how well the parts are discovered: NMI and ARI between the part
found at each of the objects' five landmarks and the landmark, and keypoint regression Kp (the landmarks regressed from
the part centroids, fitted on train; error in % of the object's box), by `ifam_interventions.evaluate_parts`.

`--stage1_rows add|only` (issue 16, a cheaper stage 1): in the ood regime, iFAM K = 1 at 112 px (16 x 16 patches) with
stage 1 at full resolution and with stage 1 at half resolution (56 px, 8 x 8 patches; `--stage1_image_size 56`), both
from the same backbone as the table (the shipped one was pretrained at 56 px: DINOv2 interpolates its position table to
the 16 x 16 grid, and stage 1 at 56 px sees the resolution it was pretrained at), with the share of patches stage 2
sees, the inference throughput of each against a `Dinov2ForImageClassification` of the same size at 112 px (random
weights, measured round-robin in the same process, so the ratio holds on a shared machine but not the absolute
images/s), their NMI, ARI and Kp, and a picture of each model's maps on the first test images
(`results/synthetic_stage1_<run>.png`).

Writes `results/synthetic.json` (one row per regime and method: mean and std over seeds, accuracies in percent) and
`results/synthetic.md` (`synthetic_quick.*` with `--quick`).
"""

import argparse
import importlib.util
import json
import multiprocessing
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import AutoImageProcessor, Dinov2Config

from ifam_interventions.evaluate_parts import evaluate_parts
from ifam_interventions.leave_one_out import leave_one_out
from ifam_train import train
from ifam_train.arguments import DataArguments
from ifam_train.data import eval_dataloader, load_training_data
from ifam_train.evaluation import compute_metrics, predict
from ifam_train.reporting import markdown_table
from modeling_ifam import IFAMForImageClassification, dinov2_image_processor

ROOT = Path(__file__).resolve().parents[1]

STAGE1_OFF = [f"--{name}_loss_weight=0" for name in (
    "stage1_classification", "presence", "equivariance", "orthogonality", "total_variation", "entropy", "background")]
METHODS = {  # name: (K, train.py options)
    "ERM": (None, ["--model_type", "dinov2"]),
    "iFAM": (None, []),  # K from --parts
    "iFAM soft masks": (2, ["--num_parts", "2", "--use_soft_masks"]),
    "PDiscoFormer (no stage 2)": (2, ["--num_parts", "2", "--stage2_classification_loss_weight", "0"]),
    "early mask, ground truth": (1, ["--num_parts", "1", "--token_mask_source", "ground_truth", *STAGE1_OFF]),
    "early mask, central block": (1, ["--num_parts", "1", "--token_mask_source", "center", *STAGE1_OFF]),
}
METRICS = ("average_accuracy", "worst_group_accuracy", "fg_miou")
PART_METRICS = ("nmi", "ari", "keypoint_regression_error")  # iFAM rows: how well the parts are discovered
# issue 16: stage 1 at half resolution, beside full resolution, at an image size where both grids are meaningful
STAGE1_ROWS_IMAGE_SIZE = 112
STAGE1_ROWS = {  # name: ifam-train options (K = 1, the ood regime)
    f"iFAM K=1 @{STAGE1_ROWS_IMAGE_SIZE} px": ["--num_parts", "1"],
    f"iFAM K=1 @{STAGE1_ROWS_IMAGE_SIZE} px, stage 1 @{STAGE1_ROWS_IMAGE_SIZE // 2} px": [
        "--num_parts", "1", "--stage1_image_size", str(STAGE1_ROWS_IMAGE_SIZE // 2)],
}
# the stage-1 rows also: the share of patches stage 2 sees (%), and images/s against DINOv2 (a ratio); decimals shown
EXTRA_METRICS = {"coverage": 1, "throughput_ratio_vs_dinov2": 2}


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="One seed, the ood regime, K = 2.")
    parser.add_argument("--seed", "--seeds", dest="seeds", type=int, nargs="+", default=None)
    parser.add_argument("--synthetic_regime", "--synthetic-regime", "--regimes", dest="regimes", nargs="+",
                        choices=["ood", "correlated"], default=None)
    parser.add_argument("--num_parts", "--num-parts", "--parts", dest="parts", type=int, nargs="+", default=None)
    parser.add_argument("--synthetic_num_train", "--synthetic-num-train", "--num_train", dest="num_train", type=int,
                        default=3000)
    parser.add_argument("--num_train_epochs", "--num-train-epochs", "--epochs", dest="epochs", type=int, default=10)
    parser.add_argument("--backbone", type=str, default=str(ROOT / "pretrained" / "dinov2-tiny-upstream"),
                        help="The DINOv2 folder every method starts from; 'mim': a masked-modelling backbone "
                        "pretrained per regime and seed (--pretrain_epochs); 'scratch': no pretraining.")
    parser.add_argument("--pretrain_epochs", "--pretrain-epochs", type=int, default=30,
                        help="With --backbone mim: masked-patch pretraining epochs before training.")
    parser.add_argument("--backbone_learning_rate", "--backbone-learning-rate", type=float, default=None,
                        help="Default: 1e-4 from a pretrained backbone (at 1e-3 the fine-tuned network sometimes "
                        "never leaves chance, measured: README), 1e-3 with --backbone mim (the previous table's "
                        "recipe) or scratch.")
    parser.add_argument("--jobs", type=int, default=2,
                        help="(regime, seed) pairs trained at once, in separate processes sharing the CPU cores "
                        "(measured on 2 cores: two one-thread processes finish the same runs in 26%% less time than "
                        "one).")
    parser.add_argument("--stage1_rows", "--stage1-rows", choices=["off", "add", "only"], default="off",
                        help="The cheaper-stage-1 rows (ood regime, 112 px): beside the table, or alone.")
    parser.add_argument("--finished_only", "--finished-only", action="store_true",
                        help="Train nothing: aggregate the runs that have finished (a row's seeds are those it has).")
    parser.add_argument("--work_dir", "--work-dir", type=Path, default=ROOT / "outputs" / "experiments")
    parser.add_argument("--output_dir", "--output-dir", "--results_dir", dest="results_dir", type=Path,
                        default=ROOT / "results", help="Where the JSON and Markdown tables go.")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.regimes = args.regimes or (["ood"] if args.quick or args.stage1_rows == "only" else ["ood", "correlated"])
    args.parts = args.parts or ([2] if args.quick else [1, 2, 4])
    # finished runs are reused, so their folder names the settings they were trained with
    start = {"mim": f"pretrain{args.pretrain_epochs}", "scratch": "pretrain0"}.get(args.backbone,
                                                                                     Path(args.backbone).name)
    if args.backbone_learning_rate is None:
        args.backbone_learning_rate = 1e-3 if args.backbone in ("mim", "scratch") else 1e-4
    lr = "" if args.backbone in ("mim", "scratch") else f"_lr{args.backbone_learning_rate:g}"
    args.work_dir = args.work_dir / f"{start}{lr}_epochs{args.epochs}_train{args.num_train}"
    return args


def benchmark(regime: str, num_train: int, seed: int, image_size: int = 56):
    """The built-in benchmark's `DatasetDict` exactly as `ifam-train` loads it for these settings (cached on disk)."""
    data_args = DataArguments(synthetic_regime=regime, synthetic_num_train=num_train,
                              image_size=None if image_size == 56 else image_size)
    return load_training_data(data_args, seed=seed)


def pretrained_backbone(args, regime: str, seed: int, image_size: int = 56) -> str:
    """
    The backbone every method starts from: the shipped one (`--backbone`, any image size: DINOv2 interpolates its
    position table), or the regime's masked-modelling backbone for this seed pretrained at `image_size` (cached).
    """
    if args.backbone not in ("mim", "scratch"):
        return args.backbone
    folder = args.work_dir / regime / f"seed{seed}" / ("pretrained" if image_size == 56 else f"pretrained{image_size}")
    if (folder / "config.json").is_file():
        return str(folder)
    from pretrain_mim import pretrain  # the sibling script (this script's folder is on the path when it runs)

    data = benchmark(regime, args.num_train, seed, image_size)["train"]
    images = torch.cat([
        batch["pixel_values"] for batch in eval_dataloader(data, dinov2_image_processor(image_size), 256)
    ])
    config = Dinov2Config(**train.SMALL_BACKBONE, patch_size=7, image_size=image_size)
    pretrain(images, config, folder, epochs=args.pretrain_epochs, seed=seed)
    return str(folder)


def run_folder(args, regime: str, seed: int, name: str) -> Path:
    slug = name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "").replace("@", "at")
    return args.work_dir / regime / f"seed{seed}" / slug


def run(args, regime: str, seed: int, name: str, options: list[str], image_size: int = 56) -> Path:
    folder = run_folder(args, regime, seed, name)
    if not (folder / "metrics.json").is_file():
        backbone = "scratch" if args.backbone == "scratch" else pretrained_backbone(args, regime, seed, image_size)
        start = ["--model_name_or_path", backbone]
        size = [] if image_size == 56 else ["--image_size", str(image_size)]
        train.main([
            *start, "--backbone_learning_rate", str(args.backbone_learning_rate),
            "--synthetic_regime", regime, "--synthetic_num_train", str(args.num_train), "--seed", str(seed),
            "--num_train_epochs", str(args.epochs), "--output_dir", str(folder), "--checkpointing_steps", "100000",
            *size, *options,
        ])
    return folder


def evaluate_split(folder: Path, regime: str, seed: int, split: str, args):
    """
    A trained iFAM folder's model and a loader of one split of the benchmark at the size it was trained at: its saved
    image processor's crop (`config.image_size` is the position table's, 56 px for a 112-px run from the shipped
    backbone).
    """
    model = IFAMForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    size = processor.crop_size["height"]
    loader = eval_dataloader(benchmark(regime, args.num_train, seed, size)[split], processor, 256)
    return model, loader


def load_benchmark_script(name: str):
    """A script of `benchmarks/` (not a package), loaded by its path: the round-robin timing of `throughput.py`."""
    spec = importlib.util.spec_from_file_location(f"ifam_benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stage1_rows(args, regime: str, seed: int, accelerator) -> dict[str, dict]:
    """
    Issue 16: iFAM K = 1 at 112 px with stage 1 at full and at half resolution: test metrics and the inference
    throughput of each against `Dinov2ForImageClassification` of the same size at 112 px (one round-robin timing).
    """
    from transformers import Dinov2ForImageClassification

    measure_all = load_benchmark_script("throughput").measure_all

    size, rows, steps, batch = STAGE1_ROWS_IMAGE_SIZE, {}, {}, 64
    pixel_values = None
    for label, options in STAGE1_ROWS.items():
        folder = run(args, regime, seed, label, options, image_size=size)
        metrics = json.loads((folder / "metrics.json").read_text())["test"]
        rows[label] = {"K": 1, **{m: 100 * metrics[m] for m in (*METRICS, "coverage") if m in metrics}}
        if seed == min(args.seeds):
            parts_picture(args, folder, regime, seed, f"synthetic_stage1_{folder.name}.png")
        for row in part_rows(args, regime, seed, folder, accelerator):  # on stage 1's own grid, upsampled to the input
            if row["percentile"] is None:
                rows[label].update({m: 100 * row[m] for m in PART_METRICS if m in row})
        model, loader = evaluate_split(folder, regime, seed, "test", args)
        if pixel_values is None:
            pixel_values = next(iter(loader))["pixel_values"][:batch]
            dinov2 = Dinov2ForImageClassification(Dinov2Config(**train.SMALL_BACKBONE, patch_size=7, image_size=size,
                                                               num_labels=model.config.num_labels)).eval()
            steps["dinov2"] = lambda m=dinov2, x=pixel_values: m(x)
        steps[label] = lambda m=model, x=pixel_values: m(x)  # its own stage-1 selection
    with torch.inference_mode():
        timing = measure_all(steps, device=torch.device("cpu"), warmup=2, repeats=9, batch_size=len(pixel_values))
    for label in STAGE1_ROWS:
        rows[label]["throughput_ratio_vs_dinov2"] = (
            timing[label]["images_per_second"] / timing["dinov2"]["images_per_second"])
    return rows


def rows_for_seed(args, regime: str, seed: int) -> dict[str, dict]:
    """metrics (in %) per method name for one seed."""
    rows = {}
    accelerator = Accelerator()
    if args.stage1_rows != "off" and regime == "ood":
        rows.update(stage1_rows(args, regime, seed, accelerator))
    if args.stage1_rows == "only":
        return rows
    for name, (k, options) in METHODS.items():
        variants = [(f"iFAM K={part}", part, ["--num_parts", str(part)]) for part in args.parts] if name == "iFAM" \
            else [(name, k, options)]
        for label, parts, opts in variants:
            if args.finished_only and not (run_folder(args, regime, seed, label) / "metrics.json").is_file():
                continue
            folder = run(args, regime, seed, label, opts)
            metrics = json.loads((folder / "metrics.json").read_text())["test"]
            if label.startswith("PDiscoFormer"):  # the stage-1 prediction
                model, loader = evaluate_split(folder, regime, seed, "test", args)
                results = predict(model, loader, accelerator)
                results["predictions"] = results["stage1_predictions"]
                metrics = compute_metrics(results)
            rows[label] = {"K": parts, **{m: 100 * metrics[m] for m in METRICS if m in metrics}}
            if label == "iFAM K=2" and regime == "ood" and seed == min(args.seeds):
                parts_picture(args, folder, regime, seed, f"synthetic_parts_{regime}_k2.png")
            if label.startswith("iFAM K="):
                rows.update(intervention_rows(args, regime, seed, label, parts, folder, accelerator))
                for row in part_rows(args, regime, seed, folder, accelerator):
                    key = label if row["percentile"] is None else f"{label} + token removal q={row['percentile']:g}"
                    rows[key].update({m: 100 * row[m] for m in PART_METRICS if m in row})
    return rows


def parts_picture(args, folder: Path, regime: str, seed: int, name: str, num_images: int = 8) -> Path:
    """`results/<name>`: the first test images, their parts, stage-2 input, interventions."""
    from ifam_interventions.pictures import part_grid

    model, loader = evaluate_split(folder, regime, seed, "test", args)
    batch = next(iter(loader))
    interventions = {f"drop part {k}": {"parts_to_drop": [k]} for k in range(model.config.num_parts)}
    interventions.update({f"q={float(q):g}": {"token_removal_percentile": float(q)}
                          for q in sorted(model.config.part_distance_thresholds, key=float)})
    args.results_dir.mkdir(parents=True, exist_ok=True)
    return part_grid(model, batch["pixel_values"][:num_images], args.results_dir / name, interventions,
                     labels=batch["labels"][:num_images])


def part_rows(args, regime, seed, folder, accelerator) -> list[dict]:
    """NMI, ARI and Kp of the model's parts on test (Kp fitted on train), without and with token removal."""
    model, test = evaluate_split(folder, regime, seed, "test", args)
    _, train_split = evaluate_split(folder, regime, seed, "train", args)
    return evaluate_parts(model, test, train_split, accelerator, percentiles=(97.0, 99.0))


def intervention_rows(args, regime, seed, label, parts, folder, accelerator) -> dict[str, dict]:
    """Token removal at q=97/99 on test; part removal: the leave-one-out row best on validation, applied to test."""
    model, test = evaluate_split(folder, regime, seed, "test", args)
    _, validation = evaluate_split(folder, regime, seed, "validation", args)
    rows = {}
    for q in (97.0, 99.0):
        metrics = compute_metrics(predict(model, test, accelerator, token_removal_percentile=q))
        rows[f"{label} + token removal q={q:g}"] = {"K": parts, **{m: 100 * metrics[m] for m in METRICS}}
    if parts > 1:
        table = leave_one_out(model, validation, accelerator)
        best = max(table, key=lambda row: row["worst_group_accuracy"])
        metrics = compute_metrics(predict(model, test, accelerator, parts_to_drop=best["parts_dropped"]))
        rows[f"{label} + part removal (validation-chosen)"] = {
            "K": parts, "parts_dropped": best["parts_dropped"], **{m: 100 * metrics[m] for m in METRICS}}
    return rows


def aggregate(per_seed: list[dict[str, dict]]) -> list[dict]:
    rows = []
    methods = list(dict.fromkeys(method for seed_rows in per_seed for method in seed_rows))
    for method in methods:
        runs = [seed_rows[method] for seed_rows in per_seed if method in seed_rows]
        row = {"method": method, "K": runs[0]["K"], "seeds": len(runs)}
        for metric in (*METRICS, *PART_METRICS, *EXTRA_METRICS):
            values = [r[metric] for r in runs if metric in r]
            if values:
                row[metric] = {"mean": statistics.fmean(values),
                               "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        rows.append(row)
    return rows


def markdown(table: dict[str, list[dict]], seeds: int) -> str:
    lines = []
    header = ["method", "K", "seeds", "average accuracy", "worst-group accuracy", "foreground mIoU", "NMI", "ARI",
              "Kp ↓"]
    for regime, rows in table.items():
        extra = [m for m in EXTRA_METRICS if any(m in row for row in rows)]
        cells = [[row["method"], row["K"] if row["K"] is not None else "–", row.get("seeds", seeds)]
                 + [f"{row[m]['mean']:.1f} ± {row[m]['std']:.1f}" if m in row else "–" for m in METRICS + PART_METRICS]
                 + [f"{row[m]['mean']:.{EXTRA_METRICS[m]}f} ± {row[m]['std']:.{EXTRA_METRICS[m]}f}" if m in row else "–"
                    for m in extra]
                 for row in rows]
        lines += [f"### Regime `{regime}` ({seeds} seed{'s' * (seeds > 1)}, test split, %)", "",
                  markdown_table(header + [m.replace("_", " ") for m in extra], cells), ""]
    return "\n".join(lines)


def main(argv=None):
    args = parse(argv)
    units = [(regime, seed) for regime in args.regimes for seed in args.seeds]
    jobs = min(args.jobs, len(units))
    if jobs > 1:
        # spawned workers, each with its share of the cores (threads beyond the cores slow every job down)
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(threads,)) as pool:
            per_unit = list(pool.map(rows_for_seed, [args] * len(units), *zip(*units)))
    else:
        per_unit = [rows_for_seed(args, regime, seed) for regime, seed in units]
    rows = dict(zip(units, per_unit))
    table = {regime: aggregate([rows[regime, seed] for seed in args.seeds]) for regime in args.regimes}
    write(args, table)
    print(markdown(table, len(args.seeds)))


REFERENCE = ROOT / "results" / "synthetic_mim.json"  # the previous table: per-regime masked-modelling backbones
REFERENCE_METHODS = ("ERM", "iFAM K=1", "iFAM K=2", "iFAM K=4")


def with_reference_rows(table: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The masked-modelling backbone's ERM and iFAM rows (previous table, 3 seeds, carried, not re-run), labelled."""
    if not REFERENCE.is_file():
        return table
    reference = json.loads(REFERENCE.read_text())
    out = {}
    for regime, rows in table.items():
        carried = [{**{k: v for k, v in row.items() if k != "regime"},
                    "method": f"{row['method']} [masked-modelling backbone, previous table]", "seeds": 3}
                   for row in reference if row["regime"] == regime and row["method"] in REFERENCE_METHODS]
        out[regime] = rows + carried
    return out


def write(args, table):
    args.results_dir.mkdir(parents=True, exist_ok=True)
    name = "synthetic_quick" if args.quick else "synthetic"
    if args.stage1_rows == "only":
        name = "synthetic_stage1" + "_quick" * args.quick
    elif args.backbone not in ("mim", "scratch") and not args.quick:
        table = with_reference_rows(table)
    rows = [{"regime": regime, **row} for regime, rows in table.items() for row in rows]
    (args.results_dir / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.results_dir / f"{name}.md").write_text(markdown(table, len(args.seeds)))


if __name__ == "__main__":
    main()
