"""What the intervention commands share: a trained model folder and an evaluation split."""

import argparse

from torch.utils.data import DataLoader
from transformers import AutoImageProcessor

from ifam_train.arguments import add_data_arguments
from ifam_train.data import eval_dataloader, load_training_data
from modeling_ifam import IFAMForImageClassification


def add_model_and_data_arguments(parser: argparse.ArgumentParser, default_split: str = "test") -> None:
    parser.add_argument("--model_name_or_path", required=True, help="A trained iFAM folder (train.py's output).")
    parser.add_argument("--split", default=default_split)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="The synthetic benchmark's seed (as in training).")
    add_data_arguments(parser)


def load_model(name_or_path: str) -> IFAMForImageClassification:
    return IFAMForImageClassification.from_pretrained(name_or_path).eval()


def split_dataloader(args: argparse.Namespace, model: IFAMForImageClassification) -> DataLoader:
    """The split `args.split`, preprocessed by the model folder's own image processor."""
    data = load_training_data(args)
    if args.split not in data:
        raise ValueError(f"No split {args.split!r} in the data; splits: {list(data)}.")
    names = data[args.split].features["label"].names
    if dict(enumerate(names)) != model.config.id2label:
        raise ValueError(f"The data's labels {names} are not the model's {list(model.config.id2label.values())}.")
    processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
    return eval_dataloader(data[args.split], processor, args.per_device_eval_batch_size, args.dataloader_num_workers)
