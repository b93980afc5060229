"""Inference and training throughput of iFAM against a plain DINOv2 classifier, measured side by side in one run.

    python benchmarks/throughput.py                       # ViT-S/14 at 224, batch 16, float32 (fits a 2-core CPU)
    python benchmarks/throughput.py --size base --image_size 518 --dtype bfloat16 --device cuda \
        --stage1_image_size 224                                                   # the paper's setting on a GPU
    python benchmarks/throughput.py --only stage1_half stage1_small               # some groups only (see --only)

Configurations, all with random weights and the selection fixed by `token_mask` (random weights select arbitrarily):
  (a) iFAM, stage 2 on the selected tokens only, packed (`stage2_inference="packed"`)
  (b) iFAM, stage 2 on the selected tokens only, each image padded to the batch's largest selection (the authors' way)
  (c) iFAM, stage 2 on every token with the masked attention (the training computation)
  (d) transformers' Dinov2ForImageClassification of the same size and resolution
in two regimes: every image keeps 25% of its patches, and each image keeps a fraction drawn uniformly in [5%, 60%].
A cheaper stage 1 (issue 16), measured in the same round-robin as (d):
  (e) iFAM as (a) at 25%, stage 1 at half the image side (`stage1_image_size`, `--stage1_image_size` to change it)
and, in a group of its own at the base size (`--stage1_small_batch_size`, default half the batch, for the CPU):
  (f) iFAM with a ViT-S stage 1 and a ViT-B stage 2, packed, 25% kept (`stage1_config`)
  (g) iFAM with both stages ViT-B, packed, 25% kept (the paper's layout at that size)
  (h) Dinov2ForImageClassification ViT-B.
Also one training step (the paper's recipe: stage-1 backbone frozen but for its tokens, the full objective) of (a)
with `stage2_training="packed"`, of (c) (the default full-length masked training), and of (d).
Ratios are computed between figures of the same run, so they hold on a noisy machine.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from transformers import Dinov2Config, Dinov2ForImageClassification

from ifam_train.optim import set_trainable
from ifam_train.reporting import markdown_table
from modeling_ifam import IFAMConfig, IFAMForImageClassification
from modeling_ifam.modeling_ifam import pack_sequences

SIZES = {
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
}


GROUPS = ("main", "stage1_half", "stage1_small", "train")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--image_size", "--image-size", type=int, default=224)
    parser.add_argument("--batch_size", "--batch-size", type=int, default=16)
    parser.add_argument("--num_parts", "--num-parts", type=int, default=8)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--varied_draws", "--varied-draws", type=int, default=4,
                        help="Selections drawn for the varied regime.")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models (eval mode).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_file", "--output-file", "--json", dest="output_file", type=Path, default=None,
                        help="Write the figures and ratios to this JSON file.")
    parser.add_argument("--stage1_image_size", "--stage1-image-size", type=int, default=None,
                        help="Stage 1's resolution in configuration (e) (default: half the image side, a multiple of "
                        "14).")
    parser.add_argument("--stage1_small_batch_size", "--stage1-small-batch-size", type=int, default=None,
                        help="Batch of the ViT-S/ViT-B group (f-h) (default: half of --batch_size).")
    parser.add_argument("--only", nargs="+", choices=GROUPS, default=list(GROUPS),
                        help="Measure these groups only: main (a-d and the stage-2-only steps), stage1_half (e, with "
                        "d), stage1_small (f-h), train (the training steps).")
    return parser.parse_args(argv)


def token_masks(batch_size: int, num_patches: int, fractions: torch.Tensor, generator: torch.Generator):
    """A boolean [B, N] selection keeping round(fraction * N) random patches of each image."""
    mask = torch.zeros(batch_size, num_patches, dtype=torch.bool)
    for row, fraction in enumerate(fractions.tolist()):
        mask[row, torch.randperm(num_patches, generator=generator)[: round(fraction * num_patches)]] = True
    return mask


class PeakMemory:
    """Peak memory of a block: CUDA's allocator statistics, or the process's resident-set high-water mark on CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
            self.base = self._status("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.peak_mib = (self._status("VmHWM") - self.base) / 2**10

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])  # kB
        raise RuntimeError(f"{field} not in /proc/self/status")


def measure_all(steps: dict, device: torch.device, warmup: int, repeats: int, batch_size: int) -> dict:
    """
    Images per second (median over repeats) and peak memory of every step. The repeats go round-robin over the
    configurations, so a slow phase of a shared machine hits all of them alike and the ratios stay fair.
    """

    def timed(step):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    times, memory = {name: [] for name in steps}, {}
    for name, step in steps.items():
        for _ in range(warmup):
            step()
        with PeakMemory(device) as peak:
            times[name].append(timed(step))
        memory[name] = peak.peak_mib
    for _ in range(repeats - 1):
        for name, step in steps.items():
            times[name].append(timed(step))
    results = {}
    for name, samples in times.items():
        median = sorted(samples)[len(samples) // 2]
        results[name] = {"images_per_second": batch_size / median, "seconds_per_batch": median,
                         "peak_memory_mib": memory[name]}
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    backbone = dict(**SIZES[args.size], image_size=args.image_size, patch_size=14, num_labels=200)
    ifam = IFAMForImageClassification(IFAMConfig(**backbone, num_parts=args.num_parts)).to(device).eval()
    stage1_side = args.stage1_image_size or max(14, args.image_size // 2 // 14 * 14)
    ifam_half = IFAMForImageClassification(
        IFAMConfig(**backbone, num_parts=args.num_parts, stage1_image_size=stage1_side)
    ).to(device).eval()
    dinov2 = Dinov2ForImageClassification(Dinov2Config(**backbone)).to(device).eval()
    run_ifam = torch.compile(ifam) if args.compile else ifam
    run_ifam_half = torch.compile(ifam_half) if args.compile else ifam_half
    run_dinov2 = torch.compile(dinov2) if args.compile else dinov2

    generator = torch.Generator().manual_seed(args.seed)
    batch = args.batch_size
    num_patches = (args.image_size // 14) ** 2
    pixel_values = torch.randn(batch, 3, args.image_size, args.image_size, generator=generator).to(device)
    regimes = {
        "25": token_masks(batch, num_patches, torch.full((batch,), 0.25), generator).to(device),
        "100": torch.ones(batch, num_patches, dtype=torch.bool, device=device),
    }
    # the varied regime cycles through several draws (one per call), so it measures the expected cost, not one draw's
    varied_draws = [
        token_masks(batch, num_patches, 0.05 + 0.55 * torch.rand(batch, generator=generator), generator).to(device)
        for _ in range(args.varied_draws)
    ]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def inference(model, mode=None, token_masks=None, config=None):
        calls = iter(range(10**9))
        config = config or ifam.config

        def step():
            kwargs = {}
            if mode is not None:
                config.stage2_inference = mode
                kwargs["token_mask"] = token_masks[next(calls) % len(token_masks)]
            with torch.inference_mode(), autocast:
                model(pixel_values, **kwargs)
        return step

    def stage2_only(mask):
        weights = mask.to(pixel_values.dtype)

        def step():
            ifam.config.stage2_inference = "packed"
            with torch.inference_mode(), autocast:
                ifam.stage2(pixel_values, mask, weights)
        return step

    setting = {**vars(args), "output_file": str(args.output_file) if args.output_file else None}
    figures = {"setting": {**setting, "machine": machine(device), "stage1_image_size_e": stage1_side},
               "varied_padding": padding_shares(varied_draws, ifam.config.hidden_size)}
    steps = {"d_dinov2": inference(run_dinov2)} if {"main", "stage1_half"} & set(args.only) else {}
    if "main" in args.only:
        for regime, masks in (("25", [regimes["25"]]), ("varied", varied_draws)):
            for label, mode in (("a_packed", "packed"), ("b_padded", "padded"), ("c_masked", "masked")):
                steps[f"{label}_{regime}"] = inference(run_ifam, mode=mode, token_masks=masks)
        steps["stage2_packed_25"] = stage2_only(regimes["25"])
        steps["stage2_packed_100"] = stage2_only(regimes["100"])
    if "stage1_half" in args.only:
        steps["e_packed_25_stage1_half"] = inference(run_ifam_half, "packed", [regimes["25"]], ifam_half.config)
    common = dict(device=device, warmup=args.warmup, repeats=args.repeats, batch_size=batch)
    results = figures["results"] = measure_all(steps, **common)
    if "stage1_small" in args.only:
        results.update(measure_stage1_small(args, device, autocast, generator))

    # One training step of each (forward, the full objective, backward, optimizer step) at 25% selection: iFAM with the
    # token-only stage 2 (`stage2_training="packed"`), iFAM with the full-length masked stage 2 (the default), DINOv2.
    if "train" in args.only:
        results.update(measure_training(ifam, dinov2, pixel_values, regimes["25"], autocast, generator, common))
    figures["ratios"] = ratios(results)
    print(table(figures))
    if args.output_file:
        args.output_file.parent.mkdir(parents=True, exist_ok=True)
        args.output_file.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def padding_shares(draws: list[torch.Tensor], hidden_size: int) -> dict:
    """Stage 2's padding slots per selected token (CLS included) in the varied draws, packed and padded (mean)."""
    shares = {"packed": [], "padded": []}
    for draw in draws:
        lengths = [1 + int(length) for length in draw.sum(dim=1)]
        for mode in shares:
            rows, _, capacity = pack_sequences(lengths, one_per_row=mode == "padded", hidden_size=hidden_size)
            shares[mode].append((max(rows) + 1) * capacity / sum(lengths) - 1)
    return {mode: sum(values) / len(values) for mode, values in shares.items()}


def measure_stage1_small(args, device, autocast, generator) -> dict:
    """(f) ViT-S stage 1 + ViT-B stage 2, (g) ViT-B both stages, (h) DINOv2 ViT-B: packed, 25% kept, own batch size."""
    batch = args.stage1_small_batch_size or max(1, args.batch_size // 2)
    base = dict(**SIZES["base"], image_size=args.image_size, patch_size=14, num_labels=200)
    stage1 = dict(model_type="dinov2", **SIZES["small"], image_size=args.image_size, patch_size=14)
    models = {
        "f_packed_25_stage1_small": IFAMForImageClassification(
            IFAMConfig(**base, num_parts=args.num_parts, stage1_config=stage1)),
        "g_packed_25_base": IFAMForImageClassification(IFAMConfig(**base, num_parts=args.num_parts)),
        "h_dinov2_base": Dinov2ForImageClassification(Dinov2Config(**base)),
    }
    num_patches = (args.image_size // 14) ** 2
    pixel_values = torch.randn(batch, 3, args.image_size, args.image_size, generator=generator).to(device)
    token_mask = token_masks(batch, num_patches, torch.full((batch,), 0.25), generator).to(device)

    def step_of(model):
        model = model.to(device).eval()
        run = torch.compile(model) if args.compile else model
        kwargs = {} if isinstance(model, Dinov2ForImageClassification) else {"token_mask": token_mask}

        def step():
            with torch.inference_mode(), autocast:
                run(pixel_values, **kwargs)
        return step

    steps = {name: step_of(model) for name, model in models.items()}
    return measure_all(steps, device=device, warmup=args.warmup, repeats=args.repeats, batch_size=batch)


def measure_training(ifam, dinov2, pixel_values, token_mask, autocast, generator, common) -> dict:
    batch = pixel_values.shape[0]
    labels = torch.randint(0, 200, (batch,), generator=generator).to(pixel_values.device)
    ifam.train()
    set_trainable(ifam, freeze_stage1_backbone=True, freeze_stage2_backbone=False)
    dinov2.train()

    def train_step(model, stage2_training=None, **kwargs):
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

        def step():
            if stage2_training is not None:
                ifam.config.stage2_training = stage2_training
            with autocast:
                loss = model(pixel_values, labels=labels, **kwargs).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    return measure_all({
        "a_train_step": train_step(ifam, "packed", token_mask=token_mask),
        "c_train_step_masked": train_step(ifam, "masked", token_mask=token_mask),
        "d_train_step": train_step(dinov2),
    }, **common)


def ratios(results: dict) -> dict:
    """The ratios whose figures were all measured (in one round-robin group each)."""

    def ips(name):
        return results[name]["images_per_second"]

    def seconds(name):
        return results[name]["seconds_per_batch"]

    formulas = {
        "inference_ratio_vs_dinov2": lambda: ips("a_packed_25") / ips("d_dinov2"),
        "inference_ratio_vs_dinov2_varied": lambda: ips("a_packed_varied") / ips("d_dinov2"),
        "padded_ratio_vs_dinov2_varied": lambda: ips("b_padded_varied") / ips("d_dinov2"),
        "packed_vs_padded_varied": lambda: ips("a_packed_varied") / ips("b_padded_varied"),
        "packed_vs_masked_25": lambda: ips("a_packed_25") / ips("c_masked_25"),
        "stage2_ratio_25_vs_100": lambda: seconds("stage2_packed_25") / seconds("stage2_packed_100"),
        "train_step_ratio_vs_dinov2": lambda: seconds("a_train_step") / seconds("d_train_step"),
        "train_step_ratio_vs_dinov2_masked": lambda: seconds("c_train_step_masked") / seconds("d_train_step"),
        "inference_ratio_vs_dinov2_stage1_half": lambda: ips("e_packed_25_stage1_half") / ips("d_dinov2"),
        "inference_ratio_vs_dinov2_stage1_small": lambda: ips("f_packed_25_stage1_small") / ips("h_dinov2_base"),
        "inference_ratio_vs_dinov2_base_same_size_stages": lambda: ips("g_packed_25_base") / ips("h_dinov2_base"),
    }
    values = {}
    for name, formula in formulas.items():
        try:
            values[name] = formula()
        except KeyError:  # a group not measured (--only)
            pass
    return values


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def table(figures: dict) -> str:
    setting = figures["setting"]
    lines = [
        f"{setting['size']} ViT/14 at {setting['image_size']} px, batch {setting['batch_size']}, {setting['dtype']}, "
        f"{setting['machine']}",
        markdown_table(["configuration", "images/s", "peak memory (MiB)"],
                       [[name, f"{figure['images_per_second']:.1f}", f"{figure['peak_memory_mib']:.0f}"]
                        for name, figure in figures["results"].items()]),
        "",
        markdown_table(["ratio", "value"], [[name, f"{value:.3f}"] for name, value in figures["ratios"].items()]),
        "",
        "padding slots per selected token, varied draws: " + ", ".join(
            f"{mode} {share:.1%}" for mode, share in figures["varied_padding"].items()),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
