"""Cheap, real feature networks for the evaluation tests: a fixed random projection of 4x4-pooled, uint8-quantised
pixels, registered under a name so the CLI and the pipelines can load it."""

from __future__ import annotations

import torch
from adasde.evaluation import FeatureNet, register_feature_net
from adasde.evaluation.features import to_channels, to_uint8


def projection_net(name: str, dim: int, seed: int) -> type[FeatureNet]:
    """A :class:`FeatureNet` class ``name`` (metric ``FD-test``, ``dim`` features, projection seeded by ``seed``),
    registered with :func:`register_feature_net`."""

    class ProjectionNet(FeatureNet):
        metric = "FD-test"

        def __init__(self, weights: object = None, allow_download: bool = False) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            self.proj = torch.nn.Parameter(torch.randn(3 * 16, dim, generator=g), requires_grad=False)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = to_channels(to_uint8(images), 3).float() / 255
            return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1) @ self.proj

    ProjectionNet.name = name
    ProjectionNet.dim = dim
    register_feature_net(name, ProjectionNet)
    return ProjectionNet
