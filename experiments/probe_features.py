"""How much do a backbone's frozen patch features say about the object? Linear probes on the built-in benchmark.

    python experiments/probe_features.py outputs/experiments/<run>/ood/seed0/pretrained --regime ood --seed 0

Stage 1 of iFAM keeps its backbone frozen and assigns patches to parts by their distance to learned prototypes, so it
can only find the object if the frozen features set object patches apart, and its own classifier only works if the
features pooled over a part carry the class. Two logistic-regression probes, fitted on the training split and scored on
the others, for every layer's patch tokens:

* figure/ground: patch features -> "at least half of this patch is object" (accuracy and foreground IoU);
* class: the features averaged over the ground-truth object patches -> the label (accuracy).

And one label-free measurement: k-means with k = 2 of the patch features (standardised; fitted on the training split's
patches, applied to the others) and the foreground IoU of the better of the two cluster -> foreground assignments, the
assignment chosen **once per dataset** on the training split and kept for the other splits (`*_kmeans_iou`). A
per-image choice would let the ground truth pick the cluster in every image separately (an oracle that scores well on
any two-way split, position alone included), so it is reported beside it (`*_kmeans_iou_per_image_oracle`) but the
per-dataset figure is the one the gate reads.

A linear probe measures what a linear read-out finds, not everything the network knows; the README reports it for the
masked-modelling backbones that `synthetic.py` pretrains.
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from transformers import Dinov2Model, HfArgumentParser

from ifam_data.synthetic import mask_to_token_mask
from ifam_train.arguments import DataArguments
from ifam_train.data import eval_dataloader, load_training_data
from modeling_ifam import dinov2_image_processor


@torch.no_grad()
def features(backbone: Dinov2Model, split) -> dict[str, torch.Tensor]:
    """patches [L, M, D] (every layer's patch tokens, the last after the final layernorm), foreground [M], and per
    image: pooled [L, B, D] (mean over the ground-truth object patches) and labels [B]."""
    patches, foreground, pooled, labels = [], [], [], []
    patch_size = backbone.config.patch_size
    for batch in eval_dataloader(split, dinov2_image_processor(backbone.config.image_size), 256):
        outputs = backbone(batch["pixel_values"], output_hidden_states=True)
        layers = torch.stack([h[:, 1:] for h in outputs.hidden_states[1:-1]] + [outputs.last_hidden_state[:, 1:]])
        mask = mask_to_token_mask(batch["mask"], patch_size)  # [B, N]
        patches.append(layers.flatten(1, 2))
        foreground.append(mask.flatten())
        weights = mask.float()[None, ..., None]
        pooled.append((layers * weights).sum(2) / weights.sum(2).clamp_min(1))
        labels.append(batch["labels"])
    return {"patches": torch.cat(patches, 1), "foreground": torch.cat(foreground),
            "pooled": torch.cat(pooled, 1), "labels": torch.cat(labels)}


def fit_linear(inputs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> tuple[torch.nn.Linear, tuple]:
    """L2-regularised multinomial logistic regression on standardised inputs (L-BFGS)."""
    mean, std = inputs.mean(0), inputs.std(0) + 1e-6
    inputs = (inputs - mean) / std
    probe = torch.nn.Linear(inputs.shape[1], num_classes)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(inputs), targets) + 1e-4 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe, (mean, std)


def predict(probe, standardise, inputs):
    with torch.no_grad():
        return probe((inputs - standardise[0]) / standardise[1]).argmax(-1)


def kmeans(inputs: torch.Tensor, k: int = 2, restarts: int = 5, seed: int = 0) -> torch.Tensor:
    """scikit-learn's k-means (k-means++ seeding, best of `restarts` by inertia) -> centres [k, D]."""
    fitted = KMeans(n_clusters=k, n_init=restarts, random_state=seed).fit(inputs.double().numpy())
    return torch.from_numpy(fitted.cluster_centers_).to(inputs.dtype)


def cluster_iou(clusters: torch.Tensor, truth: torch.Tensor, foreground_cluster: int) -> float:
    predicted = clusters == foreground_cluster
    return 100 * ((predicted & truth).sum() / (predicted | truth).sum()).item()


def per_image_oracle_iou(clusters: torch.Tensor, truth: torch.Tensor, num_patches: int) -> float:
    """The IoU (over the whole split) when each image takes its better cluster -> foreground assignment."""
    clusters, truth = clusters.view(-1, num_patches), truth.view(-1, num_patches)
    choices = []
    for foreground_cluster in (0, 1):
        predicted = clusters == foreground_cluster
        choices.append(((predicted & truth).sum(1), (predicted | truth).sum(1)))
    image_iou = [inter / union.clamp_min(1) for inter, union in choices]
    pick = (image_iou[1] > image_iou[0]).long()
    inter = torch.where(pick.bool(), choices[1][0], choices[0][0]).sum()
    union = torch.where(pick.bool(), choices[1][1], choices[0][1]).sum()
    return 100 * (inter / union).item()


def main(argv=None):
    parser = HfArgumentParser(DataArguments, description=__doc__)
    parser.set_defaults(synthetic_regime="ood")
    parser.add_argument("backbone", help="A Dinov2Model folder (e.g. a `pretrained` folder of synthetic.py).")
    parser.add_argument("--seed", type=int, default=0, help="The benchmark's seed (the one the backbone saw).")
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="Only these layers (1-based; default all).")
    parser.add_argument("--output_file", "--output-file", "--output", dest="output_file", type=Path, default=None,
                        help="Also write the figures to this JSON file.")
    data_args, args = parser.parse_args_into_dataclasses(argv)

    torch.manual_seed(0)
    backbone = Dinov2Model.from_pretrained(args.backbone).eval()
    data = load_training_data(data_args, seed=args.seed)
    splits = {name: features(backbone, data[name]) for name in ("train", "validation", "test")}
    train, num_classes = splits["train"], len(data["train"].features["label"].names)
    report = []
    num_patches = (backbone.config.image_size // backbone.config.patch_size) ** 2
    for layer in range(train["patches"].shape[0]):
        if args.layers and layer + 1 not in args.layers:
            continue
        row = {"layer": layer + 1}
        mean, std = train["patches"][layer].mean(0), train["patches"][layer].std(0) + 1e-6
        centres = kmeans((train["patches"][layer] - mean) / std)
        train_clusters = torch.cdist((train["patches"][layer] - mean) / std, centres).argmin(1)
        foreground_cluster = max((0, 1), key=lambda c: cluster_iou(train_clusters, train["foreground"], c))
        row["train_kmeans_iou"] = cluster_iou(train_clusters, train["foreground"], foreground_cluster)
        ground, standardise = fit_linear(train["patches"][layer], train["foreground"].long(), 2)
        classes, class_standardise = fit_linear(train["pooled"][layer], train["labels"], num_classes)
        for name in ("validation", "test"):
            split = splits[name]
            predicted = predict(ground, standardise, split["patches"][layer]).bool()
            truth = split["foreground"]
            row[f"{name}_figure_ground_accuracy"] = 100 * (predicted == truth).float().mean().item()
            row[f"{name}_foreground_iou"] = 100 * ((predicted & truth).sum() / (predicted | truth).sum()).item()
            labels = predict(classes, class_standardise, split["pooled"][layer])
            row[f"{name}_class_accuracy"] = 100 * (labels == split["labels"]).float().mean().item()
            clusters = torch.cdist((split["patches"][layer] - mean) / std, centres).argmin(1)
            row[f"{name}_kmeans_iou"] = cluster_iou(clusters, truth, foreground_cluster)
            row[f"{name}_kmeans_iou_per_image_oracle"] = per_image_oracle_iou(clusters, truth, num_patches)
        report.append(row)
        print(" | ".join(f"{key} {value:.1f}" if isinstance(value, float) else f"{key} {value}"
                         for key, value in row.items()), flush=True)
    foreground_share = 100 * train["foreground"].float().mean().item()
    print(f"object patches: {foreground_share:.1f}% of the training patches (always answering 'background' scores "
          f"{100 - foreground_share:.1f}% figure/ground accuracy)")
    if args.output_file:
        args.output_file.parent.mkdir(parents=True, exist_ok=True)
        args.output_file.write_text(json.dumps({"backbone": args.backbone, "regime": data_args.synthetic_regime,
                                                "seed": args.seed,
                                           "object_patch_share": foreground_share, "layers": report}, indent=2) + "\n")


if __name__ == "__main__":
    main()
