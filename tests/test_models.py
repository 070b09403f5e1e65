"""Tests for the trainer's backbones and MLP heads (``propos_losses.train.models``)."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

from propos_losses.train.models import BACKBONE_NAMES, CifarResNet, FlatCNN, SmallCNN, build_backbone, mlp_head


def conv_params(in_channels: int, out_channels: int, kernel: int) -> int:
    return kernel * kernel * in_channels * out_channels


def bn_params(channels: int) -> int:
    return 2 * channels  # weight and bias


def resnet_param_count(layers: tuple[int, ...], in_channels: int) -> int:
    """Parameters of a BasicBlock ResNet with the CIFAR stem, counted from the architecture."""
    widths = (64, 128, 256, 512)
    total = conv_params(in_channels, 64, 3) + bn_params(64)
    channels = 64
    for stage, (depth, width) in enumerate(zip(layers, widths)):
        for block in range(depth):
            stride = 2 if stage > 0 and block == 0 else 1
            total += (
                conv_params(channels, width, 3) + bn_params(width) + conv_params(width, width, 3) + bn_params(width)
            )
            if stride != 1 or channels != width:
                total += conv_params(channels, width, 1) + bn_params(width)
            channels = width
    return total


def count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


@pytest.mark.parametrize("name", BACKBONE_NAMES)
@pytest.mark.parametrize(("channels", "size"), [(1, 8), (1, 28), (3, 32)])
def test_backbone_maps_images_to_feature_dim_vectors(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    backbone, feature_dim = build_backbone(name, channels, size)

    features = backbone(torch.rand(3, channels, size, size))

    assert features.shape == (3, feature_dim) and features.dtype == torch.float32
    assert torch.isfinite(features).all()


def test_feature_dims_are_256_for_the_small_cnn_and_512_for_resnets() -> None:
    assert build_backbone("tiny_cnn", 1, 8)[1] == 128
    assert build_backbone("small_cnn", 1, 28)[1] == 256
    assert build_backbone("resnet18", 3, 32)[1] == 512
    assert build_backbone("resnet34", 3, 32)[1] == 512


@pytest.mark.parametrize(("name", "layers"), [("resnet18", (2, 2, 2, 2)), ("resnet34", (3, 4, 6, 3))])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_resnet_parameter_count_matches_the_basic_block_architecture(
    name: str, layers: tuple[int, ...], in_channels: int
) -> None:
    backbone, _ = build_backbone(name, in_channels, 32)

    assert count(backbone) == resnet_param_count(layers, in_channels)


def test_resnet18_cifar_has_about_11_2_million_parameters() -> None:
    backbone, _ = build_backbone("resnet18", 3, 32)
    assert 11.0e6 < count(backbone) < 11.3e6


def test_resnet_uses_the_cifar_stem_without_max_pool() -> None:
    backbone, _ = build_backbone("resnet18", 3, 32)
    assert isinstance(backbone, CifarResNet)
    stem_conv = backbone.stem[0]
    assert stem_conv.kernel_size == (3, 3) and stem_conv.stride == (1, 1)
    assert not any(isinstance(module, nn.MaxPool2d) for module in backbone.modules())
    # 32x32 -> 32 (stem, layer1) -> 16 -> 8 -> 4 before pooling.
    feature_map = backbone.layer4(
        backbone.layer3(backbone.layer2(backbone.layer1(backbone.stem(torch.rand(2, 3, 32, 32)))))
    )
    assert feature_map.shape == (2, 512, 4, 4)


@pytest.mark.parametrize(("size", "final"), [(8, 4), (28, 4), (32, 4)])
def test_small_cnn_halves_the_map_down_to_4x4(size: int, final: int) -> None:
    cnn = SmallCNN(1, size)
    assert cnn.features(torch.rand(2, 1, size, size)).shape[-2:] == (final, final)


def test_small_cnn_is_much_smaller_than_resnet18() -> None:
    small, _ = build_backbone("small_cnn", 1, 28)
    resnet, _ = build_backbone("resnet18", 1, 28)
    assert count(small) < count(resnet) / 10


def test_tiny_cnn_is_the_small_cnn_narrower_where_the_map_is_4x4() -> None:
    tiny, _ = build_backbone("tiny_cnn", 1, 8)
    small, _ = build_backbone("small_cnn", 1, 8)
    widths = [block[0].out_channels for block in tiny.features]
    assert widths == [32, 64, 96, 128]
    assert tiny.features(torch.rand(2, 1, 8, 8)).shape == (2, 128, 4, 4)
    # The last two blocks hold most of the work: the parameters of 3x3 convolutions count it.
    expected = conv_params(1, 32, 3) + conv_params(32, 64, 3) + conv_params(64, 96, 3) + conv_params(96, 128, 3)
    expected += sum(bn_params(width) for width in widths)
    assert count(tiny) == expected and count(tiny) < count(small) / 2


def flat_cnn_pair() -> tuple[FlatCNN, FlatCNN]:
    torch.manual_seed(0)
    channels_last = FlatCNN(1, 28)
    contiguous = FlatCNN(1, 28, memory_format=torch.contiguous_format)
    contiguous.load_state_dict(channels_last.state_dict())
    return channels_last, contiguous


def test_flat_cnn_keeps_its_feature_maps_channels_last_by_default() -> None:
    channels_last, contiguous = flat_cnn_pair()
    weight = channels_last.features[1][0].weight  # (64, 32, 3, 3): the two layouts differ
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert contiguous.features[1][0].weight.is_contiguous()
    maps = channels_last.features(torch.rand(2, 1, 28, 28).contiguous(memory_format=torch.channels_last))
    assert maps.is_contiguous(memory_format=torch.channels_last)


def test_flat_cnn_memory_format_changes_speed_not_results() -> None:
    channels_last, contiguous = flat_cnn_pair()
    images = torch.rand(8, 1, 28, 28)

    outputs = [model(images) for model in (channels_last, contiguous)]
    for output in outputs:
        output.square().sum().backward()

    # Same flattened (C, H, W) order into the Linear: equal features and gradients up to rounding.
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
    for first, second in zip(channels_last.parameters(), contiguous.parameters()):
        assert first.grad is not None and second.grad is not None
        torch.testing.assert_close(first.grad, second.grad, rtol=1e-3, atol=1e-4)
    channels_last.eval(), contiguous.eval()
    with torch.no_grad():
        torch.testing.assert_close(channels_last(images), contiguous(images), rtol=1e-4, atol=1e-5)


def test_flat_cnn_state_dict_round_trips_bit_exactly_across_memory_formats() -> None:
    channels_last, contiguous = flat_cnn_pair()
    restored = FlatCNN(1, 28)
    restored.load_state_dict(contiguous.state_dict())
    for name, tensor in channels_last.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor), name
    assert restored.features[1][0].weight.is_contiguous(memory_format=torch.channels_last)


def test_flat_cnn_rejects_an_unknown_memory_format() -> None:
    with pytest.raises(ValueError, match="memory_format must be torch.channels_last or torch.contiguous_format"):
        FlatCNN(1, 28, memory_format=torch.preserve_format)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_backbone_gradients_reach_the_first_convolution(name: str) -> None:
    backbone, _ = build_backbone(name, 1, 8)
    backbone(torch.rand(4, 1, 8, 8)).square().sum().backward()

    first_conv = next(module for module in backbone.modules() if isinstance(module, nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_backbone_in_eval_mode_treats_samples_independently(name: str) -> None:
    torch.manual_seed(1)
    backbone, _ = build_backbone(name, 3, 8)
    batch = torch.rand(4, 3, 8, 8)
    backbone.train()
    backbone(batch)  # move the running statistics away from their initial values
    backbone.eval()

    with torch.no_grad():
        together = backbone(batch)
        alone = torch.cat([backbone(batch[index : index + 1]) for index in range(len(batch))])

    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_mlp_head_is_linear_bn_relu_linear() -> None:
    head = mlp_head(16, 32, 8)
    assert [type(layer) for layer in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[1].num_features) == (16, 32, 32)
    assert (head[3].in_features, head[3].out_features) == (32, 8)


def test_mlp_head_in_train_mode_normalises_with_batch_statistics_and_updates_running_stats() -> None:
    torch.manual_seed(2)
    head = mlp_head(16, 32, 8).train()
    inputs = 3.0 + 2.0 * torch.randn(64, 16)

    hidden = head[1](head[0](inputs))

    torch.testing.assert_close(hidden.mean(dim=0), torch.zeros(32), atol=1e-5, rtol=0)
    torch.testing.assert_close(hidden.var(dim=0, unbiased=False), torch.ones(32), atol=1e-3, rtol=0)
    assert not torch.equal(head[1].running_mean, torch.zeros(32))


def test_mlp_head_in_eval_mode_is_per_sample_and_leaves_running_stats_alone() -> None:
    torch.manual_seed(3)
    head = mlp_head(16, 32, 8)
    head.train()
    head(torch.randn(64, 16))
    head.eval()
    running_mean = head[1].running_mean.clone()
    inputs = torch.randn(5, 16)

    with torch.no_grad():
        together = head(inputs)
        alone = torch.cat([head(inputs[index : index + 1]) for index in range(len(inputs))])

    torch.testing.assert_close(together, alone)
    assert torch.equal(head[1].running_mean, running_mean)


def test_mlp_head_in_train_mode_rejects_a_batch_of_one() -> None:
    head = mlp_head(4, 8, 2).train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        head(torch.randn(1, 4))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: build_backbone("vgg", 3, 32),
            ValueError,
            "name must be one of tiny_cnn, small_cnn, flat_cnn, resnet18, resnet34, got 'vgg'",
        ),
        (lambda: build_backbone("resnet18", 0, 32), ValueError, "in_channels must be >= 1, got 0"),
        (lambda: build_backbone("small_cnn", 1, 2.5), TypeError, "image_size must be an int"),
        (lambda: mlp_head(16, 0, 8), ValueError, "hidden_dim must be >= 1, got 0"),
    ],
)
def test_invalid_arguments_are_rejected_naming_the_argument(
    call: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        call()


def test_backbone_rejects_images_with_the_wrong_channel_count() -> None:
    backbone, _ = build_backbone("small_cnn", 1, 28)
    with pytest.raises(ValueError, match=r"SmallCNN expects images of shape \(B, 1, H, W\), got \(2, 3, 28, 28\)"):
        backbone(torch.rand(2, 3, 28, 28))


def _with_trained_statistics(module: nn.Module, images: torch.Tensor) -> nn.Module:
    """Random affine parameters and running statistics from a few training-mode batches."""
    generator = torch.Generator().manual_seed(1)
    for norm in (m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        norm.momentum = 0.5
        with torch.no_grad():
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=generator) + 0.5)
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=generator))
    module.train()
    with torch.no_grad():
        for _ in range(3):
            module(images * (1 + torch.rand(1, generator=generator)))
    return module


@pytest.mark.parametrize("name", ["tiny_cnn", "small_cnn", "flat_cnn", "resnet18"])
def test_fused_copy_gives_the_eval_mode_outputs_and_leaves_the_module_alone(name: str) -> None:
    from propos_losses.train.models import Encoder, fuse_batchnorm_for_inference

    torch.manual_seed(0)
    images = torch.rand(16, 1, 28, 28, dtype=torch.float64)
    backbone, dim = build_backbone(name, in_channels=1, image_size=28)
    encoder = _with_trained_statistics(Encoder(backbone, dim, 32, 8).double(), images)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    fused = fuse_batchnorm_for_inference(encoder)
    assert encoder.training  # the original keeps its mode, weights and statistics
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert not fused.training and not any(p.requires_grad for p in fused.parameters())
    norms = [m for m in fused.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if name == "resnet18":  # the stem, shortcut and projector pairs are fused, the blocks' attributes not
        assert len(norms) == 2 * 8
    else:
        assert norms == []
    encoder.eval()
    with torch.no_grad():
        for expected, actual in zip(encoder(images), fused(images)):
            torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_fusion_skips_batchnorm_without_running_statistics_and_rejects_non_modules() -> None:
    from propos_losses.train.models import fuse_batchnorm_for_inference

    head = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, track_running_stats=False), nn.ReLU())
    fused = fuse_batchnorm_for_inference(head)
    assert isinstance(fused[1], nn.BatchNorm1d)
    x = torch.randn(5, 4)
    torch.testing.assert_close(fused(x), head.eval()(x))
    with pytest.raises(TypeError, match="module must be an nn.Module, got Tensor"):
        fuse_batchnorm_for_inference(torch.zeros(1))  # type: ignore[arg-type]
