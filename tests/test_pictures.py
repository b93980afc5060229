"""The pictures show what they say: every panel of `parts.png` and every bar of `leave_one_out.png`, checked against
the model's outputs (the panels are captured as they are drawn)."""

import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from PIL import Image

from conftest import tiny_model
from ifam_interventions import pictures

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture
def drawn(monkeypatch):
    """Every `imshow` array and `bar` call, with the axes title set afterwards."""
    panels, bars = [], []
    imshow, bar = Axes.imshow, Axes.bar

    def record_imshow(self, array, *args, **kwargs):
        panels.append((self, np.array(array)))
        return imshow(self, array, *args, **kwargs)

    def record_bar(self, x, height, *args, **kwargs):
        bars.append((list(x), list(height), kwargs.get("color")))
        return bar(self, x, height, *args, **kwargs)

    monkeypatch.setattr(Axes, "imshow", record_imshow)
    monkeypatch.setattr(Axes, "bar", record_bar)
    return panels, bars


def upsample(grid: torch.Tensor) -> np.ndarray:  # [4, 4] patch grid -> [28, 28] pixels
    return grid.repeat_interleave(7, 0).repeat_interleave(7, 1).numpy()


def test_part_grid_panels_show_the_image_parts_and_masks(tmp_path, drawn, pixel_values):
    panels, _ = drawn
    model = tiny_model()
    labels = torch.tensor([0, 1, 2, 0])
    path = pictures.part_grid(model, pixel_values, tmp_path / "parts.png", {"drop part 1": {"parts_to_drop": [1]}},
                              MEAN, STD, labels=labels)
    outputs, dropped = model(pixel_values), model(pixel_values, parts_to_drop=[1])
    assert 0 < outputs.token_mask.sum() < outputs.token_mask.numel()
    assert len(panels) == 4 * 4  # 4 images x (image, parts, iFAM mask, drop part 1)
    colours = pictures.part_colours(3)
    for row in range(4):
        (_, image), (_, parts), (mask_axes, mask), (drop_axes, drop) = panels[4 * row: 4 * row + 4]
        picture = (pixel_values[row].permute(1, 2, 0).numpy() * STD + MEAN).clip(0, 1)
        np.testing.assert_allclose(image, picture, atol=1e-6)

        assignment = upsample(outputs.part_maps[row].argmax(0))
        background = assignment == 3
        np.testing.assert_allclose(parts[background], 0.35 * picture[background], atol=1e-6)
        np.testing.assert_allclose(parts[~background], 0.35 * picture[~background]
                                   + 0.65 * colours[assignment[~background]], atol=1e-6)

        for (axes, panel, output) in ((mask_axes, mask, outputs), (drop_axes, drop, dropped)):
            visible = upsample(output.token_mask[row].view(4, 4))
            np.testing.assert_allclose(panel[visible], picture[visible], atol=1e-6)  # the selected pixels as they are
            np.testing.assert_allclose(panel[~visible], 0.85, atol=1e-6)  # the rest blanked
            probability = output.logits[row].softmax(-1)
            label = model.config.id2label[int(probability.argmax())]
            assert f"{label} {100 * probability.max():.0f}%" in axes.get_title()
        assert not (upsample(dropped.token_mask[row].view(4, 4)) & (assignment == 1)).any()

    png = np.asarray(Image.open(path).convert("RGB"))
    assert png.shape[0] > 200 and png.shape[1] > 200 and len(np.unique(png.reshape(-1, 3), axis=0)) > 50


def test_leave_one_out_chart_bars_are_the_table(tmp_path, drawn):
    _, bars = drawn
    rows = [
        {"parts_dropped": [], "percentile": None, "accuracy": 0.9, "worst_group_accuracy": 0.6},
        {"parts_dropped": [], "percentile": 97.0, "accuracy": 0.85, "worst_group_accuracy": 0.7},
        {"parts_dropped": [0], "percentile": None, "accuracy": 0.5, "worst_group_accuracy": 0.25},
    ]
    pictures.leave_one_out_chart(rows, tmp_path / "chart.png")
    (x, heights, colours), = bars
    assert x == [0, 1, 2] and heights == pytest.approx([60.0, 70.0, 25.0])  # worst-group accuracy, in percent
    assert colours == ["tab:grey", "tab:blue", "tab:grey"]  # token-removal rows stand out
    bars.clear()
    pictures.leave_one_out_chart([{k: v for k, v in r.items() if k != "worst_group_accuracy"} for r in rows],
                                 tmp_path / "accuracy.png")
    assert bars[0][1] == pytest.approx([90.0, 85.0, 50.0])  # falls back to accuracy
