"""Which prototype takes the object at initialisation? (the K = 2 flip of issue 12)

    python experiments/prototype_init_probe.py pretrained/dinov2-tiny-upstream --regime ood --seed 0

Builds iFAM from a DINOv2 folder (`from_dinov2`) with K = 1, 2, 4 under many initialisation seeds and, on validation
images, looks at stage 1's *untrained* hard assignment (argmax of the part maps, no Gumbel noise): which share of the
ground-truth object patches and of the border patches goes to the background prototype (the last one). The default
initialisation draws every prototype from the same small uniform distribution, so nothing tells the background
prototype apart from the foreground ones: whichever prototype lies closest to the object's features takes it.
"""

import argparse
import json
from pathlib import Path

import torch

from ifam_data.synthetic import mask_to_token_mask
from ifam_train.arguments import DataArguments
from ifam_train.data import eval_dataloader, load_training_data
from modeling_ifam import IFAMForImageClassification, dinov2_image_processor


@torch.no_grad()
def background_shares(model, pixel_values, foreground):
    """(share of object patches, share of border patches) that the background prototype wins, argmax assignment."""
    stage1 = model.stage1.eval()
    out = stage1(pixel_values)
    assignment = out.part_maps.flatten(2).argmax(1)  # [B, N]
    background = assignment == out.part_maps.shape[1] - 1
    h = out.part_maps.shape[-1]
    border = torch.zeros(h, h, dtype=torch.bool)
    border[0], border[-1], border[:, 0], border[:, -1] = True, True, True, True
    border = border.flatten().expand_as(background)
    return (100 * background[foreground].float().mean().item(),
            100 * background[border & ~foreground].float().mean().item())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backbone")
    parser.add_argument("--regime", default="ood")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init_seeds", type=int, default=20)
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--data_init", action="store_true",
                        help="Initialise the prototypes from the first 256 training images "
                        "(IFAMForImageClassification.initialize_prototypes, as train.py does).")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    data = load_training_data(DataArguments(synthetic_regime=args.regime, synthetic_num_train=3000), seed=args.seed)
    processor = dinov2_image_processor(56)
    batch = next(iter(eval_dataloader(data["validation"], processor, 256)))
    train_images = next(iter(eval_dataloader(data["train"].select(range(256)), processor, 256)))["pixel_values"]
    foreground = mask_to_token_mask(batch["mask"], 7)
    report = {}
    for parts in args.parts:
        rows = []
        for init_seed in range(args.init_seeds):
            torch.manual_seed(init_seed)
            model = IFAMForImageClassification.from_dinov2(args.backbone, num_parts=parts, id2label={0: "a", 1: "b"})
            if args.data_init:
                model.initialize_prototypes(train_images, seed=init_seed)
            rows.append(background_shares(model, batch["pixel_values"], foreground))
        flips = sum(obj > 50 for obj, _ in rows)
        report[f"K={parts}"] = {"object_to_background_%": [round(r[0], 1) for r in rows],
                                "border_to_background_%": [round(r[1], 1) for r in rows],
                                "inits_where_background_takes_most_of_the_object": flips}
        print(f"K={parts}: background prototype takes most object patches in {flips}/{args.init_seeds} inits; "
              f"mean object->bg {sum(r[0] for r in rows) / len(rows):.1f}%, border->bg "
              f"{sum(r[1] for r in rows) / len(rows):.1f}%", flush=True)
    if args.output:
        args.output.write_text(json.dumps({"backbone": args.backbone, "data_init": args.data_init, **report},
                                          indent=2) + "\n")


if __name__ == "__main__":
    main()
