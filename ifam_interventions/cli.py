"""What the intervention commands share: a trained model folder and an evaluation split."""

import argparse

from torch.utils.data import DataLoader
from transformers import AutoImageProcessor, HfArgumentParser

from ifam_train.arguments import DataArguments
from ifam_train.data import eval_dataloader, load_training_data
from modeling_ifam import IFAMForImageClassification


def build_parser(description: str, default_split: str = "test") -> HfArgumentParser:
    """
    A command line with the data options (`DataArguments`) and the model folder, split and batch size.

    Args:
        description (`str`):
            The command's help text.
        default_split (`str`, *optional*, defaults to `"test"`):
            The split evaluated when `--split` is not given.

    Returns:
        `HfArgumentParser`: parse it with `parse_args_into_dataclasses`, which returns `(DataArguments, Namespace)`.
    """
    parser = HfArgumentParser(DataArguments, description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", "--model-name-or-path", required=True,
                        help="A trained iFAM folder (`ifam-train`'s output).")
    parser.add_argument("--split", default=default_split)
    parser.add_argument("--per_device_eval_batch_size", "--per-device-eval-batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="The synthetic benchmark's seed (as in training).")
    return parser


def load_model(name_or_path: str) -> IFAMForImageClassification:
    """A trained iFAM model, in eval mode."""
    return IFAMForImageClassification.from_pretrained(name_or_path).eval()


def split_dataloader(
    data_args: DataArguments, args: argparse.Namespace, model: IFAMForImageClassification
) -> DataLoader:
    """
    The split `args.split` of the data, preprocessed by the model folder's own image processor.

    Args:
        data_args (`DataArguments`):
            Which data.
        args (`argparse.Namespace`):
            `model_name_or_path`, `split`, `per_device_eval_batch_size` and `seed` (`build_parser`'s options).
        model (`IFAMForImageClassification`):
            The model whose labels the data must have.

    Returns:
        `DataLoader`
    """
    data = load_training_data(data_args, seed=args.seed)
    if args.split not in data:
        raise ValueError(f"No split {args.split!r} in the data; splits: {list(data)}.")
    names = data[args.split].features["label"].names
    if dict(enumerate(names)) != model.config.id2label:
        raise ValueError(f"The data's labels {names} are not the model's {list(model.config.id2label.values())}.")
    processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
    return eval_dataloader(data[args.split], processor, args.per_device_eval_batch_size,
                           data_args.dataloader_num_workers)
