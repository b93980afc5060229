"""iFAM in the browser: the prediction, the parts it rests on, what stage 2 saw, and live interventions.

    python demo/app.py --model outputs/synthetic            # a train.py output folder, a converted checkpoint, a Hub id
    python demo/app.py --model me/ifam-cub --port 7861

Upload an image or pick an example. The app shows stage 2's prediction with its scores, the image with every part in its
own colour (legend: how often each part is present in the training data, from `part_statistics.json`), what stage 2 saw
(everything else greyed), and stage 1's prediction. Untick a part to hide it from stage 2, or apply token removal at a
calibrated percentile; the prediction and the pictures follow. With the `ifam` package installed the app uses it;
without it (a Hugging Face Space) it runs the model repository's own code (`trust_remote_code`).
"""

import argparse
import html
import json
import os
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image
from transformers import pipeline


DEFAULT_MODEL = os.environ.get("IFAM_MODEL")  # the Space writer sets the model repository here
EXAMPLES_DIR = Path(__file__).resolve().with_name("examples")
STATISTICS_FILE = "part_statistics.json"
OFF = "off"
DISPLAY_SIDE = 336  # small images are enlarged (nearest neighbour) so that the patches stay sharp
# tab10, one colour per part (cycled past ten)
PALETTE = np.array([(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)], dtype=np.float32)


class DemoError(Exception):
    """A problem to show to the user; the app keeps running."""


def tolerate_undecodable_uploads(component: gr.Image) -> gr.Image:
    """Make an upload that Pillow cannot decode reach the app (which says what is wrong) instead of failing inside
    Gradio's preprocessing with a generic error. (On the instance: a `gr.Image` subclass would make Gradio write a
    `.pyi` stub beside this file.)"""
    preprocess = component.preprocess

    def tolerant(payload):
        try:
            return preprocess(payload)
        except Exception:
            return None if payload is None or payload.path is None else str(payload.path)

    component.preprocess = tolerant
    return component


def part_colour(part: int) -> np.ndarray:
    return PALETTE[part % len(PALETTE)]


class Explainer:
    """A loaded iFAM model: its `ifam-explanation` pipeline and, when published, its part statistics."""

    def __init__(self, model_name_or_path: str):
        model_name_or_path = (model_name_or_path or "").strip()
        if not model_name_or_path:
            raise DemoError("Give a model: an iFAM folder (e.g. `outputs/synthetic`) or a Hub repository id.")
        self.name = model_name_or_path
        try:
            import modeling_ifam  # noqa: F401  the package registers the pipeline and the model

            self.pipe = pipeline("ifam-explanation", model=model_name_or_path, device="cpu")
        except ImportError:  # no package (a Space): the model repository ships the pipeline
            try:
                self.pipe = pipeline(model=model_name_or_path, trust_remote_code=True, device="cpu")
            except Exception as error:
                raise DemoError(f"Could not load `{model_name_or_path}` as an iFAM model: {error}") from error
        except Exception as error:  # not a folder, not a repository, not an iFAM model
            raise DemoError(f"Could not load `{model_name_or_path}` as an iFAM model: {error}") from error
        if not hasattr(self.pipe, "check_parts_to_drop"):
            raise DemoError(f"`{model_name_or_path}` is not an iFAM model: its pipeline returns no explanation.")
        self.config = self.pipe.model.config
        self.num_parts = self.config.num_parts
        self.percentiles = self.pipe.calibrated_percentiles()
        self.presence = self._presence_frequencies()

    def _presence_frequencies(self) -> list[float | None]:
        """Per part, the fraction of training images that contain it (`part_statistics.json`), or None."""
        path = Path(self.name) / STATISTICS_FILE
        try:
            if not path.is_file():
                from huggingface_hub import hf_hub_download

                path = Path(hf_hub_download(self.name, STATISTICS_FILE))
            parts = json.loads(path.read_text())["parts"]
            frequencies = {int(entry["part"]): float(entry["presence_frequency"]) for entry in parts}
        except Exception:  # no statistics published: the legend says so
            return [None] * self.num_parts
        return [frequencies.get(part) for part in range(self.num_parts)]

    def part_name(self, part: int) -> str:
        frequency = self.presence[part]
        return f"part {part}" + ("" if frequency is None else f" (in {100 * frequency:.0f}% of training images)")

    def explain(self, image, parts_to_drop: list[int], percentile: float | None) -> tuple[Image.Image, dict]:
        """Decode the image and run the pipeline. Raises DemoError with a message for the user."""
        try:
            parts_to_drop = self.pipe.check_parts_to_drop(parts_to_drop)
            kwargs = {"parts_to_drop": parts_to_drop, "top_k": self.config.num_labels}
            if percentile is None:
                kwargs["use_token_removal"] = False
            else:
                kwargs["token_removal_percentile"] = self.pipe.check_percentile(percentile)
            picture = decode_image(image)
            return picture, self.pipe(picture, **kwargs)
        except ValueError as error:
            raise DemoError(str(error)) from error


def decode_image(image) -> Image.Image:
    """A path, bytes or PIL image -> an RGB PIL image, or DemoError."""
    try:
        if isinstance(image, Image.Image):
            picture = image
        else:
            picture = Image.open(image)
            picture.load()
    except Exception as error:
        raise DemoError(f"Could not read the image: {type(error).__name__}: {error}") from error
    return picture.convert("RGBA").convert("RGB") if picture.mode == "P" else picture.convert("RGB")


def _display(array: np.ndarray) -> Image.Image:
    picture = Image.fromarray(array.round().clip(0, 255).astype(np.uint8))
    scale = max(1, DISPLAY_SIDE // max(1, min(picture.size)))
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST) if scale > 1 else picture


def parts_picture(image: Image.Image, result: dict) -> Image.Image:
    """The image with every foreground part blended with its colour; background dimmed, crop margins darker."""
    array = np.asarray(image, dtype=np.float32)
    out = array * 0.3  # outside the crop: neither stage saw it
    for part, entry in enumerate(result["parts"]):
        inside = np.asarray(entry["mask"]) > 0
        if entry["label"] == "background":
            out[inside] = array[inside] * 0.55
        else:
            out[inside] = array[inside] * 0.4 + part_colour(part) * 0.6
    return _display(out)


def stage2_picture(image: Image.Image, result: dict) -> Image.Image:
    """The image where stage 2 saw it, light grey (a faint grey-level copy) everywhere else."""
    array = np.asarray(image, dtype=np.float32)
    grey = array.mean(axis=-1, keepdims=True) * 0.25 + 170.0
    seen = (np.asarray(result["stage2_mask"]) > 0)[..., None]
    return _display(np.where(seen, array, grey))


def legend_html(explainer: "Explainer | None", parts_to_drop=()) -> str:
    if explainer is None:
        return ""
    items = []
    for part in range(explainer.num_parts):
        r, g, b = (int(c) for c in part_colour(part))
        removed = " <b>(removed)</b>" if part in parts_to_drop else ""
        items.append(
            f'<span class="ifam-legend-item" style="margin-right:1em;white-space:nowrap">'
            f'<span style="display:inline-block;width:1em;height:1em;background:rgb({r},{g},{b});'
            f'vertical-align:middle;margin-right:0.3em"></span>{html.escape(explainer.part_name(part))}{removed}</span>'
        )
    note = "" if any(f is not None for f in explainer.presence) else (
        f" <i>No `{STATISTICS_FILE}` with this model: presence frequencies unknown.</i>")
    return '<div id="ifam-legend">' + "".join(items) + note + "</div>"


def scores(predictions: list[dict]) -> dict[str, float]:
    return {p["label"]: p["score"] for p in predictions}


class DemoSession:
    """The app's callbacks: the loaded model (one at a time, shared by all browser sessions) and the outputs."""

    def __init__(self):
        self.explainer: Explainer | None = None

    def load(self, name: str) -> tuple:
        """-> status, part checkboxes, token-removal control, legend, and cleared prediction/pictures."""
        try:
            explainer = Explainer(name)
        except DemoError as error:
            self.explainer = None
            return (f"⚠️ {error}", gr.update(choices=[], value=[]),
                    gr.update(choices=[OFF], value=OFF, interactive=False), "", None, None, None, None)
        self.explainer = explainer
        parts = [(explainer.part_name(k), k) for k in range(explainer.num_parts)]
        if explainer.percentiles:
            removal = gr.update(choices=[OFF] + [f"{q:g}" for q in explainer.percentiles], value=OFF, interactive=True,
                                info="Send to the background the tokens farther from their part's prototype than the "
                                     "calibrated percentile of the training distances.")
        else:
            removal = gr.update(choices=[OFF], value=OFF, interactive=False,
                                info="Unavailable: this model has no calibrated thresholds (calibrate it with "
                                     "`python -m ifam_interventions.calibration --model_name_or_path FOLDER`).")
        labels = ", ".join(explainer.config.id2label[i] for i in range(explainer.config.num_labels))
        status = (f"Loaded `{explainer.name}`: {explainer.num_parts} parts, classes {labels}. "
                  "Upload an image or pick an example.")
        return (status, gr.update(choices=parts, value=list(range(explainer.num_parts))), removal,
                legend_html(explainer), None, None, None, None)

    def explain(self, image, kept_parts, removal) -> tuple:
        """-> status, legend, prediction, parts picture, stage-2 picture, stage-1 prediction."""
        explainer = self.explainer
        if explainer is None:
            return "⚠️ Load an iFAM model first.", "", None, None, None, None
        if image is None:  # (also after a model load resets the controls: keep its status)
            return gr.update(), legend_html(explainer), None, None, None, None
        try:
            kept = {int(part) for part in (kept_parts or [])}
        except (TypeError, ValueError):
            return f"⚠️ Parts must be part indices, got {kept_parts!r}.", legend_html(explainer), None, None, None, None
        # a kept part the model does not have is an error too (the pipeline says which)
        parts_to_drop = [part for part in range(explainer.num_parts) if part not in kept] + sorted(
            part for part in kept if not 0 <= part < explainer.num_parts)
        try:
            percentile = None if removal in (None, OFF) else float(removal)
        except (TypeError, ValueError):
            return f"⚠️ Unknown token-removal percentile {removal!r}.", legend_html(explainer), None, None, None, None
        try:
            picture, result = explainer.explain(image, parts_to_drop, percentile)
        except DemoError as error:
            return f"⚠️ {error}", legend_html(explainer, parts_to_drop), None, None, None, None
        interventions = []
        if parts_to_drop:
            interventions.append("removed " + ", ".join(f"part {k}" for k in parts_to_drop))
        if percentile is not None:
            interventions.append(f"token removal at percentile {percentile:g}")
        status = (f"Stage 2 saw **{100 * result['stage2_fraction']:.1f}%** of the image"
                  + (f" ({'; '.join(interventions)})" if interventions else "") + ". Prediction: **"
                  + result["predictions"][0]["label"] + "**.")
        return (status, legend_html(explainer, parts_to_drop), scores(result["predictions"]),
                parts_picture(picture, result), stage2_picture(picture, result), scores(result["stage1_predictions"]))


def build_app(model_name_or_path: str | None = DEFAULT_MODEL) -> gr.Blocks:
    """The Gradio app, loading `model_name_or_path` when the page opens (or the model typed in the box)."""
    session = DemoSession()
    load, explain = session.load, session.explain

    with gr.Blocks(title="iFAM: inherently faithful attention maps") as app:
        gr.Markdown(
            "# iFAM: see the explanation, act on it\n"
            "Stage 1 splits the image into parts; stage 2 classifies it **seeing only the patches of those parts**, so "
            "the stage-2 picture is exactly what the prediction rests on. Untick a part to hide it from stage 2."
        )
        with gr.Row():
            model_box = gr.Textbox(value=model_name_or_path or "", label="Model (folder or Hub id)", scale=4,
                                   elem_id="model-box")
            load_button = gr.Button("Load", scale=1, elem_id="load-button")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            with gr.Column():
                image = tolerate_undecodable_uploads(gr.Image(type="filepath", label="Image", sources=["upload"],
                                                              elem_id="input-image", format="png"))
                examples = sorted(EXAMPLES_DIR.glob("*.png"))
                if examples:
                    gr.Examples([[str(path)] for path in examples], inputs=[image], label="Examples")
                parts = gr.CheckboxGroup(choices=[], value=[], label="Parts stage 2 may see (untick to remove)",
                                         elem_id="parts")
                removal = gr.Radio(choices=[OFF], value=OFF, label="Token removal percentile", interactive=False,
                                   elem_id="removal")
            with gr.Column():
                prediction = gr.Label(label="Prediction (stage 2)", elem_id="prediction")
                seen = gr.Image(label="What stage 2 saw", format="png", interactive=False, elem_id="stage2-image")
            with gr.Column():
                parts_image = gr.Image(label="Parts", format="png", interactive=False, elem_id="parts-image")
                legend = gr.HTML(elem_id="legend")
                stage1 = gr.Label(label="Stage-1 prediction (PDiscoFormer, whole image)", elem_id="stage1-prediction")

        load_outputs = [status, parts, removal, legend, prediction, seen, parts_image, stage1]
        explain_outputs = [status, legend, prediction, parts_image, seen, stage1]
        load_button.click(load, inputs=[model_box], outputs=load_outputs)
        for component in (image, parts, removal):
            component.change(explain, inputs=[image, parts, removal], outputs=explain_outputs)
        if model_name_or_path:
            app.load(load, inputs=[model_box], outputs=load_outputs)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="An iFAM folder or Hub id (default: $IFAM_MODEL).")
    parser.add_argument("--host", default=None, help="Default: Gradio's (127.0.0.1, or $GRADIO_SERVER_NAME).")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    build_app(args.model).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
