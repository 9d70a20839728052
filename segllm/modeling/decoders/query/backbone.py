"""The image backbone of the query decoders: torchvision's ResNet with frozen batch norm.

Returns the C2-C5 feature maps (strides 4, 8, 16, 32), as detectron2's ``res2``-``res5``:
C3-C5 feed the deformable encoder, C2 the 1/4-scale mask features. Batch norm is frozen
(``FrozenBatchNorm2d``: fixed statistics and affine terms, as detection models train with
small per-device batches); the classification head is dropped.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.ops.misc import FrozenBatchNorm2d

STAGES = ("res2", "res3", "res4", "res5")
_BLOCKS = {"bottleneck": Bottleneck, "basic": BasicBlock}


class FrozenBatchNorm(FrozenBatchNorm2d):
    """torchvision's ``FrozenBatchNorm2d`` with its output in the input's dtype: its statistics
    are buffers, which DeepSpeed's bf16 cast (parameters only) leaves in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).to(x.dtype)


class ResNetBackbone(nn.Module):
    """ResNet C2-C5 (ResNet-50: ``block="bottleneck"``, ``layers=(3, 4, 6, 3)``).

    Args:
        block: torchvision's residual block kind.
        layers: blocks per stage.
    """

    def __init__(self, *, block: Literal["bottleneck", "basic"] = "bottleneck",
                 layers: tuple[int, int, int, int] = (3, 4, 6, 3)):
        super().__init__()
        net = ResNet(_BLOCKS[block], list(layers), norm_layer=FrozenBatchNorm)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.res2, self.res3, self.res4, self.res5 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = _BLOCKS[block].expansion
        self.channels = {name: width * expansion
                         for name, width in zip(STAGES, (64, 128, 256, 512), strict=True)}
        self.strides = dict(zip(STAGES, (4, 8, 16, 32), strict=True))

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """[B, 3, S, S] normalised pixels -> {"res2": [B, C2, S/4, S/4], ..., "res5": ...}."""
        x = self.stem(pixels)
        out = {}
        for name in STAGES:
            x = getattr(self, name)(x)
            out[name] = x
        return out
