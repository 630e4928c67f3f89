"""ResNet-8 for 28x28 grayscale images: the model behind `make demo`.

Kept in plain PyTorch (no torchvision) so the demo needs only `torch==2.13.0`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# Fashion-MNIST pixel statistics; the model normalises in-graph, so it takes pixels in [0, 1].
MEAN, STD = 0.2860, 0.3530
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle-boot")


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class Normalize(nn.Module):
    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ResNet8(nn.Module):
    """Normalisation, stem conv, three basic blocks, linear classifier. Input: [N, 1, 28, 28] in [0, 1]."""

    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.normalize = Normalize(MEAN, STD)
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = BasicBlock(width, width, 1)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.layer3 = BasicBlock(2 * width, 4 * width, 2)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(self.normalize(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
