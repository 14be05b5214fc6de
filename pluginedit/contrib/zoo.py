"""A small model zoo: a VGG-style CNN and a ResNet-style CNN (BatchNorm, residual adds)."""

from __future__ import annotations

from torch import nn

from ..core.errors import InputError
from ..io.models import set_source


def conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class VGG(nn.Module):
    """Stages of two 3x3 conv-BN-ReLU layers, each stage followed by 2x2 max-pooling except the
    last; global average pooling and a two-layer classifier (one Linear with ``hidden=0``)."""

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, widths=(32, 64, 128), hidden: int = 128
    ):
        super().__init__()
        layers, cin = [], in_channels
        for i, w in enumerate(widths):
            layers += conv_bn(cin, w) + conv_bn(w, w)
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        head = (
            [nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)]
            if hidden
            else [nn.Linear(cin, num_classes)]
        )  # hidden=0: no hidden Linear layer
        self.classifier = nn.Sequential(nn.Flatten(), *head)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


def shortcut(cin: int, cout: int, stride: int) -> nn.Module | None:
    """1x1 conv-BN projection where the residual changes shape, else the identity (None)."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut(cin, cout, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(out + skip)


class ResNet(nn.Module):
    """A CIFAR-style ResNet: stem, one stage per width (stride 2 after the first), ``blocks``
    basic blocks per stage, global average pooling, a linear head."""

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, widths=(16, 32, 64), blocks: int = 2
    ):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(in_channels, widths[0]))
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stage = [BasicBlock(cin, w, 1 if i == 0 else 2)] + [
                BasicBlock(w, w) for _ in range(blocks - 1)
            ]
            stages.append(nn.Sequential(*stage))
            cin = w
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


ARCHS = {"vgg": VGG, "resnet": ResNet}


def build(arch: str, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    if arch not in ARCHS:
        raise InputError(f"unknown architecture {arch!r}; known: {sorted(ARCHS)}")
    model = ARCHS[arch](in_channels=in_channels, num_classes=num_classes, **kwargs)
    # Remembered so an edited copy can be saved and rebuilt (pluginedit.io).
    return set_source(
        model,
        {
            "kind": "factory",
            "factory": "pluginedit.contrib.zoo:build",
            "args": {
                "arch": arch,
                "in_channels": in_channels,
                "num_classes": num_classes,
                **kwargs,
            },
        },
    )


def default_config(arch: str, dataset: str) -> dict:
    """Widths that suit the data and train in minutes on 2 CPU cores."""
    small = dataset == "digits"
    if arch == "vgg":
        return {"widths": (32, 64) if small else (16, 32, 64), "hidden": 64}
    return {"widths": (16, 32) if small else (16, 32, 64), "blocks": 1}


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision's v1.5), 1x1 expand by 4; BN after
    each conv; projection shortcut when the shape changes."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut(cin, cout, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(out + skip)


class ResNet50(nn.Module):
    """ResNet-50-shaped ImageNet network: 7x7/2 stem + 3x3/2 max-pool, bottleneck stages
    ``blocks`` = (3, 4, 6, 3) with widths 64..512 (outputs 256..2048), 224 px input, global
    average pooling, a linear head. Used for kernel and end-to-end benchmarks (random weights are
    fine for timing). ``blocks`` may be one int (the same count in every stage)."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        widths=(64, 128, 256, 512),
        blocks=(3, 4, 6, 3),
    ):
        super().__init__()
        blocks = (blocks,) * len(widths) if isinstance(blocks, int) else tuple(blocks)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages, cin = [], widths[0]
        for i, (w, b) in enumerate(zip(widths, blocks)):
            stage = [Bottleneck(cin, w, 1 if i == 0 else 2)]
            cin = w * Bottleneck.expansion
            stage += [Bottleneck(cin, w) for _ in range(b - 1)]
            stages.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


ARCHS["resnet50"] = ResNet50
