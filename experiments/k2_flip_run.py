"""One iFAM run of the experiment's recipe from a DINOv2 folder, with the default or the data-dependent prototype
initialisation (`prototype_init.py`): the K = 2 flip of issue 12.

    python experiments/k2_flip_run.py pretrained/dinov2-tiny-upstream --num_parts 2 [--data_init] -- [train.py options]
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import train  # noqa: E402
from ifam_train.data import dinov2_processor, eval_dataloader  # noqa: E402
from modeling_ifam import IFAMForImageClassification  # noqa: E402
from prototype_init import initialize_prototypes_from_features  # noqa: E402
from synthetic import benchmark  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("backbone")
    parser.add_argument("--num_parts", type=int, default=2)
    parser.add_argument("--data_init", action="store_true")
    parser.add_argument("--regime", default="ood")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--output_dir", required=True)
    args, rest = parser.parse_known_args(argv)
    build = train.build_model

    def build_model(train_args, id2label):
        model = build(train_args, id2label)
        if args.data_init and isinstance(model, IFAMForImageClassification):
            data = benchmark(args.regime, 3000, args.seed)["train"].select(range(256))
            pixels = next(iter(eval_dataloader(data, dinov2_processor(56), 256)))["pixel_values"]
            initialize_prototypes_from_features(model.stage1, pixels)
        return model

    train.build_model = build_model
    return train.main([
        "--model_name_or_path", args.backbone, "--backbone_learning_rate", "1e-3", "--synthetic_regime", args.regime,
        "--synthetic_num_train", "3000", "--seed", str(args.seed), "--num_train_epochs", str(args.epochs),
        "--output_dir", args.output_dir, "--checkpointing_steps", "100000", "--num_parts", str(args.num_parts), *rest,
    ])


if __name__ == "__main__":
    main()
