"""Networks of the long-tail reproduction: ResNet-32 (CIFAR), ResNet-50 (ImageNet-LT), a small digits CNN.

Each network is a feature extractor followed by a head: ``nn.Linear`` for cross-entropy and VS,
:class:`smoothopt.CosineClassifier` (logits in ``[-1, 1]``) for LDAM, whose loss multiplies them
by ``s``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Head = Literal["linear", "cosine"]


class LongTailNet(nn.Module):
    """A feature extractor and a classification head.

    Args:
        features: Maps images to ``(N, feature_dim)`` features.
        feature_dim: Width of the features.
        num_classes: Number of classes.
        head: ``"linear"`` or ``"cosine"`` (normalised features times normalised weights).
    """

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int, head: Head = "linear") -> None:
        super().__init__()
        self.features = features
        if head == "linear":
            self.head: nn.Module = nn.Linear(feature_dim, num_classes)
        elif head == "cosine":
            from smoothopt.losses import CosineClassifier

            self.head = CosineClassifier(feature_dim, num_classes)
        else:
            raise ValueError(f"head must be 'linear' or 'cosine', got {head!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _kaiming(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)


class DigitsCNN(nn.Sequential):
    """The ~24k-parameter digits CNN: three 3x3 conv-BN-ReLU blocks (16, 32, 64 channels) and global pooling."""

    feature_dim = 64

    def __init__(self) -> None:
        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

        super().__init__(
            *block(1, 16), *block(16, 32), nn.MaxPool2d(2), *block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        _kaiming(self)


class _BasicBlock(nn.Module):
    """ResNet basic block with the parameter-free shortcut of the CIFAR ResNets (option A).

    When the block halves the resolution, the shortcut subsamples by two and zero-pads the new
    channels, so ResNet-32 keeps its 0.46M parameters.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.pad = c_out - c_in
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.stride != 1 or self.pad:
            shortcut = x[:, :, :: self.stride, :: self.stride]
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images (He et al. 2016, section 4.2); ``depth=32`` is ResNet-32.

    Args:
        depth: ``6 n + 2`` for an integer ``n >= 1``.
    """

    feature_dim = 64

    def __init__(self, depth: int = 32) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        c_in = 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(_BasicBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        _kaiming(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)


def resnet50_features() -> tuple[nn.Module, int]:
    """The ResNet-50 of torchvision without its final layer, randomly initialised (never downloads weights)."""
    from torchvision.models import resnet50

    net = resnet50(weights=None)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def build_model(arch: str, num_classes: int, head: Head = "linear") -> LongTailNet:
    """The network of a configuration: ``digits_cnn``, ``resnet32`` or ``resnet50``, with its head."""
    if arch == "digits_cnn":
        features: nn.Module = DigitsCNN()
        dim = DigitsCNN.feature_dim
    elif arch == "resnet32":
        features, dim = CifarResNet(32), CifarResNet.feature_dim
    elif arch == "resnet50":
        features, dim = resnet50_features()
    else:
        raise ValueError(f"arch must be one of digits_cnn, resnet32, resnet50, got {arch!r}")
    return LongTailNet(features, dim, num_classes, head)
