"""The networks a study can train: logistic regression, an MLP and a small CNN.

All are Opacus-compatible (GroupNorm where normalisation is wanted, never BatchNorm)
and take flat float features; the CNN reshapes them to its image size.
"""

from __future__ import annotations

import torch
from torch import nn

from flsuite.config.schema import ModelConfig
from flsuite.errors import ConfigError


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: one linear layer producing class logits."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(num_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


class MLP(nn.Module):
    """Two hidden ReLU layers."""

    def __init__(self, num_features: int, num_classes: int, hidden_units: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(num_features, hidden_units),
            nn.ReLU(),
            nn.Linear(hidden_units, hidden_units),
            nn.ReLU(),
            nn.Linear(hidden_units, num_classes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class SmallCNN(nn.Module):
    """Two 3x3 convolutions with GroupNorm, then a linear classifier, for small grey images."""

    def __init__(self, image_shape: tuple[int, int], num_classes: int, channels: int) -> None:
        super().__init__()
        self.image_shape = image_shape
        height, width = image_shape
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.GroupNorm(min(4, channels), channels),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.GroupNorm(min(4, 2 * channels), 2 * channels),
            nn.ReLU(),
            nn.AvgPool2d(2),
        )
        self.classifier = nn.Linear(2 * channels * (height // 2) * (width // 2), num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        images = features.view(-1, 1, *self.image_shape)
        return self.classifier(self.features(images).flatten(1))


def build_model(
    config: ModelConfig, *, num_features: int, num_classes: int, image_shape: tuple[int, int] | None, seed: int
) -> nn.Module:
    """Build the configured network with seeded initial weights."""
    generator_state = torch.random.get_rng_state()
    # The CPU generator only (the model is built on the CPU): torch.manual_seed would also queue seeds
    # for CUDA, XPU and MTIA, recording a stack trace for each, on every site's every round.
    torch.random.default_generator.manual_seed(seed)
    try:
        if config.name == "logreg":
            return LogisticRegression(num_features, num_classes)
        if config.name == "mlp":
            return MLP(num_features, num_classes, config.hidden_units)
        if image_shape is None:
            raise ConfigError("model.name=cnn needs image data (data.dataset=digits); use logreg or mlp for tabular data")
        return SmallCNN(image_shape, num_classes, config.channels)
    finally:
        torch.random.set_rng_state(generator_state)
