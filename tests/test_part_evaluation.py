"""Part-discovery evaluation: the NMI/ARI and keypoint-regression metrics on hand-computed cases, the reading of part
maps at keypoints, keypoints through the preprocessing, the synthetic landmarks, and the evaluate_parts command."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BitImageProcessor

from conftest import TINY_RUN, tiny_model
from ifam_interventions import calibration, evaluate_parts
from ifam_interventions.evaluate_parts import maps_after_token_removal, part_centroids, parts_at_keypoints
from ifam_metrics import load_metric
from ifam_train.data import BatchTransform


# --------------------------------------------------------------------------------------------
# part_nmi_ari
# --------------------------------------------------------------------------------------------
def test_nmi_ari_hand_computed_with_background_and_invisible_keypoints():
    # 2 images x 3 keypoints; part 2 is the background. The invisible keypoint (image 2, keypoint 2) is left out:
    # pairs (keypoint, part) = (0,0) (1,1) (2,2) | (0,0) (1,0)
    result = load_metric("part_nmi_ari").compute(predictions=[[0, 1, 2], [0, 0, 1]], visibility=[[1, 1, 1], [1, 1, 0]])
    ln = math.log
    h_true = -(2 * 0.4 * ln(0.4) + 0.2 * ln(0.2))  # keypoints 0, 1, 2 seen 2, 2, 1 times
    h_part = -(0.6 * ln(0.6) + 2 * 0.2 * ln(0.2))  # parts 0, 1, 2 found 3, 1, 1 times
    mutual = 0.4 * ln(5 / 3) + 0.2 * ln(5 / 2) + 0.2 * ln(5 / 6) + 0.2 * ln(5)
    assert result["nmi"] == pytest.approx(mutual / ((h_true + h_part) / 2))
    # ARI: sum C(n_ij, 2) = 1, rows 2, columns 3, C(5, 2) = 10: (1 - 0.6) / (2.5 - 0.6)
    assert result["ari"] == pytest.approx(0.4 / 1.9)
    assert result["num_keypoints"] == 5
    # the plain, foreground-only variant drops the keypoint on the background: (0,0) (1,1) (0,0) (1,0)
    plain = load_metric("part_nmi_ari").compute(predictions=[[0, 1, 2], [0, 0, 1]], visibility=[[1, 1, 1], [1, 1, 0]],
                                                background_index=2)
    assert plain["ari"] == pytest.approx(0.0)  # sum C(n_ij, 2) = 1 = 2 * 3 / 6, its expectation
    assert plain["num_keypoints"] == 4


def test_nmi_ari_perfect_and_errors():
    metric = load_metric("part_nmi_ari")
    assert metric.compute(predictions=[[3, 1], [3, 1]], visibility=[[1, 1], [1, 1]]) == {
        "nmi": 1.0, "ari": 1.0, "num_keypoints": 4}
    with pytest.raises(ValueError, match="visible"):
        metric.compute(predictions=[[0, 1]], visibility=[[0, 0]])
    with pytest.raises(ValueError, match="2 predictions but 3"):
        metric.compute(predictions=[[0, 1]], visibility=[[1, 1, 1]])


# --------------------------------------------------------------------------------------------
# keypoint_regression
# --------------------------------------------------------------------------------------------
def _kp_case(absent_centroid=(np.nan, np.nan)):
    """
    One part, one keypoint. On the fit images the keypoint is the part centroid + (1, 2) pixels in a 10 x 10 box, so
    the standardised regression is the identity and predicts centroid + (0.1, 0.2) in box units. A fit image whose
    keypoint is invisible has a centroid that would spoil the fit if it were used.
    """
    fit = [  # centroid, keypoint (x, y, visible), box
        ((1, 2), (2, 4, 1), (0, 0, 10, 10)),
        ((3, 1), (4, 3, 1), (0, 0, 10, 10)),
        ((2, 5), (3, 7, 1), (0, 0, 10, 10)),
        ((9, 9), (0, 0, 0), (0, 0, 10, 10)),
    ]
    evaluation = [
        # box at x=2, 10 wide, 20 high: centroid -> (0.5, 0.5), predicted (0.6, 0.7), true (0.6, 0.8): error 0.1
        ((7, 10), (8, 16, 1), (2, 0, 10, 20)),
        # part absent: its standardised centroid is 0, the prediction the fit keypoints' mean (0.3, 0.4667);
        # true (0.3, 0.4): error 1 / 15
        (absent_centroid, (3, 4, 1), (0, 0, 10, 10)),
        # invisible keypoint: not scored
        ((5, 5), (0, 0, 0), (0, 0, 10, 10)),
    ]
    rows = fit + evaluation
    return dict(
        part_centroids=[[c] for c, _, _ in rows],
        part_presence=[[1]] * len(fit) + [[1], [0], [1]],
        keypoints=[[k] for _, k, _ in rows],
        bounding_boxes=[b for _, _, b in rows],
        fit=[True] * len(fit) + [False] * len(evaluation),
    )


@pytest.mark.parametrize("absent_centroid", [(np.nan, np.nan), (9.0, 9.0)])
def test_keypoint_regression_hand_computed(absent_centroid):
    result = load_metric("keypoint_regression").compute(**_kp_case(absent_centroid))
    assert result["num_keypoints"] == 2
    assert result["keypoint_regression_error"] == pytest.approx((0.1 + 1 / 15) / 2)
    assert result["per_keypoint_error"] == [pytest.approx((0.1 + 1 / 15) / 2)]


def test_keypoint_regression_absent_parts_in_the_fit_and_unscored_keypoints():
    # two parts; part 1 is absent on one fit image (NaN centroid) and carries no information; keypoint 1 is never
    # visible on a fit image, so it cannot be fitted and is not scored
    case = _kp_case()
    case["part_centroids"] = [c + [[np.nan, np.nan] if i == 0 else [4.0 + i % 2, 6.0 - i % 3]]
                              for i, c in enumerate(case["part_centroids"])]
    case["part_presence"] = [p + [0 if i == 0 else 1] for i, p in enumerate(case["part_presence"])]
    case["keypoints"] = [k + [[1.0, 1.0, 0.0 if fit else 1.0]] for k, fit in zip(case["keypoints"], case["fit"])]
    result = load_metric("keypoint_regression").compute(**case)
    assert result["per_keypoint_error"][1] is None
    assert result["num_keypoints"] == 2
    assert np.isfinite(result["keypoint_regression_error"])


def test_keypoint_regression_errors():
    metric = load_metric("keypoint_regression")
    case = _kp_case()
    case["part_presence"][5] = [1]  # a NaN centroid on a present part
    with pytest.raises(ValueError, match="NaN"):
        metric.compute(**case)
    case = _kp_case()
    case["bounding_boxes"][0] = (0, 0, 0, 10)
    with pytest.raises(ValueError, match="width or height"):
        metric.compute(**case)
    case = _kp_case()
    case["fit"] = [False] * len(case["fit"])
    with pytest.raises(ValueError, match="No keypoint could be scored"):
        metric.compute(**case)


# --------------------------------------------------------------------------------------------
# reading the part maps
# --------------------------------------------------------------------------------------------
def test_parts_at_keypoints_is_the_bilinear_upsampled_argmax():
    maps = torch.rand(3, 4, 4, 4, generator=torch.Generator().manual_seed(0)).softmax(1)
    xy = torch.rand(3, 20, 2, generator=torch.Generator().manual_seed(1)) * 28
    visible = (torch.arange(20) % 5 != 0).float().expand(3, 20)
    keypoints = torch.cat([xy, visible[..., None]], dim=-1)
    found = parts_at_keypoints(maps, keypoints, (28, 28))
    upsampled = F.interpolate(maps, size=(28, 28), mode="bilinear", align_corners=False).argmax(1)  # [3, 28, 28]
    expected = upsampled[torch.arange(3)[:, None], xy[..., 1].long(), xy[..., 0].long()]
    assert torch.equal(found, torch.where(visible > 0, expected, -1))
    # hand case: a 2 x 2 grid of one-hot parts; each quadrant's centre reads its own part
    grid = F.one_hot(torch.tensor([[0, 1], [2, 0]]), 3).permute(2, 0, 1)[None].float()
    points = torch.tensor([[[3.0, 3.0, 1], [11.0, 2.0, 1], [2.0, 12.0, 1], [13.9, 13.9, 1], [8.0, 8.0, 0]]])
    assert parts_at_keypoints(grid, points, (14, 14)).tolist() == [[0, 1, 2, 0, -1]]


def test_part_centroids_hand_computed():
    maps = torch.zeros(1, 3, 2, 2)  # two foreground parts and the background, 2 x 2 patches of 14 px
    maps[0, 0, 0, 1] = 1.0  # part 0 only in the top-right patch: centre (21, 7)
    maps[0, 0, 1, 1] = 0.0
    maps[0, 1, 0, 0], maps[0, 1, 1, 0] = 0.2, 0.2  # part 1 weakly in the left column: (7, 14), absent (max 0.2)
    maps[0, 2] = 1 - maps[0, :2].sum(0)
    centroids, presence = part_centroids(maps, (28, 28))
    assert centroids[0, 0].tolist() == [21.0, 7.0] and centroids[0, 1].tolist() == pytest.approx([7.0, 14.0])
    assert presence.tolist() == [[True, False]]
    maps[0, 1] = 0  # an empty map: no centroid
    centroids, presence = part_centroids(maps, (28, 28))
    assert torch.isnan(centroids[0, 1]).all() and not presence[0, 1]


def test_token_removal_sends_removed_tokens_to_the_background(pixel_values):
    model = tiny_model()
    with torch.no_grad():
        stage1 = model.stage1(pixel_values)
    maps, visible = maps_after_token_removal(model, stage1, None)
    assert maps is stage1.part_maps
    # thresholds at each part's median distance: about half of the foreground tokens go
    assignment = stage1.part_maps.flatten(2).argmax(1)
    distance = stage1.part_distances.flatten(2).gather(1, assignment[:, None]).squeeze(1)
    levels = [float(distance[assignment == k].median()) if (assignment == k).any() else float("inf")
              for k in range(model.config.num_parts)]
    model.config.part_distance_thresholds = {"50": levels}
    maps, visible = maps_after_token_removal(model, stage1, torch.tensor(levels))
    assert torch.equal(visible, model(pixel_values, token_removal_percentile=50).token_mask)  # what stage 2 sees
    removed = (assignment != model.config.num_parts) & ~visible
    assert removed.any() and visible.any()
    flat, before = maps.flatten(2).transpose(1, 2), stage1.part_maps.flatten(2).transpose(1, 2)  # [B, N, K+1]
    assert (flat[removed][:, -1] == 1).all() and (flat[removed][:, :-1] == 0).all()
    assert torch.equal(flat[~removed], before[~removed])


# --------------------------------------------------------------------------------------------
# keypoints through the preprocessing, synthetic landmarks
# --------------------------------------------------------------------------------------------
def test_keypoints_and_box_follow_resize_and_centre_crop():
    processor = BitImageProcessor(size={"shortest_edge": 20}, crop_size={"height": 20, "width": 20})
    transform = BatchTransform(processor, train=False)
    # 20 x 10 image -> resized 40 x 20 (x2) -> centre crop 20 x 20 from x = 10
    batch = {"image": [Image.new("RGB", (20, 10))], "label": [0],
             "keypoints": [[[10.0, 5.0, 1.0], [3.0, 2.0, 1.0], [12.0, 3.0, 0.0], [14.9, 9.9, 1.0]]],
             "bbox": [[2.0, 1.0, 10.0, 4.0]]}
    out = transform(batch)
    assert out["pixel_values"].shape == (1, 3, 20, 20)
    assert out["keypoints"][0].tolist() == [[10.0, 10.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0],
                                            pytest.approx([19.8, 19.8, 1.0])]  # cropped out / invisible -> 0 0 0
    assert out["bbox"][0].tolist() == [-6.0, 2.0, 20.0, 8.0]  # not clipped: the box keeps the object's size
    assert "keypoints" not in BatchTransform(processor, train=True)(batch)


def test_synthetic_landmarks_and_boxes():
    from ifam_data.synthetic import KEYPOINT_NAMES, make_synthetic_benchmark

    data = make_synthetic_benchmark(num_train=40, num_validation=0, num_test=0, image_size=56, patch_size=7)["train"]
    for example in data:
        mask, points, box = np.asarray(example["mask"]), np.asarray(example["keypoints"]), example["bbox"]
        assert points.shape == (len(KEYPOINT_NAMES), 3)
        centre = points[0]
        assert centre[2] == 1 and mask[int(centre[1]), int(centre[0])] == 1
        inside = ((points[:, :2] >= 0) & (points[:, :2] < 56)).all(1)
        assert np.array_equal(points[:, 2] == 1, inside)
        # the ends of each axis are symmetric about the centre; the minor axis is the shorter
        assert np.allclose(points[1, :2] + points[2, :2], 2 * centre[:2], atol=1e-4)
        assert np.allclose(points[3, :2] + points[4, :2], 2 * centre[:2], atol=1e-4)
        assert np.linalg.norm(points[3, :2] - centre[:2]) <= np.linalg.norm(points[1, :2] - centre[:2]) + 1e-4
        rows, columns = np.nonzero(mask)
        assert box == [columns.min(), rows.min(), columns.max() + 1 - columns.min(), rows.max() + 1 - rows.min()]


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------
def test_evaluate_parts_command_writes_table_6(trained_run, tmp_path):
    source, _ = trained_run
    folder = tmp_path / "model"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("checkpoint-*", "logs"))
    data = ["--model_name_or_path", str(folder), *TINY_RUN[:6]]
    calibration.main([*data, "--percentiles", "90", "99"])
    rows = evaluate_parts.main([*data, "--split", "test", "--output_dir", str(tmp_path / "out")])
    assert [row["percentile"] for row in rows] == [None, 90.0, 97.0, 99.0]  # every calibrated one (train.py: 97, 99)
    for row in rows:
        assert 0 <= row["nmi"] <= 1 and -1 <= row["ari"] <= 1 and 0 <= row["fg_miou"] <= 1
        assert row["keypoint_regression_error"] >= 0 and row["num_keypoints"] > 0
    assert json.loads((tmp_path / "out" / "part_evaluation.json").read_text())[0]["nmi"] == rows[0]["nmi"]
    table = (tmp_path / "out" / "part_evaluation.md").read_text()
    assert "| intervention | NMI ↑ | ARI ↑ | Kp ↓ | Fg. mIoU ↑ |" in table and "token removal q=99" in table
    # no fit split: no Kp column
    rows = evaluate_parts.main([*data, "--split", "test", "--fit_split", "none", "--percentiles",
                                "--output_dir", str(tmp_path / "out2")])
    assert len(rows) == 1 and "keypoint_regression_error" not in rows[0] and "nmi" in rows[0]
