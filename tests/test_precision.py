"""bfloat16 autocast must not change the explanation: stage 1's distances, part maps and token mask are float32."""

import pytest
import torch
from torch.nn import functional as F

from modeling_ifam import IFAMConfig, IFAMForImageClassification


HIDDEN = 768  # ViT-B: ||x||^2 of layer-normed features is about 768, where bfloat16 resolves steps of 4


@pytest.fixture(scope="module")
def model_and_features():
    """A one-layer ViT-B-width iFAM whose stage-1 backbone is replaced by fixed layer-normed features."""
    torch.manual_seed(0)
    config = IFAMConfig(hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=12, intermediate_size=64,
                        mlp_ratio=1, image_size=112, patch_size=14, num_parts=4, num_labels=3)
    model = IFAMForImageClassification(config).eval()
    batch, patches = 4, (112 // 14) ** 2
    generator = torch.Generator().manual_seed(0)
    # trained prototypes sit among the features they attract: features of one object around a direction c, prototypes
    # near c. Then x.p is about 700, where bfloat16 resolves steps of 4, while the nearest prototypes of a patch differ
    # by a few units of squared distance.
    centre = torch.randn(HIDDEN, generator=generator)
    features = F.layer_norm(centre + 0.3 * torch.randn(batch, 1 + patches, HIDDEN, generator=generator), (HIDDEN,))
    prototypes = F.layer_norm(centre, (HIDDEN,)) + 0.05 * torch.randn(config.num_parts + 1, HIDDEN, generator=generator)
    with torch.no_grad():
        model.stage1.prototypes.copy_(prototypes)

    class FixedFeatures(torch.nn.Module):
        def forward(self, pixel_values):
            from transformers.modeling_outputs import BaseModelOutput

            return BaseModelOutput(last_hidden_state=features.to(pixel_values.device))

    model.stage1.backbone = FixedFeatures()
    return model, torch.zeros(batch, 3, 112, 112)


def stage1_selection(model, pixel_values, thresholds):
    stage1 = model.stage1(pixel_values)
    visible, _ = model.select_tokens(stage1, thresholds=thresholds)
    return stage1, visible


def test_bf16_autocast_gives_the_float32_part_assignment_and_token_mask(model_and_features):
    model, pixel_values = model_and_features
    with torch.no_grad():
        reference, _ = stage1_selection(model, pixel_values, None)
        distances = reference.part_distances.flatten(2)
        gaps = distances.sort(dim=1).values
        # the test is only meaningful if the nearest prototypes are closer than bfloat16 can tell apart at ~768
        assert (gaps[:, 1] - gaps[:, 0]).median() < 4
        assert (model.stage1.backbone(pixel_values).last_hidden_state[:, 1:] @ model.stage1.prototypes.T).min() > 512
        # token-removal thresholds at the median distance of each part: many patches sit near the threshold
        assignment = distances.argmin(dim=1)
        thresholds = torch.stack([
            distances[:, k][assignment == k].median() if (assignment == k).any() else distances[:, k].median()
            for k in range(model.config.num_parts)
        ])
        fp32, fp32_visible = stage1_selection(model, pixel_values, thresholds)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16, bf16_visible = stage1_selection(model, pixel_values, thresholds)
    assert bf16.part_distances.dtype == torch.float32 and bf16.part_maps.dtype == torch.float32
    assert 0 < fp32_visible.float().mean() < 1
    assert torch.equal(bf16.part_maps.argmax(dim=1), fp32.part_maps.argmax(dim=1))
    assert torch.equal(bf16_visible, fp32_visible)
    torch.testing.assert_close(bf16.part_distances, fp32.part_distances)
    torch.testing.assert_close(bf16.part_maps, fp32.part_maps)


def test_a_bfloat16_distance_would_reorder_the_prototypes(model_and_features):
    """The control: the same distance computed with a bfloat16 x.p does change the assignment on these features."""
    model, pixel_values = model_and_features
    with torch.no_grad():
        features = model.stage1.backbone(pixel_values).last_hidden_state[:, 1:]
        prototypes = model.stage1.prototypes
        exact = features.pow(2).sum(-1, keepdim=True) - 2 * features @ prototypes.T + prototypes.pow(2).sum(-1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            product = features @ prototypes.T
            rounded = features.pow(2).sum(-1, keepdim=True) - 2 * product + prototypes.pow(2).sum(-1)
    assert product.dtype == torch.bfloat16
    assert (rounded.float().argmin(-1) != exact.argmin(-1)).float().mean() > 0.05
