"""A data-dependent initialisation of stage 1's prototypes (proposed fix for the K = 2 flip of issue 12).

The default initialisation draws all K + 1 prototypes from one small uniform distribution, so which prototype ends up
nearest to the object's features is chance, the background prototype included. With a frozen, object-salient
backbone, the first assignment then already gives the object to the background prototype in some initialisations
(`prototype_init_probe.py` measures how often).

This initialisation uses the prior that PDiscoFormer's background-presence loss already encodes (the background is
present near the image border): on a batch of training images it sets

* a 2-means split of all patches into background and foreground, started from the mean frozen feature of the border
  patches (background) and the mean of the third of each image's patches farthest from it (foreground);
* the background prototype to the background side's mean, and the K foreground prototypes to a k-means (k = K) of
  the foreground side.

It reads only images (no labels, no masks) and touches only `stage1.prototypes`.
"""

import torch


@torch.no_grad()
def initialize_prototypes_from_features(stage1, pixel_values: torch.Tensor, iterations: int = 20, seed: int = 0):
    was_training = stage1.training
    stage1.eval()
    prefix = 1 + stage1.config.num_register_tokens
    features = stage1.backbone(pixel_values).last_hidden_state[:, prefix:]  # [B, N, D]
    b, n, d = features.shape
    h = int(round(n ** 0.5))
    border = torch.zeros(h, h, dtype=torch.bool)
    border[0], border[-1], border[:, 0], border[:, -1] = True, True, True, True
    border = border.flatten()
    flat = features.reshape(-1, d)
    background = features[:, border].reshape(-1, d).mean(0)
    distance = (features - background).pow(2).sum(-1)  # [B, N]
    far = distance.topk(max(1, n // 3), dim=1).indices  # per image, the patches least like the border
    foreground = torch.gather(features, 1, far[..., None].expand(-1, -1, d)).reshape(-1, d).mean(0)
    for _ in range(iterations):  # 2-means, background vs foreground
        is_foreground = (flat - foreground).pow(2).sum(-1) < (flat - background).pow(2).sum(-1)
        if is_foreground.all() or not is_foreground.any():
            break
        foreground, background = flat[is_foreground].mean(0), flat[~is_foreground].mean(0)
    candidates = flat[is_foreground] if is_foreground.any() else flat
    k = stage1.prototypes.shape[0] - 1
    generator = torch.Generator().manual_seed(seed)
    centres = candidates[torch.randperm(len(candidates), generator=generator)[:k]].clone()
    for _ in range(iterations):
        assignment = torch.cdist(candidates, centres).argmin(1)
        for c in range(k):
            if (assignment == c).any():
                centres[c] = candidates[assignment == c].mean(0)
    stage1.prototypes.copy_(torch.cat([centres, background[None]]).to(stage1.prototypes.dtype))
    stage1.train(was_training)
    return stage1.prototypes
