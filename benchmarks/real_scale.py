"""The paper's scale end to end: ViT-B/14 with 4 registers at 518 px (random weights), float32 and bf16 autocast.

    python benchmarks/real_scale.py --output_file results/real_scale_cpu.json            # CPU, batch 2 (minutes)
    python benchmarks/real_scale.py --device cuda --output_file results/real_scale_gpu.json

CPU (the default): every configuration runs in a fresh Python process, so that its peak memory is its own:
  - inference with stage 2 `packed`, `padded` and `masked` (same predictions, logits within a stated tolerance);
  - one training step with the paper's recipe (stage-1 backbone frozen but for its tokens, AdamW over the recipe's
    parameter groups, the full objective with equivariance, gradient clipping at 2): finite loss, gradients that reach
    stage 1's prototypes;
each in float32 and under bf16 autocast. Peak memory on the CPU is the growth of the process's resident set
(Linux `VmHWM`, reset through `/proc/self/clear_refs` once the model, the inputs and the optimizer exist) during the
measured call: activations, autograd buffers, gradients, optimizer state and allocator caches, not the weights. The
whole process's high-water mark (`ru_maxrss`) is reported beside it. Times are single calls (first call, no warm-up).

The backbone weights are random; the prototypes are set to the float32 stage-1 features of 9 fixed patches of the
batch (a stand-in for trained prototypes, which sit among the features), so that the part assignment and the token
mask are not trivial. The bf16 model's part assignment is compared with the float32 model's patch by patch.

GPU (`--device cuda`): images/s of iFAM (stage 2 packed) against transformers' `Dinov2ForImageClassification` at
the paper's setting (ViT-B/14, 518 px, bf16 autocast, batch 64 or the largest that fits), with and without
`torch.compile`, and one training step's time and peak memory (`torch.cuda.max_memory_allocated`) at batch 16.
"""

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ifam_train.optim import parameter_groups, set_trainable
from modeling_ifam import IFAMConfig, IFAMForImageClassification

REPO = Path(__file__).resolve().parents[1]


VIT_B14_REG4 = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=14,
                    num_register_tokens=4, layer_norm_eps=1e-6)
# the recipe (train.py defaults for a pretrained backbone; reference batch 16)
RECIPE = dict(backbone_lr=1e-6, prototype_lr=1e-3, head_lr=1e-2, weight_decay=0.05, max_grad_norm=2.0)
# packed / padded against masked: float32 differs by summation order only; bf16 rounds every matmul
TOLERANCE = {"float32": dict(atol=1e-4, rtol=1e-4), "bfloat16": dict(atol=5e-2, rtol=5e-2)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--image_size", type=int, default=518)
    parser.add_argument("--num_parts", type=int, default=8)
    parser.add_argument("--num_labels", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=None, help="CPU: 2; GPU: 64 for inference")
    parser.add_argument("--train_batch_size", type=int, default=16, help="GPU training step")
    parser.add_argument("--repeats", type=int, default=10, help="GPU timing repeats (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_file", "--output_json", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one CPU configuration
    parser.add_argument("--worker_dir", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_model(args, **overrides) -> IFAMForImageClassification:
    torch.manual_seed(args.seed)
    config = IFAMConfig(**VIT_B14_REG4, image_size=args.image_size, num_parts=args.num_parts,
                        num_labels=args.num_labels, **overrides)
    return IFAMForImageClassification(config)


def inputs(args, batch_size: int, device="cpu"):
    generator = torch.Generator().manual_seed(args.seed + 1)
    pixel_values = torch.randn(batch_size, 3, args.image_size, args.image_size, generator=generator)
    labels = torch.randint(0, args.num_labels, (batch_size,), generator=generator)
    return pixel_values.to(device), labels.to(device)


@torch.no_grad()
def prototypes_from_features(model, pixel_values) -> torch.Tensor:
    """Stand-in for trained prototypes: the float32 stage-1 features of K + 1 fixed patches of the batch."""
    prefix = 1 + model.config.num_register_tokens
    features = model.stage1.backbone(pixel_values.float()).last_hidden_state[:, prefix:].flatten(0, 1)
    index = torch.randperm(features.shape[0], generator=torch.Generator().manual_seed(0))[: model.config.num_parts + 1]
    return features[index].float().cpu()


def autocast(device: str, dtype: str):
    return torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


# ---------------------------------------------------------------------------------------------------------------- CPU


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_worker(args) -> None:
    """One configuration in this (fresh) process; writes its outputs to `worker_dir/<name>.pt`."""
    spec = json.loads(args.worker)
    torch.set_num_threads(torch.get_num_threads())
    model = build_model(args, stage2_inference=spec.get("mode", "packed"))
    with torch.no_grad():
        model.stage1.prototypes.copy_(torch.load(args.worker_dir / "prototypes.pt"))
    pixel_values, labels = inputs(args, args.batch_size)
    optimizer = None
    if spec["task"] == "train":
        model.train()
        set_trainable(model, freeze_stage1_backbone=True, freeze_stage2_backbone=False)
        optimizer = torch.optim.AdamW(parameter_groups(
            model, RECIPE["backbone_lr"], RECIPE["prototype_lr"], RECIPE["head_lr"], RECIPE["weight_decay"],
            effective_batch_size=args.batch_size,
        ))
    else:
        model.eval()

    baseline = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    start = time.perf_counter()
    result = {}
    if spec["task"] == "train":
        with autocast("cpu", spec["dtype"]):
            outputs = model(pixel_values, labels=labels)
        outputs.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), RECIPE["max_grad_norm"])
        prototype_grad = model.stage1.prototypes.grad
        result.update(
            loss=outputs.loss.item(),
            loss_terms={name: value.item() for name, value in outputs.loss_terms.items()},
            grad_norm_before_clipping=grad_norm.item(),
            prototype_grad_norm=prototype_grad.norm().item() if prototype_grad is not None else None,
            prototype_grad_finite=bool(prototype_grad is not None and torch.isfinite(prototype_grad).all()),
            all_grads_finite=all(torch.isfinite(p.grad).all().item() for p in model.parameters() if p.grad is not None),
        )
        before = model.stage1.prototypes.detach().clone()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result["prototypes_moved"] = not torch.equal(before, model.stage1.prototypes.detach())
    else:
        with torch.inference_mode(), autocast("cpu", spec["dtype"]):
            outputs = model(pixel_values)
        result.update(
            logits=outputs.logits.float(),
            stage1_logits=outputs.stage1_logits.float(),
            assignment=outputs.part_maps.argmax(dim=1).flatten(1),
            token_mask=outputs.token_mask,
            part_maps_dtype=str(outputs.part_maps.dtype),
        )
    result["seconds"] = time.perf_counter() - start
    result["peak_memory_mib"] = (_status_kib("VmHWM") - baseline) / 1024
    result["process_max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.save(result, args.worker_dir / f"{spec['name']}.pt")


def run_cpu(args) -> dict:
    args.batch_size = args.batch_size or 2
    configurations = []
    for dtype in ("float32", "bfloat16"):
        for mode in ("packed", "padded", "masked"):
            configurations.append(dict(name=f"inference_{mode}_{dtype}", task="inference", mode=mode, dtype=dtype))
        configurations.append(dict(name=f"train_step_{dtype}", task="train", dtype=dtype))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model = build_model(args).eval()
        pixel_values, _ = inputs(args, args.batch_size)
        torch.save(prototypes_from_features(model, pixel_values), folder / "prototypes.pt")
        del model
        results = {}
        for spec in configurations:
            command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec), "--worker_dir",
                       str(folder), "--image_size", str(args.image_size), "--num_parts", str(args.num_parts),
                       "--num_labels", str(args.num_labels), "--batch_size", str(args.batch_size),
                       "--seed", str(args.seed)]
            print(f"running {spec['name']} ...", flush=True)
            subprocess.run(command, check=True, cwd=REPO)
            results[spec["name"]] = torch.load(folder / f"{spec['name']}.pt", weights_only=False)
            result = results[spec["name"]]
            print(f"  {result['seconds']:.1f} s, peak +{result['peak_memory_mib']:.0f} MiB", flush=True)

    figures = {"inference": {}, "training": {}, "consistency": {}, "bf16_vs_fp32": {}}
    for name, result in results.items():
        summary = {key: result[key] for key in ("seconds", "peak_memory_mib", "process_max_rss_mib")}
        if name.startswith("train"):
            figures["training"][name] = {**summary, **{k: v for k, v in result.items() if k not in summary}}
        else:
            summary["selected_fraction"] = result["token_mask"].float().mean().item()
            summary["predictions"] = result["logits"].argmax(-1).tolist()
            summary["part_maps_dtype"] = result["part_maps_dtype"]
            figures["inference"][name] = summary
    for dtype in ("float32", "bfloat16"):
        reference = results[f"inference_masked_{dtype}"]
        for mode in ("packed", "padded"):
            other = results[f"inference_{mode}_{dtype}"]
            difference = (other["logits"] - reference["logits"]).abs()
            within = torch.allclose(other["logits"], reference["logits"], **TOLERANCE[dtype])
            figures["consistency"][f"{mode}_vs_masked_{dtype}"] = {
                "max_abs_logit_difference": difference.max().item(),
                "logit_scale": reference["logits"].abs().max().item(),
                "tolerance": TOLERANCE[dtype],
                "within_tolerance": within,
                "same_predictions": torch.equal(other["logits"].argmax(-1), reference["logits"].argmax(-1)),
                "same_token_mask": torch.equal(other["token_mask"], reference["token_mask"]),
            }
    fp32, bf16 = results["inference_packed_float32"], results["inference_packed_bfloat16"]
    figures["bf16_vs_fp32"] = {
        "patches": fp32["assignment"].numel(),
        "part_assignment_differs_fraction": (fp32["assignment"] != bf16["assignment"]).float().mean().item(),
        "token_mask_differs_fraction": (fp32["token_mask"] != bf16["token_mask"]).float().mean().item(),
        "same_predictions": torch.equal(fp32["logits"].argmax(-1), bf16["logits"].argmax(-1)),
        "max_abs_logit_difference": (fp32["logits"] - bf16["logits"]).abs().max().item(),
        "max_abs_stage1_logit_difference": (fp32["stage1_logits"] - bf16["stage1_logits"]).abs().max().item(),
    }
    return figures


# ---------------------------------------------------------------------------------------------------------------- GPU


def run_gpu(args) -> dict:  # written for a CUDA machine; not run where none is available
    from transformers import Dinov2Config, Dinov2ForImageClassification

    device = "cuda"
    batch = args.batch_size or 64
    figures = {"inference": {}, "training": {}}

    def median_seconds(step, repeats):
        step()  # warm-up (and compilation)
        step()
        times = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    def largest_batch_that_fits(make_step, batch_size):
        while batch_size >= 1:
            try:
                step = make_step(batch_size)
                step()
                return step, batch_size
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                batch_size //= 2
        raise RuntimeError("batch 1 does not fit")

    ifam = build_model(args, stage2_inference="packed").to(device).eval()
    with torch.no_grad():
        ifam.stage1.prototypes.copy_(prototypes_from_features(ifam, inputs(args, 2, device)[0]).to(device))
    dinov2 = Dinov2ForImageClassification(Dinov2Config(
        **{k: v for k, v in VIT_B14_REG4.items() if k != "num_register_tokens"}, image_size=args.image_size,
        num_labels=args.num_labels)).to(device).eval()

    for compiled in (False, True):
        for name, model in (("ifam_packed", ifam), ("dinov2", dinov2)):
            run = torch.compile(model) if compiled else model

            def make_step(batch_size, run=run):
                pixel_values, _ = inputs(args, batch_size, device)

                def forward_once():
                    with torch.inference_mode(), autocast(device, "bfloat16"):
                        run(pixel_values)
                return forward_once

            step, fitted = largest_batch_that_fits(make_step, batch)
            seconds = median_seconds(step, args.repeats)
            key = f"{name}{'_compiled' if compiled else ''}"
            figures["inference"][key] = {"batch_size": fitted, "images_per_second": fitted / seconds}
    ips = figures["inference"]
    figures["inference_ratio_vs_dinov2"] = ips["ifam_packed"]["images_per_second"] / ips["dinov2"]["images_per_second"]
    figures["inference_ratio_vs_dinov2_compiled"] = (
        ips["ifam_packed_compiled"]["images_per_second"] / ips["dinov2_compiled"]["images_per_second"])

    pixel_values, labels = inputs(args, args.train_batch_size, device)
    ifam.train()
    set_trainable(ifam, freeze_stage1_backbone=True, freeze_stage2_backbone=False)
    dinov2.train()
    for name, model in (("ifam", ifam), ("dinov2", dinov2)):
        optimizer = torch.optim.AdamW(parameter_groups(
            model, RECIPE["backbone_lr"], RECIPE["prototype_lr"], RECIPE["head_lr"], RECIPE["weight_decay"],
            effective_batch_size=args.train_batch_size))

        def step(model=model, optimizer=optimizer):
            with autocast(device, "bfloat16"):
                loss = model(pixel_values, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), RECIPE["max_grad_norm"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        seconds = median_seconds(step, max(3, args.repeats // 2))
        figures["training"][name] = {"batch_size": args.train_batch_size, "seconds_per_step": seconds,
                                     "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20}
    return figures


# --------------------------------------------------------------------------------------------------------------------


def machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model_name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name")), platform.processor() or platform.machine())
    return f"{model_name}, {torch.get_num_threads()} threads"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker is not None:
        run_worker(args)
        return {}
    start = time.perf_counter()
    figures = run_cpu(args) if args.device == "cpu" else run_gpu(args)
    setting = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("worker")}
    figures = {"setting": {**setting, "model": "ViT-B/14, 4 registers, random weights", "machine": machine(args.device),
                           "torch": torch.__version__, "total_seconds": time.perf_counter() - start}, **figures}
    print(json.dumps(figures, indent=2, default=str))
    if args.output_file:
        args.output_file.parent.mkdir(parents=True, exist_ok=True)
        args.output_file.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return figures


if __name__ == "__main__":
    main()
