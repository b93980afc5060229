"""Publishing a trained output folder as a Hub model repository (`ifam-push-to-hub`, `python push_to_hub.py`).

    ifam-push-to-hub outputs/synthetic --hub_model_id me/ifam-waterbirds
    ifam-push-to-hub outputs/synthetic --dry_run --output_dir /tmp/upload     # writes exactly what would go up
    ifam-push-to-hub outputs/synthetic --hub_model_id me/ifam --space_id me/ifam-demo   # the model and a demo Space

The repository holds the safetensors weights, the config (with the token-removal thresholds, `auto_map` and
`custom_pipelines`), the part statistics, the image processor, the code that `save_pretrained` copies for
`trust_remote_code` users (the model, the image processor and the `ifam-explanation` pipeline), and a model card built
with huggingface_hub (`ModelCard`, `ModelCardData`, `EvalResult`: the `model-index` from `metrics.json`) with the
leave-one-out intervention table. The upload goes through `huggingface_hub` (`create_repo`,
`upload_folder`) with the token from the usual place (`HF_TOKEN`, `hf auth login`) unless given. With `--space_id`, a
Gradio Space running the demo (`demo/app.py`) on the model goes up too (`ifam_train.space`).
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ifam_interventions.calibration import STATISTICS_FILE
from ifam_interventions.leave_one_out import TABLE_FILE, markdown_table
from modeling_ifam import IFAMConfig, IFAMForImageClassification

from .reporting import results_table
from .space import publish_space, write_space

REQUIRED = ("config.json", "model.safetensors", "preprocessor_config.json")
OPTIONAL = ("metrics.json", STATISTICS_FILE, f"{TABLE_FILE}.json", f"{TABLE_FILE}.md", "parts.png",
            f"{TABLE_FILE}.png")
METRIC_NAMES = {
    "accuracy": "Accuracy", "worst_group_accuracy": "Worst-group accuracy", "roc_auc": "ROC AUC",
    "worst_group_roc_auc": "Worst-group ROC AUC", "fg_miou": "Foreground mIoU",
}


def model_card(folder: Path, repo_id: str, dataset: str | None) -> ModelCard:
    """
    The model card of a trained folder: huggingface_hub's metadata block (`model-index` with one result per split and
    metric of `metrics.json`), usage, evaluation table, calibrated interventions and the leave-one-out table.

    Args:
        folder (`Path`):
            A trained output folder.
        repo_id (`str`):
            The Hub repository the card describes.
        dataset (`str`, *optional*):
            The Hub dataset id the model was trained on.

    Returns:
        `ModelCard`
    """
    config = IFAMConfig.from_pretrained(folder)
    metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
    eval_results = [
        EvalResult(task_type="image-classification", task_name="Image Classification",
                   dataset_type=dataset or "custom", dataset_name=f"{dataset or 'custom'} ({split})",
                   dataset_split=split, metric_type=key, metric_name=METRIC_NAMES[key],
                   metric_value=round(100 * value, 2))
        for split, split_metrics in metrics.items() for key, value in split_metrics.items() if key in METRIC_NAMES
    ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license="apache-2.0",
        tags=["ifam", "vision", "image-classification", "interpretability", "dinov2", "custom_code"],
        datasets=[dataset] if dataset and "/" in dataset else None,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
    )
    lines = [
        f"# {repo_id.split('/')[-1]}", "",
        "An **iFAM** classifier (Inherently Faithful Attention Maps for Vision Transformers, arXiv 2506.08915): "
        "stage 1 "
        f"discovers {config.num_parts} parts on a DINOv2 backbone ({config.hidden_size}-dim, "
        f"{config.num_hidden_layers} layers, patch {config.patch_size}), and stage 2 classifies the image seeing only "
        "the patches of those parts. Nothing outside `token_mask` can move the prediction.", "",
        f"Classes: {', '.join(config.id2label[i] for i in range(config.num_labels))}.", "",
        "## Use", "", "```python",
        "from transformers import pipeline, AutoModelForImageClassification",
        f'classifier = pipeline("image-classification", model="{repo_id}", trust_remote_code=True)',
        f'explain = pipeline(model="{repo_id}", trust_remote_code=True)  # labels, part masks, stage-2 mask',
        "explain(image, parts_to_drop=[0])       # the explanation under an intervention",
        f'model = AutoModelForImageClassification.from_pretrained("{repo_id}", trust_remote_code=True)',
        "outputs = model(pixel_values)            # outputs.logits, outputs.token_mask, outputs.part_maps",
        "model(pixel_values, parts_to_drop=[k])   # part removal",
        "```", "",
        "With the `ifam` package installed, `import modeling_ifam` registers the classes and `trust_remote_code` is "
        "not needed.", "",
    ]
    if metrics:
        lines += ["## Evaluation", "", results_table(metrics, METRIC_NAMES), ""]
    if config.part_distance_thresholds:
        lines += ["## Interventions", "",
                  "Token-removal thresholds are calibrated for percentiles "
                  f"{', '.join(sorted(config.part_distance_thresholds, key=float))} "
                  "(`model(pixel_values, token_removal_percentile=97)`); per-part statistics are in "
                  f"`{STATISTICS_FILE}`.", ""]
    table = folder / f"{TABLE_FILE}.json"
    if table.is_file():
        lines += ["Leave-one-out evaluation (metrics in %, change against no intervention in parentheses):", "",
                  markdown_table(json.loads(table.read_text()))]
    if (folder / "parts.png").is_file():
        lines += ["![Part maps, stage-2 masks and interventions](parts.png)", ""]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def prepare_upload(folder: str | Path, destination: str | Path, repo_id: str, dataset: str | None = None) -> list[Path]:
    """
    Write into `destination` exactly the files to upload: the model as `save_pretrained` writes it (weights, config with
    `auto_map` and `custom_pipelines`, the model's, image processor's and pipeline's code), the image processor, the
    folder's metrics, statistics and pictures, the model card.

    Args:
        folder (`str` or `Path`):
            A trained output folder.
        destination (`str` or `Path`):
            Where to write the files.
        repo_id (`str`):
            The Hub repository they are for (the model card's title and usage).
        dataset (`str`, *optional*):
            The Hub dataset id the model was trained on (model card).

    Returns:
        `list[Path]`: the files written.
    """
    folder, destination = Path(folder), Path(destination)
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}: is it an `ifam-train` output folder?")
    destination.mkdir(parents=True, exist_ok=True)
    IFAMForImageClassification.from_pretrained(folder).save_pretrained(destination)
    for name in ("preprocessor_config.json",) + OPTIONAL:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, destination / name)
    model_card(folder, repo_id, dataset).save(destination / "README.md")
    return sorted(destination.iterdir())


def publish(folder: str | Path, repo_id: str, token: str | None = None, private: bool = False,
            dataset: str | None = None) -> str:
    """
    Create the repository (if needed) and upload the folder's publishable files (`prepare_upload`).

    Args:
        folder (`str` or `Path`):
            A trained output folder.
        repo_id (`str`):
            The Hub repository.
        token (`str`, *optional*):
            Default: the token from `HF_TOKEN` or `hf auth login`.
        private (`bool`, *optional*, defaults to `False`):
            Create the repository private.
        dataset (`str`, *optional*):
            The Hub dataset id the model was trained on (model card).

    Returns:
        `str`: the commit URL.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as staging:
        prepare_upload(folder, staging, repo_id, dataset)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=repo_id, folder_path=staging, commit_message="Upload iFAM model")
    return str(commit)


def main(argv: list[str] | None = None) -> None:
    """The command line: publish a folder, or with `--dry_run` write what would go up."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="An `ifam-train` output folder.")
    parser.add_argument("--hub_model_id", "--hub-model-id", "--repo_id", "--repo-id", dest="hub_model_id",
                        default=None, help="The Hub repository. Default: the folder's name.")
    parser.add_argument("--dataset_name", "--dataset-name", "--dataset", dest="dataset_name", default=None,
                        help="The Hub dataset id the model was trained on (model card).")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--hub_token", "--hub-token", "--token", dest="hub_token", default=None,
                        help="Default: the token from HF_TOKEN or `hf auth login`.")
    parser.add_argument("--dry_run", "--dry-run", action="store_true",
                        help="Write the files to --output_dir; upload nothing.")
    parser.add_argument("--output_dir", "--output-dir", default=None)
    parser.add_argument("--space_id", default=None,
                        help="Also publish the demo (demo/app.py) as this Gradio Space, pointed at the model.")
    parser.add_argument("--space_output_dir", default=None,
                        help="Dry run with --space_id: where the Space folder goes (default: OUTPUT_DIR_space).")
    args = parser.parse_args(argv)
    repo_id = args.hub_model_id or Path(args.folder).resolve().name
    if args.dry_run:
        if not args.output_dir:
            parser.error("--dry_run needs --output_dir")
        files = prepare_upload(args.folder, args.output_dir, repo_id, args.dataset_name)
        print(f"dry run: {len(files)} files for {repo_id} written to {args.output_dir}:", *[f.name for f in files])
        if args.space_id:
            space_dir = args.space_output_dir or f"{str(args.output_dir).rstrip('/')}_space"
            files = write_space(space_dir, repo_id)
            print(f"dry run: Space {args.space_id} ({len(files)} files) written to {space_dir}")
        return
    print(publish(args.folder, repo_id, args.hub_token, args.private, args.dataset_name))
    if args.space_id:
        with tempfile.TemporaryDirectory() as staging:
            write_space(staging, repo_id)
            print(publish_space(staging, args.space_id, args.hub_token, args.private))


if __name__ == "__main__":
    main()
