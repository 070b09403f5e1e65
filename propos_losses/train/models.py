"""Backbones and MLP heads for the reference trainer (no torchvision).

:func:`build_backbone` builds the networks of :data:`BACKBONE_NAMES`: ``tiny_cnn`` and
``small_cnn`` (:class:`SmallCNN`) for 8x8 digits, ``flat_cnn`` (:class:`FlatCNN`) for
28x28 digits, ``resnet18`` / ``resnet34`` (:class:`CifarResNet`, the paper's CIFAR stem).
:func:`mlp_head` is the projector and predictor.

Example:
    >>> backbone, feature_dim = build_backbone("small_cnn", in_channels=1, image_size=28)
    >>> mlp_head(feature_dim, 64, 32)(backbone(torch.rand(4, 1, 28, 28))).shape
    torch.Size([4, 32])
"""

from __future__ import annotations

import copy
from typing import Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from propos_losses.utils import check_int

__all__ = [
    "Encoder",
    "BACKBONE_NAMES",
    "BasicBlock",
    "CifarResNet",
    "SmallCNN",
    "FlatCNN",
    "build_backbone",
    "fuse_batchnorm_for_inference",
    "mlp_head",
]

#: Names accepted by :func:`build_backbone`.
BACKBONE_NAMES: tuple[str, ...] = ("tiny_cnn", "small_cnn", "flat_cnn", "resnet18", "resnet34")

_SMALL_CNN_WIDTHS = (32, 64, 128, 256)
_TINY_CNN_WIDTHS = (32, 64, 96, 128)  # narrower where the map is 4x4 (docs/trainer.rst, "Speed")
_SMALL_CNN_MIN_SIZE = 4  # the small CNN halves its map only while it is larger (8x8, 28x28 end at 4x4)
_FLAT_CNN_WIDTHS, _FLAT_CNN_FEATURES = (32, 64, 128), 256
_RESNET_WIDTHS = (64, 128, 256, 512)
_RESNET_LAYERS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def _check_images(module: nn.Module, images: Tensor, in_channels: int) -> None:
    if images.dim() != 4 or images.shape[1] != in_channels:
        raise ValueError(
            f"{type(module).__name__} expects images of shape (B, {in_channels}, H, W), got {tuple(images.shape)}"
        )


def _check_cnn_args(in_channels: int, image_size: int, widths: Sequence[int]) -> tuple[int, int, tuple[int, ...]]:
    in_channels = check_int("in_channels", in_channels, minimum=1)
    image_size = check_int("image_size", image_size, minimum=1)
    widths = tuple(check_int(f"widths[{index}]", width, minimum=1) for index, width in enumerate(widths))
    if not widths:
        raise ValueError("widths must not be empty")
    return in_channels, image_size, widths


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _init_weights(module: nn.Module) -> None:
    """He initialisation for ReLU networks, as torchvision's ResNet."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks, stride 2 while the map is larger than 4x4, then global average pooling.

    Args:
        in_channels: ``C`` of the input images.
        image_size: ``H = W`` of the input images; decides where to downsample.
        widths: output channels of the blocks; the last is the feature dimension.

    Shapes:
        ``(B, C, H, W)`` float -> ``(B, widths[-1])``.

    Example:
        >>> SmallCNN(1, 8)(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 256])
    """

    def __init__(self, in_channels: int, image_size: int, widths: Sequence[int] = _SMALL_CNN_WIDTHS) -> None:
        super().__init__()
        self.in_channels, size, widths = _check_cnn_args(in_channels, image_size, widths)
        blocks = []
        channels = self.in_channels
        for index, width in enumerate(widths):
            stride = 2 if index > 0 and size > _SMALL_CNN_MIN_SIZE else 1
            blocks.append(_conv_bn_relu(channels, width, stride))
            size = (size + 1) // 2 if stride == 2 else size
            channels = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = channels
        _init_weights(self)

    def forward(self, images: Tensor) -> Tensor:
        _check_images(self, images, self.in_channels)
        return self.pool(self.features(images)).flatten(1)


class FlatCNN(nn.Module):
    """Stride-2 conv-BN-ReLU blocks, then ``Flatten-Linear-BN1d-ReLU`` of the whole map (keeps where strokes are).

    Args:
        in_channels: ``C`` of the input images.
        image_size: ``H = W`` of the input images (sets the flattened width).
        widths: output channels of the conv blocks.
        feature_dim: width of the output features.
        memory_format: layout of the conv weights and maps: ``torch.channels_last`` (a CPU step
            ~15% faster) or ``torch.contiguous_format``; the same results up to rounding.

    Shapes:
        ``(B, C, H, W)`` float (any memory format) -> ``(B, feature_dim)``; training needs ``B > 1``.

    Example:
        >>> FlatCNN(1, 28).eval()(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 256])
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        widths: Sequence[int] = _FLAT_CNN_WIDTHS,
        feature_dim: int = _FLAT_CNN_FEATURES,
        memory_format: torch.memory_format = torch.channels_last,
    ) -> None:
        super().__init__()
        if memory_format not in (torch.channels_last, torch.contiguous_format):
            raise ValueError(
                f"memory_format must be torch.channels_last or torch.contiguous_format, got {memory_format}"
            )
        self.memory_format = memory_format
        self.in_channels, size, widths = _check_cnn_args(in_channels, image_size, widths)
        self.image_size = size
        self.feature_dim = check_int("feature_dim", feature_dim, minimum=1)
        blocks = []
        channels = self.in_channels
        for width in widths:
            blocks.append(_conv_bn_relu(channels, width, stride=2))
            size = (size + 1) // 2
            channels = width
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * size * size, self.feature_dim, bias=False),
            nn.BatchNorm1d(self.feature_dim),
            nn.ReLU(inplace=True),
        )
        _init_weights(self)
        self.features.to(memory_format=memory_format)  # type: ignore[call-overload]  # missing from torch's stubs

    def forward(self, images: Tensor) -> Tensor:
        _check_images(self, images, self.in_channels)
        if images.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"FlatCNN was built for {self.image_size}x{self.image_size} images, got {tuple(images.shape)}"
            )
        return self.head(self.features(images.contiguous(memory_format=self.memory_format)))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN with an identity or 1x1 conv-BN shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet with BasicBlocks and the CIFAR stem (3x3 stride-1 conv, no max-pool).

    Args:
        layers: number of blocks in each of the four stages, ``(2, 2, 2, 2)``
            for ResNet-18, ``(3, 4, 6, 3)`` for ResNet-34.
        in_channels: ``C`` of the input images.

    Shapes:
        ``(B, C, H, W)`` float -> ``(B, 512)`` after global average pooling.

    Example:
        >>> CifarResNet((1, 1, 1, 1), in_channels=3)(torch.rand(2, 3, 16, 16)).shape
        torch.Size([2, 512])
    """

    def __init__(self, layers: Sequence[int], in_channels: int = 3) -> None:
        super().__init__()
        if len(layers) != len(_RESNET_WIDTHS):
            raise ValueError(f"layers must give {len(_RESNET_WIDTHS)} stage depths, got {list(layers)}")
        layers = tuple(check_int(f"layers[{index}]", depth, minimum=1) for index, depth in enumerate(layers))
        self.in_channels = check_int("in_channels", in_channels, minimum=1)
        self.stem = _conv_bn_relu(self.in_channels, _RESNET_WIDTHS[0], stride=1)
        stages = []
        channels = _RESNET_WIDTHS[0]
        for index, (depth, width) in enumerate(zip(layers, _RESNET_WIDTHS)):
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock(channels, width, stride)] + [BasicBlock(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = channels
        _init_weights(self)

    def forward(self, images: Tensor) -> Tensor:
        _check_images(self, images, self.in_channels)
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(images)))))
        return self.pool(x).flatten(1)


def build_backbone(name: str, in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    """Build a backbone by name.

    Args:
        name: one of :data:`BACKBONE_NAMES`.
        in_channels: ``C`` of the input images (1 or 3 for the loaders here).
        image_size: ``H = W`` of the input images.

    Returns:
        ``(backbone, feature_dim)``; ``backbone`` maps ``(B, C, H, W)`` to ``(B, feature_dim)``.

    Raises:
        ValueError: unknown name, or a non-positive size.

    Example:
        >>> backbone, feature_dim = build_backbone("resnet18", in_channels=3, image_size=32)
        >>> feature_dim
        512
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {name!r} of type {type(name).__name__}")
    in_channels = check_int("in_channels", in_channels, minimum=1)
    image_size = check_int("image_size", image_size, minimum=1)
    backbone: nn.Module
    if name == "small_cnn":
        backbone = SmallCNN(in_channels, image_size)
    elif name == "tiny_cnn":
        backbone = SmallCNN(in_channels, image_size, _TINY_CNN_WIDTHS)
    elif name == "flat_cnn":
        backbone = FlatCNN(in_channels, image_size)
    elif name in _RESNET_LAYERS:
        backbone = CifarResNet(_RESNET_LAYERS[name], in_channels)
    else:
        raise ValueError(f"name must be one of {', '.join(BACKBONE_NAMES)}, got {name!r}")
    return backbone, int(backbone.feature_dim)


def fuse_batchnorm_for_inference(module: nn.Module) -> nn.Module:
    """An eval-mode, inference-only copy of ``module`` with BatchNorm folded into the layer before it.

    In every ``nn.Sequential``, a ``Conv2d`` + ``BatchNorm2d`` or ``Linear`` + ``BatchNorm1d`` pair becomes
    one layer (the BatchNorm an ``nn.Identity``): the same outputs up to rounding. Pairs that are separate
    attributes (a ResNet block's) stay as they are; ``module`` itself is not changed.

    Args:
        module: any module; BatchNorms without running statistics are not fused.

    Returns:
        The fused copy, in eval mode, with ``requires_grad=False`` parameters.

    Example:
        >>> head = mlp_head(4, 8, 2).eval()
        >>> fused = fuse_batchnorm_for_inference(head)
        >>> type(fused[1]).__name__
        'Identity'
        >>> x = torch.randn(3, 4)
        >>> torch.allclose(fused(x), head(x), atol=1e-6)
        True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    fused = copy.deepcopy(module).eval()
    for sequential in [m for m in fused.modules() if isinstance(m, nn.Sequential)]:
        names = list(sequential._modules)
        for first, second in zip(names, names[1:]):
            layer, norm = sequential._modules[first], sequential._modules[second]
            if not isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d)) or norm.running_mean is None:
                continue
            if isinstance(layer, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                sequential._modules[first] = fuse_conv_bn_eval(layer, norm)
            elif isinstance(layer, nn.Linear) and isinstance(norm, nn.BatchNorm1d):
                sequential._modules[first] = fuse_linear_bn_eval(layer, norm)
            else:
                continue
            sequential._modules[second] = nn.Identity()
    fused.requires_grad_(False)
    return fused


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """The BYOL/ProPos projector and predictor: ``Linear-BatchNorm1d-ReLU-Linear``.

    Args:
        in_dim: input features ``d``.
        hidden_dim: hidden width (4096 in the paper).
        out_dim: output features (256 in the paper).

    Returns:
        ``nn.Sequential`` mapping ``(B, in_dim)`` to ``(B, out_dim)`` (training needs ``B > 1``).

    Example:
        >>> mlp_head(512, 4096, 256)(torch.rand(8, 512)).shape
        torch.Size([8, 256])
    """
    in_dim = check_int("in_dim", in_dim, minimum=1)
    hidden_dim = check_int("hidden_dim", hidden_dim, minimum=1)
    out_dim = check_int("out_dim", out_dim, minimum=1)
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


class Encoder(nn.Module):
    """Backbone followed by the projector ``Linear-BN-ReLU-Linear``.

    Args:
        backbone: maps ``(B, C, H, W)`` images to ``(B, feature_dim)``.
        feature_dim: output size of ``backbone``.
        hidden_dim: hidden size of the projector.
        out_dim: projector output size ``d``.

    Example:
        >>> enc = Encoder(nn.Sequential(nn.Flatten(), nn.Linear(4, 6)), 6, 8, 3)
        >>> [tuple(t.shape) for t in enc(torch.randn(5, 1, 2, 2))]
        [(5, 6), (5, 3)]
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_dim = out_dim
        self.projector = mlp_head(feature_dim, hidden_dim, out_dim)

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """``(B, C, H, W)`` -> backbone features ``(B, feature_dim)``, projections ``(B, d)``."""
        features = self.backbone(images)
        return features, self.projector(features)
