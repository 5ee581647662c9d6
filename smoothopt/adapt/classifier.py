"""Classifier for domain adaptation: backbone -> bottleneck -> head, with learning-rate groups."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from smoothopt._validation import check_int, check_real, optional_import

__all__ = ["BottleneckClassifier", "ClassifierOutput"]

logger = logging.getLogger(__name__)


class ClassifierOutput(NamedTuple):
    """What :class:`BottleneckClassifier` returns, in training and in evaluation mode alike."""

    logits: Tensor
    """``(N, C)`` class logits."""
    features: Tensor
    """``(N, B)`` bottleneck features (the discriminator's input)."""


class BottleneckClassifier(nn.Module):
    """Backbone, bottleneck (``Linear -> BatchNorm1d -> ReLU``) and linear head.

    The forward pass returns a :class:`ClassifierOutput` ``(logits, features)`` in both modes, so
    evaluation code and training code unpack the same type. :meth:`param_groups` gives the
    backbone a smaller learning rate (0.1x in the SDAT and DANN recipes).

    Args:
        backbone: Module mapping inputs to ``(N, features_dim)`` pooled features.
        num_classes: Number of classes ``C``.
        features_dim: Width of the backbone output; read from ``backbone.num_features`` if None.
        bottleneck_dim: Width of the bottleneck; ``None`` for no bottleneck (features = backbone output).

    Raises:
        ValueError: If ``features_dim`` is not given and the backbone has no ``num_features``.

    Example:
        >>> model = BottleneckClassifier(nn.Sequential(nn.Linear(64, 128), nn.ReLU()), 10, features_dim=128)
        >>> logits, features = model(torch.randn(4, 64))
        >>> features.shape
        torch.Size([4, 256])
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        features_dim: int | None = None,
        bottleneck_dim: int | None = 256,
    ) -> None:
        super().__init__()
        num_classes = check_int("num_classes", num_classes, 1)
        if features_dim is None:
            features_dim = getattr(backbone, "num_features", None)
            if features_dim is None:
                raise ValueError("features_dim is None and the backbone has no `num_features`; pass features_dim")
        features_dim = check_int("features_dim", features_dim, 1)
        self.backbone = backbone
        if bottleneck_dim is None:
            self.bottleneck: nn.Module = nn.Identity()
            self.features_dim = features_dim
        else:
            self.features_dim = check_int("bottleneck_dim", bottleneck_dim, 1)
            self.bottleneck = nn.Sequential(
                nn.Linear(features_dim, bottleneck_dim), nn.BatchNorm1d(bottleneck_dim), nn.ReLU()
            )
        self.head = nn.Linear(self.features_dim, num_classes)
        self.num_classes = num_classes

    @classmethod
    def from_timm(
        cls,
        name: str,
        num_classes: int,
        *,
        pretrained: bool = False,
        checkpoint_path: str | Path | None = None,
        bottleneck_dim: int | None = 256,
        **timm_kwargs: Any,
    ) -> BottleneckClassifier:
        """Build the classifier on a timm backbone (``timm.create_model(name, num_classes=0)``).

        Args:
            name: timm model name, e.g. ``"resnet50"`` or ``"vit_base_patch16_224"``.
            num_classes: Number of classes.
            pretrained: Let timm load its pretrained weights. timm may fetch them from the network
                unless they are already in its cache; set ``HF_HUB_OFFLINE=1`` to forbid that.
            checkpoint_path: A local backbone checkpoint (a state dict) to load instead; keys of a
                classification head are ignored. The backbone is randomly initialised when neither
                this nor ``pretrained`` is given.
            bottleneck_dim: Width of the bottleneck.
            **timm_kwargs: Passed to ``timm.create_model``.

        Returns:
            The classifier.

        Raises:
            ImportError: If timm is not installed.
            ValueError: If both ``pretrained`` and ``checkpoint_path`` are given.
        """
        timm = optional_import("timm", "timm")
        if pretrained and checkpoint_path is not None:
            raise ValueError("give either pretrained=True or checkpoint_path, not both")
        backbone = timm.create_model(name, pretrained=pretrained, num_classes=0, **timm_kwargs)
        if checkpoint_path is not None:
            state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            missing, unexpected = backbone.load_state_dict(state, strict=False)
            if missing:
                raise ValueError(f"checkpoint {str(checkpoint_path)!r} lacks backbone weights: {missing[:5]}")
            if unexpected:
                logger.info("ignored %d checkpoint keys not in the backbone (e.g. %s)", len(unexpected), unexpected[0])
        return cls(backbone, num_classes, features_dim=backbone.num_features, bottleneck_dim=bottleneck_dim)

    def forward(self, x: Tensor) -> ClassifierOutput:
        """Return ``(logits, features)`` for a batch of inputs."""
        features = self.bottleneck(self.backbone(x))
        return ClassifierOutput(self.head(features), features)

    def param_groups(self, lr: float = 1.0, backbone_lr_mult: float = 0.1) -> list[dict[str, Any]]:
        """Parameter groups with the backbone at ``backbone_lr_mult * lr``.

        Args:
            lr: Learning rate of the bottleneck and head.
            backbone_lr_mult: Relative learning rate of the backbone.

        Returns:
            Two groups, ``[{"params": backbone, "lr": ...}, {"params": bottleneck + head, "lr": lr}]``,
            each also carrying ``"lr_mult"`` for schedules that rescale a base rate.
        """
        lr = check_real("lr", lr, 0.0)
        backbone_lr_mult = check_real("backbone_lr_mult", backbone_lr_mult, 0.0)
        return [
            {"params": list(self.backbone.parameters()), "lr": backbone_lr_mult * lr, "lr_mult": backbone_lr_mult},
            {"params": list(self.bottleneck.parameters()) + list(self.head.parameters()), "lr": lr, "lr_mult": 1.0},
        ]
