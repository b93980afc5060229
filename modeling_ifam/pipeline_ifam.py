"""The `ifam-explanation` pipeline: an iFAM prediction together with its explanation, at the input image's resolution.

    from transformers import pipeline
    explain = pipeline(model="outputs/synthetic", trust_remote_code=True)   # a saved folder or Hub repository
    import modeling_ifam; explain = pipeline("ifam-explanation", model="outputs/synthetic")   # with the package
    result = explain("bird.jpg", parts_to_drop=[2], token_removal_percentile=97)

This module is copied to the Hub for ``trust_remote_code`` users: it imports only numpy, PIL, torch, transformers and
its sibling `image_processing_ifam.py`.
"""

import io
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import Pipeline
from transformers.image_utils import get_image_size, load_image

from .image_processing_ifam import AUTO_MAP_ENTRY, OUTSIDE, check_image, describe_source, post_process_part_maps


TASK = "ifam-explanation"
# The key of the pipeline in a saved folder's `config.json` (`custom_pipelines`), loaded with `trust_remote_code`.
# It differs from TASK on purpose: transformers' `pipeline()` insists on `trust_remote_code=True` for any task named in
# `custom_pipelines`, so with the package installed `pipeline("ifam-explanation", model=folder)` could not use the
# package's class if the names were the same.
REMOTE_TASK = "ifam-explanation-remote-code"
# `config.json`'s `custom_pipelines`, in the format of transformers' `Pipeline.save_pretrained`
CUSTOM_PIPELINES = {
    REMOTE_TASK: {"impl": "pipeline_ifam.IFAMExplanationPipeline", "pt": ["AutoModelForImageClassification"],
                  "type": "image"}
}


def name_in_config(config) -> None:
    """
    Name the `ifam-explanation` pipeline (`custom_pipelines`) and iFAM's image processor (`auto_map`) in a model config,
    as `IFAMPreTrainedModel.save_pretrained` does before writing `config.json`. Idempotent; other entries are kept.
    """
    config.custom_pipelines = {**(getattr(config, "custom_pipelines", None) or {}), **CUSTOM_PIPELINES}
    config.auto_map = {**(getattr(config, "auto_map", None) or {}), **AUTO_MAP_ENTRY}


class IFAMExplanationPipeline(Pipeline):
    """
    For each image: the top-k labels with scores (as `image-classification`), the parts (one PIL "L" mask per
    foreground part, `part 0` ... `part K-1`, and one for `background`, as `image-segmentation` returns masks), the
    stage-2 mask, the fraction of the image that stage 2 saw, and the stage-1 prediction.

    Call arguments: `top_k` (default 5), `parts_to_drop` (part removal), `token_removal_percentile` (a calibrated
    percentile of the model's config), `use_token_removal=False` (switch off the config's default token removal).

    Each result is a dict:
      - `predictions`: `[{"label", "score"}]`, stage 2's top-k classes (what the model predicts);
      - `stage1_predictions`: the same for stage 1 (PDiscoFormer's classifier on the whole image);
      - `parts`: `[{"label": "part k" | "background", "mask": PIL.Image ("L", image size, 255 inside), "score": fraction
        of the image's pixels in the part, "dropped": whether the intervention hid it from stage 2}]`;
      - `stage2_mask`: PIL.Image ("L", image size), 255 on the pixels whose patches stage 2 saw;
      - `stage2_fraction`: the fraction of the image's pixels that stage 2 saw;
      - `parts_to_drop`, `token_removal_percentile`: the interventions applied.
    Pixels that the image processor's centre crop cut away are in no part and unseen.
    """

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        config = self.model.config
        if getattr(config, "model_type", None) != "ifam" or not hasattr(config, "num_parts"):
            raise ValueError(
                f"The `{TASK}` pipeline needs an iFAM model (`model_type='ifam'`), got a {type(self.model).__name__} "
                f"with `model_type={getattr(config, 'model_type', None)!r}`."
            )

    def _sanitize_parameters(self, top_k=None, parts_to_drop=None, token_removal_percentile=None,
                             use_token_removal=None, timeout=None):
        preprocess_params = {} if timeout is None else {"timeout": timeout}
        forward_params, postprocess_params = {}, {}
        if top_k is not None:
            postprocess_params["top_k"] = top_k
        if parts_to_drop is not None:
            forward_params["parts_to_drop"] = self.check_parts_to_drop(parts_to_drop)
        if token_removal_percentile is not None:
            forward_params["token_removal_percentile"] = self.check_percentile(token_removal_percentile)
        if use_token_removal is not None:
            config_percentile = self.model.config.token_removal_percentile
            if use_token_removal and token_removal_percentile is None and config_percentile is None:
                raise ValueError("`use_token_removal=True` needs `token_removal_percentile=` (the model's config sets "
                                 f"none); calibrated percentiles: {self.calibrated_percentiles() or 'none'}.")
            forward_params["use_token_removal"] = bool(use_token_removal)
        return preprocess_params, forward_params, postprocess_params

    def calibrated_percentiles(self) -> list[float]:
        """The percentiles with token-removal thresholds in the model's config, ascending."""
        return sorted(float(key) for key in self.model.config.part_distance_thresholds)

    def check_parts_to_drop(self, parts_to_drop) -> list[int]:
        if isinstance(parts_to_drop, (int, np.integer)):
            parts_to_drop = [parts_to_drop]
        num_parts = self.model.config.num_parts
        try:
            parts = [int(part) for part in parts_to_drop]
        except (TypeError, ValueError):
            raise ValueError(f"`parts_to_drop` must be a list of part indices, got {parts_to_drop!r}.") from None
        bad = [part for part in parts if not 0 <= part < num_parts]
        if bad:
            raise ValueError(f"`parts_to_drop` holds part indices {bad}: this model has {num_parts} parts, "
                             f"0 to {num_parts - 1}.")
        return sorted(set(parts))

    def check_percentile(self, percentile) -> float:
        try:
            percentile = float(percentile)
        except (TypeError, ValueError):
            raise ValueError(f"`token_removal_percentile` must be a number, got {percentile!r}.") from None
        if self.model.config.thresholds_for(percentile) is None:
            calibrated = self.calibrated_percentiles()
            raise ValueError(
                f"Token removal at percentile {percentile:g} is not calibrated for this model; "
                + (f"calibrated percentiles: {', '.join(f'{q:g}' for q in calibrated)}." if calibrated else
                   "the model has no calibration (run `python -m ifam_interventions.calibration` on it).")
            )
        return percentile

    def __call__(self, inputs, **kwargs: Any):
        """
        Explain one image or a list of images (paths, URLs, PIL images, encoded bytes, numpy arrays or torch tensors
        in HWC or CHW layout; any size and mode). Returns one dict per image (see the class docstring), a list for a
        list (an empty list for an empty list).
        """
        if isinstance(inputs, (list, tuple)) and len(inputs) == 0:
            self._sanitize_parameters(**kwargs)  # bad arguments still raise
            return []
        return super().__call__(inputs, **kwargs)

    def preprocess(self, image, timeout=None):
        if isinstance(image, (np.ndarray, torch.Tensor)):  # decoded pixels: the image processor takes them as they are
            check_image(image, "image")  # also where the folder's processor is DINOv2's plain one
            if image.ndim == 2:  # a grey HW image: the image processors take it as HW1
                image = image[..., None]
            shape_only = np.broadcast_to(np.zeros((), dtype=np.uint8), tuple(image.shape))  # no memory
            height, width = get_image_size(shape_only)
        else:
            name = f"the image {describe_source(image)}" if isinstance(image, str) else "the image"
            try:
                if isinstance(image, (bytes, bytearray)):  # an encoded file, e.g. an upload
                    image = Image.open(io.BytesIO(image))
                    image.load()
                image = load_image(image, timeout=timeout)
            except Exception as error:  # undecodable bytes, missing file, unsupported type
                raise ValueError(f"Could not read {name} ({type(error).__name__}: {error}).") from error
            check_image(image, name)
            if image.mode != "RGB":
                image = image.convert("RGBA").convert("RGB") if image.mode == "P" else image.convert("RGB")
            height, width = image.height, image.width
        model_inputs = self.image_processor(images=image, return_tensors="pt")
        model_inputs = model_inputs.to(self.dtype) if self.dtype is not None else model_inputs
        model_inputs["target_size"] = torch.tensor([[height, width]])
        return model_inputs

    def _forward(self, model_inputs, **forward_params):
        target_size = model_inputs.pop("target_size")
        outputs = self.model(pixel_values=model_inputs["pixel_values"], **forward_params)
        config = self.model.config
        parts_to_drop = forward_params.get("parts_to_drop", config.parts_to_drop)
        percentile = None
        if forward_params.get("use_token_removal") is not False:
            percentile = forward_params.get("token_removal_percentile", config.token_removal_percentile)
        batch_size = target_size.shape[0]
        dropped = torch.zeros(batch_size, config.num_parts, dtype=torch.bool)
        dropped[:, list(parts_to_drop)] = True
        return {
            "logits": outputs.logits,
            "stage1_logits": outputs.stage1_logits,
            "part_maps": outputs.part_maps,
            "token_mask": outputs.token_mask,
            "target_size": target_size,
            # per image, so that batching (which slices every tensor) keeps them
            "dropped": dropped,
            "percentile": torch.full((batch_size,), float("nan") if percentile is None else float(percentile)),
        }

    def postprocess(self, model_outputs, top_k=5):
        config = self.model.config
        processor = self.image_processor
        target_size = [tuple(model_outputs["target_size"][0].tolist())]
        if hasattr(processor, "post_process_part_maps"):
            maps = processor.post_process_part_maps(model_outputs, target_sizes=target_size)[0]
        else:  # a folder saved with DINOv2's plain image processor: the same geometry
            maps = post_process_part_maps(processor, model_outputs, target_sizes=target_size)[0]
        segmentation, stage2_mask = maps["segmentation"], maps["stage2_mask"]
        num_pixels = segmentation.numel()
        dropped = model_outputs["dropped"][0].tolist()
        parts = []
        for part in range(config.num_parts + 1):
            inside = segmentation == part
            parts.append({
                "label": "background" if part == config.num_parts else f"part {part}",
                "mask": Image.fromarray(inside.numpy().astype(np.uint8) * 255, mode="L"),
                "score": float(inside.sum()) / num_pixels,
                "dropped": part < config.num_parts and bool(dropped[part]),
            })
        percentile = float(model_outputs["percentile"][0])
        return {
            "predictions": self._top_k(model_outputs["logits"][0], top_k),
            "stage1_predictions": self._top_k(model_outputs["stage1_logits"][0], top_k),
            "parts": parts,
            "stage2_mask": Image.fromarray(stage2_mask.numpy().astype(np.uint8) * 255, mode="L"),
            "stage2_fraction": float(stage2_mask.sum()) / num_pixels,
            "outside_fraction": float((segmentation == OUTSIDE).sum()) / num_pixels,
            "parts_to_drop": [part for part, flag in enumerate(dropped) if flag],
            "token_removal_percentile": None if percentile != percentile else percentile,
        }

    def _top_k(self, logits: torch.Tensor, top_k: int) -> list[dict[str, Any]]:
        probabilities = logits.float().softmax(-1)
        top_k = min(top_k, probabilities.numel())
        scores, indices = probabilities.topk(top_k)
        return [{"label": self.model.config.id2label[int(i)], "score": float(s)} for s, i in zip(scores, indices)]


__all__ = ["IFAMExplanationPipeline", "TASK", "REMOTE_TASK", "CUSTOM_PIPELINES", "name_in_config"]
