"""Tests for the batched plain-torch augmentation (``propos_losses.train.augment``)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from propos_losses.train.augment import (
    AUGMENTATION_KINDS,
    AUGMENTATION_PRESETS,
    Augmentation,
    _blur_matrix,
    _dilate3x3,
    _hsv_to_rgb,
    _rgb_to_hsv,
    build_augmentation,
    normalize,
    rgb_to_grayscale,
)

SIZES = (8, 28, 32)
CHANNELS = (1, 3)
IDENTITY = {
    "crop_scale": (1.0, 1.0),
    "crop_ratio": (1.0, 1.0),
    "degrees": 0.0,
    "translate": 0.0,
    "scale": (1.0, 1.0),
    "shear": 0.0,
    "elastic_alpha": 0.0,
    "stroke_p": 0.0,
    "flip_p": 0.0,
    "brightness": 0.0,
    "contrast": 0.0,
    "saturation": 0.0,
    "hue": 0.0,
    "grayscale_p": 0.0,
}


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(batch: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=generator(seed + 1000))


@pytest.mark.parametrize(("kind", "channels", "size"), list(itertools.product(AUGMENTATION_KINDS, CHANNELS, SIZES)))
def test_output_keeps_shape_and_dtype_with_values_in_unit_interval(kind: str, channels: int, size: int) -> None:
    augment = build_augmentation(kind, size, channels)
    batch = images(6, channels, size)

    out = augment(batch, generator())

    assert out.shape == batch.shape and out.dtype == batch.dtype and out.device == batch.device
    assert torch.isfinite(out).all()
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_kept(dtype: torch.dtype) -> None:
    augment = build_augmentation("color", 8, 3)
    out = augment(images(4, 3, 8).to(dtype), generator())

    assert out.dtype == dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("kind", AUGMENTATION_KINDS)
def test_same_generator_seed_gives_the_same_views(kind: str) -> None:
    augment = build_augmentation(kind, 28, 3)
    batch = images(5, 3, 28)

    assert torch.equal(augment(batch, generator(7)), augment(batch, generator(7)))


@pytest.mark.parametrize("kind", AUGMENTATION_KINDS)
def test_two_draws_from_one_generator_differ(kind: str) -> None:
    augment = build_augmentation(kind, 28, 3)
    batch = images(5, 3, 28)
    rng = generator(3)

    first, second = augment(batch, rng), augment(batch, rng)

    # Every sample gets new parameters on the second draw.
    assert ((first - second).abs().flatten(1).amax(dim=1) > 1e-3).all()


@pytest.mark.parametrize(("kind", "channels"), [("digits", 1), ("mnist", 1), ("color", 3)])
def test_each_sample_of_a_batch_gets_its_own_parameters(kind: str, channels: int) -> None:
    size = 28
    augment = build_augmentation(kind, size, channels)
    batch = images(1, channels, size).expand(8, channels, size, size).contiguous()

    out = augment(batch, generator(5)).flatten(1)

    distances = torch.cdist(out, out)
    off_diagonal = distances[~torch.eye(len(out), dtype=torch.bool)]
    assert (off_diagonal > 1e-3).all()


@pytest.mark.parametrize(("channels", "size"), list(itertools.product(CHANNELS, SIZES)))
@pytest.mark.parametrize("kind", AUGMENTATION_KINDS)
def test_all_strengths_zero_returns_the_input(kind: str, channels: int, size: int) -> None:
    augment = build_augmentation(kind, size, channels, **IDENTITY)
    batch = images(4, channels, size)

    assert torch.equal(augment(batch, generator()), batch)


def test_jitter_probability_zero_leaves_colours_unchanged() -> None:
    augment = Augmentation(8, 3, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.5, jitter_p=0.0)
    batch = images(6, 3, 8)

    assert torch.equal(augment(batch, generator()), batch)


def test_flip_probability_one_mirrors_every_sample_exactly() -> None:
    augment = Augmentation(8, 3, flip_p=1.0)
    batch = images(4, 3, 8)

    assert torch.equal(augment(batch, generator()), batch.flip(-1))


def test_grayscale_probability_one_gives_equal_channels_of_luma() -> None:
    augment = Augmentation(8, 3, grayscale_p=1.0)
    batch = images(4, 3, 8)

    out = augment(batch, generator())

    luma = 0.299 * batch[:, 0] + 0.587 * batch[:, 1] + 0.114 * batch[:, 2]
    for channel in range(3):
        torch.testing.assert_close(out[:, channel], luma)


def test_brightness_scales_each_sample_by_one_factor_within_range() -> None:
    strength = 0.4
    augment = Augmentation(8, 3, brightness=strength)
    # At most 0.5, so that factors up to 1.4 never clip.
    batch = 0.05 + 0.45 * images(16, 3, 8)

    ratio = augment(batch, generator()) / batch

    per_sample = ratio.flatten(1)
    torch.testing.assert_close(per_sample, per_sample[:, :1].expand_as(per_sample))
    assert float(per_sample.min()) >= 1.0 - strength - 1e-6
    assert float(per_sample.max()) <= 1.0 + strength + 1e-6
    assert float(per_sample[:, 0].std()) > 0.0


def test_contrast_keeps_the_mean_of_a_grey_sample() -> None:
    augment = Augmentation(8, 1, contrast=0.4)
    batch = 0.25 + 0.5 * images(8, 1, 8)

    out = augment(batch, generator())

    # Blending towards the mean preserves it as long as nothing clips (values stay in [0.05, 0.95]).
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), batch.mean(dim=(1, 2, 3)))
    assert not torch.equal(out, batch)


def test_hsv_conversion_matches_matplotlib_and_round_trips() -> None:
    colors = pytest.importorskip("matplotlib.colors")
    batch = images(4, 3, 8, seed=2).double()

    hsv = _rgb_to_hsv(batch)

    expected = colors.rgb_to_hsv(batch.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(hsv.permute(0, 2, 3, 1).numpy(), expected, atol=1e-12)
    torch.testing.assert_close(_hsv_to_rgb(hsv), batch)


def test_hue_shift_keeps_value_and_saturation_and_moves_hue() -> None:
    augment = Augmentation(8, 3, hue=0.5)
    batch = images(8, 3, 8, seed=4).double()

    out = augment(batch, generator())

    before, after = _rgb_to_hsv(batch), _rgb_to_hsv(out)
    torch.testing.assert_close(after[:, 1:], before[:, 1:])
    # One shift per sample: the hue difference (mod 1) is constant over its pixels.
    shift = torch.remainder(after[:, 0] - before[:, 0], 1.0).flatten(1)
    circular = torch.remainder(shift - shift[:, :1] + 0.5, 1.0) - 0.5
    assert float(circular.abs().max()) < 1e-9
    assert float(shift[:, 0].std()) > 0.0


def ramp(batch: int, size: int) -> torch.Tensor:
    """Pixel value = normalised x of the pixel centre, mapped into [0.25, 0.75]."""
    x = (2 * torch.arange(size, dtype=torch.float64) + 1) / size - 1
    return (0.5 + 0.25 * x).view(1, 1, 1, size).expand(batch, 1, size, size).contiguous()


@pytest.mark.parametrize("area", [0.25, 0.64])
def test_resized_crop_of_area_s_magnifies_by_one_over_sqrt_s(area: float) -> None:
    size = 16
    augment = Augmentation(size, 1, crop_scale=(area, area))
    batch = ramp(4, size)

    out = augment(batch, generator())

    # Bilinear sampling reproduces a linear ramp exactly: the slope shrinks by the crop's side sqrt(s).
    slope_in = batch[..., 1:] - batch[..., :-1]
    slope_out = out[..., 1:] - out[..., :-1]
    torch.testing.assert_close(slope_out, slope_in * area**0.5)
    # The crop stays inside the image, so no zero padding shows up.
    assert float(out.min()) >= float(batch.min()) - 1e-12 and float(out.max()) <= float(batch.max()) + 1e-12


def test_resized_crop_never_blends_in_padding_at_the_image_edge() -> None:
    # Crops touching the edge sample up to half a pixel past the outer pixel
    # centres; a constant image must stay exactly constant there.
    augment = build_augmentation("color", 8, 3, flip_p=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    batch = torch.full((64, 3, 8, 8), 0.7)

    torch.testing.assert_close(augment(batch, generator()), batch)


def test_rotation_and_zoom_keep_the_image_centre_fixed() -> None:
    size = 28
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    blob = torch.exp(-(coords.view(-1, 1) ** 2 + coords.view(1, -1) ** 2) / 8.0)
    batch = blob.expand(6, 1, size, size).contiguous()
    augment = Augmentation(size, 1, degrees=180.0, scale=(0.8, 1.2))

    out = augment(batch, generator())

    mass = out.sum(dim=(-2, -1))
    centre_y = (out * coords.view(-1, 1)).sum(dim=(-2, -1)) / mass
    centre_x = (out * coords.view(1, -1)).sum(dim=(-2, -1)) / mass
    assert float(centre_x.abs().max()) < 1e-2 and float(centre_y.abs().max()) < 1e-2
    assert not torch.allclose(out, batch)


def test_translation_moves_the_centroid_by_at_most_the_translate_fraction() -> None:
    size, translate = 28, 0.1
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    blob = torch.exp(-(coords.view(-1, 1) ** 2 + coords.view(1, -1) ** 2) / 4.0)
    batch = blob.expand(16, 1, size, size).contiguous()

    out = Augmentation(size, 1, translate=translate)(batch, generator())

    mass = out.sum(dim=(-2, -1))
    centre_x = (out * coords.view(1, -1)).sum(dim=(-2, -1)) / mass
    assert float(centre_x.abs().max()) <= translate * size + 1e-6
    assert float(centre_x.abs().max()) > 0.5  # some sample actually moved


def test_shear_slants_vertical_strokes_but_keeps_the_centre_row() -> None:
    size = 28
    bar = torch.zeros(8, 1, size, size)
    bar[:, :, 4:24, 13:15] = 1.0  # a vertical stroke through the centre

    out = Augmentation(size, 1, shear=30.0)(bar, generator())

    cols = torch.arange(size, dtype=torch.float32)

    def column_centre(rows: slice) -> torch.Tensor:
        part = out[:, 0, rows]
        return (part * cols).sum(dim=(-2, -1)) / part.sum(dim=(-2, -1))

    slope = column_centre(slice(18, 23)) - column_centre(slice(5, 10))
    # A horizontal shear moves the top and bottom of the stroke sideways in opposite directions.
    assert float(slope.abs().max()) > 2.0
    assert float(slope.abs().max()) <= 2 * 13 * torch.tan(torch.tensor(30.0).deg2rad()) + 1.0


def test_elastic_distortion_is_smooth_local_and_bounded() -> None:
    size = 28
    batch = images(6, 1, size)
    alpha = 2.0
    augment = Augmentation(size, 1, elastic_alpha=alpha, elastic_sigma=3.0)

    field = augment._elastic_displacement(6, generator(), torch.device("cpu")) * size / 2  # pixels
    out = augment(batch, generator())

    assert field.shape == (6, size, size, 2)
    # Smoothed uniform noise times alpha never exceeds alpha pixels, and neighbours move alike.
    assert float(field.abs().max()) <= alpha and float(field.abs().max()) > 0.05
    assert float((field[:, 1:] - field[:, :-1]).abs().max()) < 0.5 * float(field.abs().max())
    assert not torch.allclose(out, batch)


@pytest.mark.parametrize(("size", "sigma"), [(28, 3.0), (8, 0.5), (7, 3.0), (5, 3.0), (1, 1.0)])
def test_elastic_blur_is_a_gaussian_convolution_with_reflect_or_replicate_padding(size: int, sigma: float) -> None:
    # Float64 oracle written from the definition: taps at offsets -r..r, reflect padding about the
    # edge pixels while the radius is below the size, the edge pixel repeated otherwise.
    radius = max(1, math.ceil(2.0 * sigma))
    weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    weights /= weights.sum()
    x = np.random.default_rng(0).uniform(-1.0, 1.0, size)

    def padded(index: int) -> float:
        if radius >= size:
            return float(x[min(max(index, 0), size - 1)])
        if index < 0:
            index = -index
        if index > size - 1:
            index = 2 * (size - 1) - index
        return float(x[index])

    expected = [sum(w * padded(i + k - radius) for k, w in enumerate(weights)) for i in range(size)]

    blurred = _blur_matrix(size, sigma, torch.device("cpu")) @ torch.from_numpy(x).float()

    np.testing.assert_allclose(blurred.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_elastic_blur_of_each_axis_equals_the_padded_convolution_it_replaced() -> None:
    # The blur was two F.conv2d calls on reflect-padded noise; the matrix form must give the same field.
    size, sigma = 28, 3.0
    noise = torch.rand(4, 1, size, size, generator=generator()) * 2.0 - 1.0
    radius = max(1, math.ceil(2.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    conv, pad = torch.nn.functional.conv2d, torch.nn.functional.pad
    smooth = conv(pad(noise, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    smooth = conv(pad(smooth, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))

    blur = _blur_matrix(size, sigma, torch.device("cpu"))

    torch.testing.assert_close(blur @ noise[:, 0] @ blur.T, smooth[:, 0], rtol=0.0, atol=1e-6)


@given(
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    seed=st.integers(0, 2**31 - 1),
)
@settings(max_examples=30, deadline=None)
def test_stroke_dilation_equals_3x3_max_pooling_exactly(height: int, width: int, seed: int) -> None:
    batch = torch.randn(3, 2, height, width, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(_dilate3x3(batch), torch.nn.functional.max_pool2d(batch, 3, stride=1, padding=1))


def test_stroke_thickness_dilates_or_thins_each_sample() -> None:
    size = 28
    bar = torch.zeros(64, 1, size, size)
    bar[:, :, 4:24, 13:15] = 0.6

    out = Augmentation(size, 1, stroke_p=1.0)(bar, generator())

    mass = out.sum(dim=(-2, -1)).flatten()
    dilated = mass > bar[0].sum() + 1e-6
    thinned = mass < bar[0].sum() - 1e-6
    assert bool((dilated | thinned).all()) and bool(dilated.any()) and bool(thinned.any())
    assert torch.equal(out[thinned], bar[thinned] ** 2)


@settings(max_examples=15, deadline=None)
@given(
    size=st.sampled_from(SIZES),
    channels=st.sampled_from(CHANNELS),
    crop_low=st.floats(min_value=0.05, max_value=1.0),
    degrees=st.floats(min_value=0.0, max_value=180.0),
    translate=st.floats(min_value=0.0, max_value=0.5),
    jitter=st.floats(min_value=0.0, max_value=2.0),
    hue=st.floats(min_value=0.0, max_value=0.5),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_any_valid_options_keep_values_in_unit_interval(
    size: int, channels: int, crop_low: float, degrees: float, translate: float, jitter: float, hue: float, seed: int
) -> None:
    augment = Augmentation(
        size,
        channels,
        crop_scale=(crop_low, 1.0),
        crop_ratio=(0.5, 2.0),
        degrees=degrees,
        translate=translate,
        scale=(0.5, 1.5),
        shear=degrees / 6,
        elastic_alpha=translate * 8,
        stroke_p=0.5,
        flip_p=0.5,
        brightness=jitter,
        contrast=jitter,
        saturation=jitter,
        hue=hue,
        jitter_p=0.8,
        grayscale_p=0.2,
    )
    out = augment(images(3, channels, size, seed=seed % 100), generator(seed))

    assert out.shape == (3, channels, size, size) and torch.isfinite(out).all()
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_color_preset_is_simclr_without_blur() -> None:
    preset = AUGMENTATION_PRESETS["color"]
    assert (preset["brightness"], preset["contrast"], preset["saturation"], preset["hue"]) == (0.4, 0.4, 0.4, 0.1)
    assert (preset["jitter_p"], preset["grayscale_p"], preset["flip_p"]) == (0.8, 0.2, 0.5)
    assert AUGMENTATION_PRESETS["digits"].get("flip_p", 0.0) == 0.0
    assert AUGMENTATION_PRESETS["mnist"].get("flip_p", 0.0) == 0.0


def test_empty_batch_passes_through() -> None:
    augment = build_augmentation("color", 8, 3)
    assert augment(torch.empty(0, 3, 8, 8), generator()).shape == (0, 3, 8, 8)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"crop_scale": (0.0, 1.0)}, ValueError, r"crop_scale\[0\] must be > 0.0"),
        ({"crop_scale": (0.9, 0.5)}, ValueError, r"crop_scale must satisfy low <= high"),
        ({"crop_ratio": 1.0}, TypeError, r"crop_ratio must be a \(low, high\) pair"),
        ({"flip_p": 1.5}, ValueError, r"flip_p must be <= 1.0, got 1.5"),
        ({"hue": 0.6}, ValueError, r"hue must be <= 0.5, got 0.6"),
        ({"brightness": -0.1}, ValueError, r"brightness must be >= 0.0, got -0.1"),
        ({"degrees": float("nan")}, ValueError, r"degrees must be finite"),
        ({"shear": 61.0}, ValueError, r"shear must be <= 60.0, got 61.0"),
        ({"elastic_alpha": -1.0}, ValueError, r"elastic_alpha must be >= 0.0, got -1.0"),
        ({"elastic_sigma": 0.0}, ValueError, r"elastic_sigma must be > 0.0, got 0.0"),
        ({"stroke_p": 2.0}, ValueError, r"stroke_p must be <= 1.0, got 2.0"),
    ],
)
def test_invalid_options_are_rejected_naming_the_option(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        Augmentation(8, 3, **kwargs)


def test_invalid_channels_kind_and_unknown_override_are_rejected() -> None:
    with pytest.raises(ValueError, match="channels must be 1 or 3, got 2"):
        Augmentation(8, 2)
    with pytest.raises(ValueError, match="kind must be one of digits, mnist, color, got 'blur'"):
        build_augmentation("blur", 8, 3)
    with pytest.raises(TypeError, match="unknown augmentation option.*'rotation'"):
        build_augmentation("mnist", 28, 1, rotation=10.0)


def test_forward_rejects_wrong_shape_dtype_and_generator() -> None:
    augment = build_augmentation("mnist", 28, 1)
    with pytest.raises(ValueError, match=r"images must have shape \(B, 1, 28, 28\), got \(2, 1, 32, 32\)"):
        augment(torch.rand(2, 1, 32, 32))
    with pytest.raises(TypeError, match="images must have a floating-point dtype"):
        augment(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        augment(torch.rand(2, 1, 28, 28), 0)  # type: ignore[arg-type]


def test_rgb_to_grayscale_uses_luma_weights_and_passes_one_channel_through() -> None:
    batch = images(2, 3, 4)
    torch.testing.assert_close(
        rgb_to_grayscale(batch)[:, 0], 0.299 * batch[:, 0] + 0.587 * batch[:, 1] + 0.114 * batch[:, 2]
    )
    grey = images(2, 1, 4)
    assert rgb_to_grayscale(grey) is grey


def test_normalize_standardises_each_channel_and_rejects_bad_std() -> None:
    batch = images(3, 3, 4)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]

    out = normalize(batch, mean, std)

    for channel in range(3):
        torch.testing.assert_close(out[:, channel], (batch[:, channel] - mean[channel]) / std[channel])
    with pytest.raises(ValueError, match=r"std\[1\] must be > 0.0, got 0.0"):
        normalize(batch, mean, [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="mean and std must have 3 values"):
        normalize(batch, [0.5], [0.5])
