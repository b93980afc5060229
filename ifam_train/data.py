"""Turning a benchmark's `DatasetDict` into model inputs: the image processor's geometry, plus masks and groups."""

import os

import numpy as np
import torch
from datasets import DatasetDict
from torch.utils.data import DataLoader
from transformers import BitImageProcessor
from transformers.image_processing_utils import get_size_dict
from transformers.image_transforms import center_crop, get_resize_output_image_size, resize
from transformers.image_utils import ChannelDimension, PILImageResampling


from .arguments import DataArguments


class BatchTransform:
    """
    `datasets.Dataset.with_transform` callable: images (and ground-truth masks) -> tensors, deterministically.

    Evaluation uses the image processor itself, so figures match what `pipeline` users get; the masks follow the same
    resize and centre crop (nearest neighbour), and so do `keypoints` (`[x, y, visible]` rows; a keypoint the crop cuts
    off becomes invisible) and `bbox` (`[x, y, width, height]`, not clipped to the crop) where the split has them
    (evaluation only: the training loop's random crop does not move them). Training resizes the same way and keeps the
    central square of the resized side; the random crop and flip happen in the training loop (`random_crop_flip`),
    where they draw from the RNG that Accelerate checkpoints, so a resumed run replays the same augmentations.
    """

    def __init__(self, processor: BitImageProcessor, train: bool):
        self.processor, self.train = processor, train
        self.size = get_size_dict(processor.size, default_to_square=False)["shortest_edge"]
        self.crop = (processor.crop_size["height"], processor.crop_size["width"]) if not train else (self.size,) * 2
        self.mean = np.asarray(processor.image_mean, dtype=np.float32)
        self.std = np.asarray(processor.image_std, dtype=np.float32)

    def _geometry(self, array: np.ndarray, resample) -> np.ndarray:
        """Resize the short side as the processor does, then centre-crop to `self.crop`; [H, W, C] -> [h, w, C]."""
        output_size = get_resize_output_image_size(
            array, size=self.size, default_to_square=False, input_data_format=ChannelDimension.LAST
        )
        array = resize(array, output_size, resample=resample, input_data_format=ChannelDimension.LAST)
        return center_crop(array, self.crop, input_data_format=ChannelDimension.LAST)

    def _move_annotations(self, batch: dict, images: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints [B, L, 3] and boxes [B, 4] in the pixel frame of the resized and centre-cropped image."""
        keypoints, boxes = [], []
        for index, image in enumerate(images):
            width, height = image.size
            new_height, new_width = get_resize_output_image_size(
                np.empty((height, width, 1)), size=self.size, default_to_square=False,
                input_data_format=ChannelDimension.LAST)
            # transformers' centre crop starts at (side - crop) // 2 (negative: padding) whichever way it goes
            top, left = (new_height - self.crop[0]) // 2, (new_width - self.crop[1]) // 2
            scale = np.asarray([new_width / width, new_height / height], dtype=np.float64)
            shift = np.asarray([left, top], dtype=np.float64)
            points = np.asarray(batch["keypoints"][index] if "keypoints" in batch else np.zeros((0, 3)), np.float64)
            xy = points[:, :2] * scale - shift
            inside = ((xy >= 0) & (xy < np.asarray(self.crop[::-1]))).all(axis=1)
            visible = (points[:, 2] > 0) & inside
            keypoints.append(np.concatenate([np.where(visible[:, None], xy, 0.0), visible[:, None]], axis=1))
            box = np.asarray(batch["bbox"][index] if "bbox" in batch else np.zeros(4), np.float64)
            boxes.append(np.concatenate([box[:2] * scale - shift, box[2:] * scale]))
        return (torch.as_tensor(np.stack(keypoints), dtype=torch.float32),
                torch.as_tensor(np.stack(boxes), dtype=torch.float32))

    def __call__(self, batch: dict) -> dict:
        images = [image.convert("RGB") for image in batch["image"]]
        out = {"labels": torch.as_tensor(batch["label"])}
        if "group" in batch:
            out["group"] = torch.as_tensor(batch["group"])
        if "mask" in batch:
            out["mask"] = torch.stack([
                torch.from_numpy(np.ascontiguousarray(
                    self._geometry(np.asarray(mask.convert("L"))[..., None], PILImageResampling.NEAREST)[..., 0] > 0
                ))
                for mask in batch["mask"]
            ])
        if not self.train:
            out["pixel_values"] = self.processor(images, return_tensors="pt")["pixel_values"]
            if "keypoints" in batch or "bbox" in batch:
                for key, values in zip(("keypoints", "bbox"), self._move_annotations(batch, images)):
                    if key in batch:
                        out[key] = values
            return out
        arrays = [self._geometry(np.asarray(image), self.processor.resample).astype(np.float32) for image in images]
        pixel_values = [(array / 255.0 - self.mean) / self.std for array in arrays]
        out["pixel_values"] = torch.from_numpy(np.stack(pixel_values).transpose(0, 3, 1, 2).copy())
        return out


def random_crop_flip(batch: dict, crop: tuple[int, int]) -> dict:
    """A random `crop` and a random horizontal flip per image, applied alike to `pixel_values` and `mask`."""
    pixel_values, mask = batch["pixel_values"], batch.get("mask")
    height, width = pixel_values.shape[-2:]
    cropped_images, cropped_masks = [], []
    for index in range(pixel_values.shape[0]):
        top = int(torch.randint(0, height - crop[0] + 1, ()))
        left = int(torch.randint(0, width - crop[1] + 1, ()))
        flip = bool(torch.rand(()) < 0.5)
        window = (..., slice(top, top + crop[0]), slice(left, left + crop[1]))
        for source, target in ((pixel_values, cropped_images), (mask, cropped_masks)):
            if source is not None:
                piece = source[index][window]
                target.append(piece.flip(-1) if flip else piece)
    out = {**batch, "pixel_values": torch.stack(cropped_images)}
    if mask is not None:
        out["mask"] = torch.stack(cropped_masks)
    return out


def collate(examples: list[dict]) -> dict:
    """Stack the per-example tensors that `BatchTransform` produced."""
    return {key: torch.stack([example[key] for example in examples]) for key in examples[0]}


def eval_dataloader(dataset, processor: BitImageProcessor, batch_size: int, num_workers: int = 0) -> DataLoader:
    """A split preprocessed as `pipeline` users get it (the image processor), in order."""
    return DataLoader(dataset.with_transform(BatchTransform(processor, train=False)), batch_size=batch_size,
                      collate_fn=collate, num_workers=num_workers)


def load_training_data(data_args: DataArguments, seed: int = 0) -> DatasetDict:
    """
    The `DatasetDict` to train or evaluate on: the built-in benchmark, a paper benchmark, or a Hub/imagefolder dataset.

    Args:
        data_args (`DataArguments`):
            Which data, and the limits on its splits.
        seed (`int`, *optional*, defaults to 0):
            The synthetic benchmark's seed, and the one the split limits shuffle with.

    Returns:
        `DatasetDict` with a `train` split.
    """
    if data_args.dataset_name == "synthetic":
        from ifam_data.synthetic import make_synthetic_benchmark

        data = make_synthetic_benchmark(
            regime=data_args.synthetic_regime, num_train=data_args.synthetic_num_train,
            image_size=data_args.image_size or 56, patch_size=data_args.patch_size, seed=seed,
            cache_dir=os.path.join(os.path.expanduser("~"), ".cache", "ifam", "synthetic"),
        )
        return _limit(data, data_args, seed)

    from ifam_data.benchmarks import BENCHMARKS, load_benchmark, load_generic

    if data_args.dataset_name in BENCHMARKS and data_args.train_dir is None:
        if data_args.data_dir is None:
            raise ValueError(f"--dataset_name {data_args.dataset_name} needs --data_dir (the benchmark's raw layout).")
        data = load_benchmark(data_args.dataset_name, data_args.data_dir)
    else:
        data = load_generic(
            dataset_name=None if data_args.train_dir else data_args.dataset_name, train_dir=data_args.train_dir,
            validation_dir=data_args.validation_dir, image_column_name=data_args.image_column_name,
            label_column_name=data_args.label_column_name, group_column_name=data_args.group_column_name,
        )
    return _limit(data, data_args, seed)


def _limit(data: DatasetDict, data_args: DataArguments, seed: int) -> DatasetDict:
    if "train" not in data:
        raise ValueError(f"The data has no 'train' split (splits: {list(data)}).")
    limits = [("train", data_args.max_train_samples)] + [(s, data_args.max_eval_samples) for s in data if s != "train"]
    for split, limit in limits:
        if limit is not None and limit < len(data[split]):
            data[split] = data[split].shuffle(seed=seed).select(range(limit))
    return data
