"""Batched image augmentation in plain PyTorch (no torchvision).

:class:`Augmentation` transforms a whole ``(B, C, H, W)`` batch on its device, each sample with its own
parameters drawn from one ``torch.Generator`` (docs/trainer.rst, "Augmentation").

Example:
    >>> augment = build_augmentation("color", image_size=32, channels=3)
    >>> images = torch.rand(4, 3, 32, 32)
    >>> views = augment(images, generator=torch.Generator().manual_seed(0))
    >>> views.shape, bool(views.min() >= 0), bool(views.max() <= 1)
    (torch.Size([4, 3, 32, 32]), True, True)
"""

from __future__ import annotations

import inspect
import math
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from propos_losses.utils import check_float, check_int, check_tensor

__all__ = [
    "AUGMENTATION_KINDS",
    "AUGMENTATION_PRESETS",
    "Augmentation",
    "build_augmentation",
    "normalize",
    "rgb_to_grayscale",
]

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma weights, as PIL's convert("L") and torchvision
_CROP_TRIALS = 10  # (scale, ratio) draws of torchvision's RandomResizedCrop before it takes the whole image
# Jitter operations, applied in a random order per sample.
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)
_NUM_JITTER_OPS = 4

_DIGITS: Mapping[str, Any] = dict(crop_scale=(0.7, 1.0), crop_ratio=(3 / 4, 4 / 3), degrees=15.0, translate=0.1)
_MNIST = dict(scale=(0.85, 1.15), shear=15.0, elastic_alpha=2.0, elastic_sigma=3.0, stroke_p=0.5)
_COLOR = dict(
    crop_scale=(0.08, 1.0),
    crop_ratio=(3 / 4, 4 / 3),
    flip_p=0.5,
    brightness=0.4,
    contrast=0.4,
    saturation=0.4,
    hue=0.1,
    jitter_p=0.8,
    grayscale_p=0.2,
)
#: Presets of :func:`build_augmentation`: ``"color"`` is SimCLR's recipe without blur (the paper's
#: CIFAR setting), ``"digits"`` a small affine jitter and mild crop without flip, ``"mnist"`` adds
#: the handwriting variations (shear, elastic distortion, stroke thickness; docs/trainer.rst).
AUGMENTATION_PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "digits": MappingProxyType(dict(_DIGITS, scale=(0.9, 1.1))),
        "mnist": MappingProxyType(dict(_DIGITS, **_MNIST)),
        "color": MappingProxyType(_COLOR),
    }
)
#: Kinds accepted by :func:`build_augmentation`.
AUGMENTATION_KINDS: tuple[str, ...] = tuple(AUGMENTATION_PRESETS)


def _check_range(
    name: str, value: object, *, minimum: float, maximum: Optional[float] = None, strict: bool = False
) -> tuple[float, float]:
    """Check a ``(low, high)`` pair with ``minimum <= low <= high <= maximum``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a (low, high) pair, got {value!r}")
    low = check_float(f"{name}[0]", value[0], minimum=minimum, maximum=maximum, strict_minimum=strict)
    high = check_float(f"{name}[1]", value[1], minimum=minimum, maximum=maximum, strict_minimum=strict)
    if low > high:
        raise ValueError(f"{name} must satisfy low <= high, got {value!r}")
    return low, high


def rgb_to_grayscale(images: Tensor) -> Tensor:
    """Luma of RGB images, ``(B, 3, H, W) -> (B, 1, H, W)``; one channel passes through.

    Example:
        >>> rgb_to_grayscale(torch.ones(2, 3, 4, 4)).shape
        torch.Size([2, 1, 4, 4])
    """
    if images.shape[-3] == 1:
        return images
    weights = torch.tensor(_LUMA, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images * weights).sum(dim=-3, keepdim=True)


def _rgb_to_hsv(images: Tensor) -> Tensor:
    red, green, blue = images.unbind(dim=-3)
    max_c = images.amax(dim=-3)
    min_c = images.amin(dim=-3)
    grey = max_c == min_c
    chroma = max_c - min_c
    ones = torch.ones_like(max_c)
    # Grey pixels have no hue and no saturation: divide by 1 instead of 0 there.
    saturation = chroma / torch.where(grey, ones, max_c)
    divisor = torch.where(grey, ones, chroma)
    red_c, green_c, blue_c = ((max_c.unsqueeze(-3) - images) / divisor.unsqueeze(-3)).unbind(dim=-3)
    is_red = max_c == red
    is_green = (max_c == green) & ~is_red
    is_blue = ~is_red & ~is_green
    hue = is_red * (blue_c - green_c) + is_green * (2.0 + red_c - blue_c) + is_blue * (4.0 + green_c - red_c)
    hue = torch.remainder(hue / 6.0, 1.0)
    return torch.stack((hue, saturation, max_c), dim=-3)


def _hsv_to_rgb(images: Tensor) -> Tensor:
    hue, saturation, value = images.unbind(dim=-3)
    sector = torch.floor(hue * 6.0)
    fraction = hue * 6.0 - sector
    sector = sector.to(torch.int64) % 6
    p = (value * (1.0 - saturation)).clamp(0.0, 1.0)
    q = (value * (1.0 - saturation * fraction)).clamp(0.0, 1.0)
    t = (value * (1.0 - saturation * (1.0 - fraction))).clamp(0.0, 1.0)
    # (red, green, blue) for each of the six hue sectors.
    table = torch.stack(
        (
            torch.stack((value, q, p, p, t, value), dim=-3),
            torch.stack((t, value, value, q, p, p), dim=-3),
            torch.stack((p, p, t, value, value, q), dim=-3),
        ),
        dim=-4,
    )  # (B, 3, 6, H, W)
    index = sector.unsqueeze(-3).unsqueeze(-3).expand(*table.shape[:-3], 1, *table.shape[-2:])
    return table.gather(-3, index).squeeze(-3)


def _blur_matrix(size: int, sigma: float, device: torch.device) -> Tensor:
    """``blur``: ``blur @ x`` is ``x`` convolved along its first axis with the normalised kernel
    ``exp(-offset^2 / (2 sigma^2))``, padded by ``max(1, ceil(2 sigma))`` (reflect; replicate when wider)."""
    radius = max(1, int(math.ceil(2.0 * sigma)))
    offsets = torch.arange(-radius, radius + 1, device=device)
    kernel = torch.exp(-0.5 * (offsets.to(torch.float32) / sigma) ** 2)
    kernel = kernel / kernel.sum()
    # Input row that each tap of each output row reads, after padding.
    source = torch.arange(size, device=device).unsqueeze(1) + offsets
    if radius < size:  # reflect about the edge pixels (one reflection suffices)
        source = torch.where(source < 0, -source, source)
        source = torch.where(source > size - 1, 2 * (size - 1) - source, source)
    else:
        source = source.clamp(0, size - 1)
    blur = torch.zeros(size, size, device=device)
    return blur.scatter_add_(1, source, kernel.expand(size, -1).contiguous())


def _dilate3x3(images: Tensor) -> Tensor:
    """3x3 grey-level dilation, ``F.max_pool2d(images, 3, stride=1, padding=1)``, as maxima of shifted copies."""
    padded = F.pad(images, (1, 1, 1, 1), value=-math.inf)
    rows = torch.maximum(torch.maximum(padded[..., :, :-2], padded[..., :, 1:-1]), padded[..., :, 2:])
    return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


class Augmentation(nn.Module):
    """Random augmentation of an image batch, each sample with its own parameters.

    Stages, each skipped at strength zero: random resized crop, affine and elastic
    displacement (one resampling), stroke thickness, flip, colour jitter (its four
    operations in a random order), grayscale. One-channel images skip saturation, hue and grayscale.

    Args:
        image_size: height and width ``H = W`` of the images it is given.
        channels: ``C``, 1 or 3.
        crop_scale: range of the crop's area as a fraction of the image.
        crop_ratio: range of the crop's aspect ratio (width / height), drawn log-uniformly.
        degrees: rotation drawn from ``[-degrees, degrees]``.
        translate: translation along x and y drawn from ``[-translate, translate]`` times the image size.
        scale: zoom factor range of the affine stage.
        shear: horizontal shear angle drawn from ``[-shear, shear]`` degrees.
        elastic_alpha: largest elastic displacement in pixels (Simard et al., 2003): uniform noise
            in ``[-1, 1]`` per pixel, smoothed by a Gaussian of ``elastic_sigma`` pixels, times this.
        elastic_sigma: smoothness of the elastic displacement, in pixels.
        stroke_p: probability of changing stroke thickness: with ``p / 2`` a 3x3 grey-level
            dilation (thicker), with ``p / 2`` squared intensities (thinner).
        flip_p: probability of a horizontal flip.
        brightness, contrast, saturation: jitter strength ``s``: a factor from ``[max(0, 1 - s), 1 + s]``.
        hue: hue shift drawn from ``[-hue, hue]`` (in turns), ``hue <= 0.5``.
        jitter_p: probability that the colour jitter is applied to a sample.
        grayscale_p: probability of converting a sample to grayscale.

    Shapes:
        ``(B, C, H, W)`` float in ``[0, 1]`` -> the same shape, dtype and device, in ``[0, 1]``.

    Example:
        >>> augment = Augmentation(28, 1, degrees=15.0, translate=0.1)
        >>> augment(torch.rand(8, 1, 28, 28), torch.Generator().manual_seed(0)).shape
        torch.Size([8, 1, 28, 28])
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        *,
        crop_scale: tuple[float, float] = (1.0, 1.0),
        crop_ratio: tuple[float, float] = (1.0, 1.0),
        degrees: float = 0.0,
        translate: float = 0.0,
        scale: tuple[float, float] = (1.0, 1.0),
        shear: float = 0.0,
        elastic_alpha: float = 0.0,
        elastic_sigma: float = 3.0,
        stroke_p: float = 0.0,
        flip_p: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        jitter_p: float = 1.0,
        grayscale_p: float = 0.0,
    ) -> None:
        super().__init__()
        self.image_size = check_int("image_size", image_size, minimum=1)
        self.channels = check_int("channels", channels, minimum=1)
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.crop_scale = _check_range("crop_scale", crop_scale, minimum=0.0, maximum=1.0, strict=True)
        self.crop_ratio = _check_range("crop_ratio", crop_ratio, minimum=0.0, strict=True)
        self.degrees = check_float("degrees", degrees, minimum=0.0, maximum=180.0)
        self.translate = check_float("translate", translate, minimum=0.0, maximum=1.0)
        self.scale = _check_range("scale", scale, minimum=0.0, strict=True)
        self.shear = check_float("shear", shear, minimum=0.0, maximum=60.0)
        self.elastic_alpha = check_float("elastic_alpha", elastic_alpha, minimum=0.0)
        self.elastic_sigma = check_float("elastic_sigma", elastic_sigma, minimum=0.0, strict_minimum=True)
        self.stroke_p = check_float("stroke_p", stroke_p, minimum=0.0, maximum=1.0)
        self.flip_p = check_float("flip_p", flip_p, minimum=0.0, maximum=1.0)
        self.brightness = check_float("brightness", brightness, minimum=0.0)
        self.contrast = check_float("contrast", contrast, minimum=0.0)
        self.saturation = check_float("saturation", saturation, minimum=0.0)
        self.hue = check_float("hue", hue, minimum=0.0, maximum=0.5)
        self.jitter_p = check_float("jitter_p", jitter_p, minimum=0.0, maximum=1.0)
        self.grayscale_p = check_float("grayscale_p", grayscale_p, minimum=0.0, maximum=1.0)
        if channels == 1:  # saturation, hue and grayscale are undefined for one channel (torchvision skips them too)
            self.saturation = self.hue = self.grayscale_p = 0.0

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in ("image_size", "channels", *_OPTIONS))

    @staticmethod
    def _uniform(
        low: float, high: float, shape: tuple[int, ...], generator: Optional[torch.Generator], device: torch.device
    ) -> Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator, device=device, dtype=torch.float32)

    def _crop_matrices(self, batch: int, generator: Optional[torch.Generator], device: torch.device) -> Tensor:
        """``(B, 3, 3)`` maps from crop coordinates to input coordinates (normalised, [-1, 1])."""
        shape = (batch, _CROP_TRIALS)
        area = self._uniform(*self.crop_scale, shape, generator, device)
        log_ratio = self._uniform(math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]), shape, generator, device)
        ratio = torch.exp(log_ratio)
        # Square images: width and height as fractions of the side.
        width = torch.sqrt(area * ratio)
        height = torch.sqrt(area / ratio)
        valid = (width <= 1.0) & (height <= 1.0)
        # The first valid trial, as torchvision's rejection loop; the whole image if none is.
        first = valid.to(torch.int8).argmax(dim=1, keepdim=True)
        found = valid.any(dim=1)
        ones = torch.ones(batch, device=device)
        width = torch.where(found, width.gather(1, first).squeeze(1), ones)
        height = torch.where(found, height.gather(1, first).squeeze(1), ones)
        # Centre anywhere that keeps the crop inside the image (a crop of fraction w spans 2w of [-1, 1]).
        centre = self._uniform(-1.0, 1.0, (batch, 2), generator, device)
        zeros = torch.zeros_like(width)
        rows = (width, zeros, centre[:, 0] * (1.0 - width), zeros, height, centre[:, 1] * (1.0 - height))
        return torch.stack((*rows, zeros, zeros, ones), dim=1).view(batch, 3, 3)

    def _inverse_affine_matrices(
        self, batch: int, generator: Optional[torch.Generator], device: torch.device
    ) -> Tensor:
        """``(B, 3, 3)`` inverses of ``y = s R(angle) x + t`` in normalised coordinates."""
        angle = self._uniform(-math.radians(self.degrees), math.radians(self.degrees), (batch,), generator, device)
        zoom = self._uniform(*self.scale, (batch,), generator, device)
        # A shift of a fraction f of the image is 2f in normalised coordinates.
        shift = self._uniform(-2.0 * self.translate, 2.0 * self.translate, (batch, 2), generator, device)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # x = R^T (y - t) / s: grid_sample needs where each output pixel comes from.
        matrices = torch.zeros(batch, 3, 3, device=device)
        matrices[:, 0, 0] = cos
        matrices[:, 0, 1] = sin
        matrices[:, 1, 0] = -sin
        matrices[:, 1, 1] = cos
        if self.shear > 0.0:
            # y = s R H x + t with the x-shear H = [[1, tan a], [0, 1]]: x = H^-1 R^T (y - t) / s.
            bound = math.tan(math.radians(self.shear))
            shear = self._uniform(-bound, bound, (batch,), generator, device)
            matrices[:, 0, :2] = matrices[:, 0, :2] - shear.unsqueeze(1) * matrices[:, 1, :2]
        matrices[:, :2, 2] = -(matrices[:, :2, :2] @ shift.unsqueeze(-1)).squeeze(-1)
        matrices[:, 2, 2] = 1.0
        return matrices

    def _elastic_displacement(self, batch: int, generator: Optional[torch.Generator], device: torch.device) -> Tensor:
        """``(B, H, W, 2)`` smooth random displacement in normalised coordinates (Simard et al., 2003).

        Uniform noise in ``[-1, 1]`` per pixel and axis, smoothed by a Gaussian of
        standard deviation ``elastic_sigma`` pixels and scaled by ``elastic_alpha`` pixels.
        """
        size = self.image_size
        noise = self._uniform(-1.0, 1.0, (batch * 2, size, size), generator, device)
        # The separable blur as two matrix products, blur @ noise @ blur^T: the same sums as a
        # padded 1-D convolution along each axis, ~20x faster on a CPU than F.conv2d with one channel.
        blur = _blur_matrix(size, self.elastic_sigma, device)
        smooth = torch.matmul(torch.matmul(blur, noise), blur.T)
        # alpha pixels are 2 * alpha / size in normalised coordinates.
        return smooth.view(batch, 2, size, size).permute(0, 2, 3, 1) * (2.0 * self.elastic_alpha / size)

    def _geometric(self, images: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        batch, device = images.shape[0], images.device
        use_crop = self.crop_scale != (1.0, 1.0) or self.crop_ratio != (1.0, 1.0)
        use_affine = self.degrees > 0.0 or self.translate > 0.0 or self.scale != (1.0, 1.0) or self.shear > 0.0
        use_elastic = self.elastic_alpha > 0.0
        if not (use_crop or use_affine or use_elastic):
            return images
        theta = torch.eye(3, device=device).expand(batch, 3, 3)
        if use_crop:
            theta = self._crop_matrices(batch, generator, device)
        if use_affine:
            # Crop first, then the affine jitter on the crop: compose the inverse maps.
            theta = theta @ self._inverse_affine_matrices(batch, generator, device)
        theta = theta[:, :2].to(images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        if use_elastic:
            grid = grid + self._elastic_displacement(batch, generator, device).to(grid.dtype)
        # A crop reaching the image edge samples up to half a pixel beyond the outer pixel centres: clamp there instead
        # of blending in zeros. Rotated or shifted content is filled with black, as torchvision's fill=0.
        padding = "zeros" if use_affine or use_elastic else "border"
        return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding, align_corners=False)

    def _colour_jitter(self, images: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        strengths = (self.brightness, self.contrast, self.saturation)
        if not (any(strengths) or self.hue):
            return images
        batch, device = images.shape[0], images.device
        applied = torch.rand(batch, generator=generator, device=device) < self.jitter_p
        factors = torch.stack(
            [
                self._uniform(max(0.0, 1.0 - strength), 1.0 + strength, (batch,), generator, device)
                for strength in strengths
            ]
        )  # (3, B); identity factor 1 for samples the jitter skips
        factors = torch.where(applied, factors, torch.ones_like(factors)).to(images.dtype)
        hue_shift = self._uniform(-self.hue, self.hue, (batch,), generator, device)
        hue_shift = torch.where(applied, hue_shift, torch.zeros_like(hue_shift)).to(images.dtype)
        # A random permutation of the four operations per sample.
        order = torch.rand(batch, _NUM_JITTER_OPS, generator=generator, device=device).argsort(dim=1)
        ones = torch.ones_like(factors[0])
        for step in range(_NUM_JITTER_OPS):
            operation = order[:, step]
            for op, strength in zip((_BRIGHTNESS, _CONTRAST, _SATURATION), strengths):
                if not strength:
                    continue
                factor = torch.where(operation == op, factors[op], ones).view(batch, 1, 1, 1)
                if op == _BRIGHTNESS:
                    reference = torch.zeros_like(images[:, :1])
                elif op == _CONTRAST:
                    reference = rgb_to_grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)
                else:
                    reference = rgb_to_grayscale(images)
                images = (factor * images + (1.0 - factor) * reference).clamp(0.0, 1.0)
            if self.hue:
                selected = (operation == _HUE) & (hue_shift != 0)
                hsv = _rgb_to_hsv(images)
                hsv = torch.cat((torch.remainder(hsv[:, :1] + hue_shift.view(batch, 1, 1, 1), 1.0), hsv[:, 1:]), dim=1)
                images = torch.where(selected.view(batch, 1, 1, 1), _hsv_to_rgb(hsv), images)
        return images

    def forward(self, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Augment a batch.

        Args:
            images: ``(B, C, H, W)`` float in ``[0, 1]``, ``C == channels``, ``H == W == image_size``.
            generator: source of every random parameter; must live on
                ``images.device``. ``None`` uses the global generator.

        Returns:
            ``(B, C, H, W)`` tensor of ``images.dtype`` with values in ``[0, 1]``.
        """
        check_tensor("images", images, ndim=4, floating=True)
        if images.shape[1] != self.channels or tuple(images.shape[2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"images must have shape (B, {self.channels}, {self.image_size}, {self.image_size}), "
                f"got {tuple(images.shape)}"
            )
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
            if torch.device(generator.device).type != images.device.type:
                raise ValueError(
                    f"generator must be on the images' device {images.device}, got a generator on {generator.device}"
                )
        if images.shape[0] == 0:
            return images.clone()
        dtype = images.dtype
        # Half precision would round the sampling grid to whole pixels on small images.
        work = images.float() if torch.finfo(dtype).bits < 32 else images
        batch, device = work.shape[0], work.device

        work = self._geometric(work, generator)
        if self.stroke_p:  # thicker (dilated) or thinner (squared) strokes, each with p / 2
            draw = torch.rand(batch, generator=generator, device=device)
            dilated = _dilate3x3(work)
            eroded = work.clamp(0.0, 1.0).square()
            work = torch.where((draw < self.stroke_p / 2).view(batch, 1, 1, 1), dilated, work)
            work = torch.where(
                ((draw >= self.stroke_p / 2) & (draw < self.stroke_p)).view(batch, 1, 1, 1), eroded, work
            )
        if self.flip_p:
            flip = torch.rand(batch, generator=generator, device=device) < self.flip_p
            work = torch.where(flip.view(batch, 1, 1, 1), work.flip(-1), work)
        work = self._colour_jitter(work, generator)
        if self.grayscale_p:
            grey = torch.rand(batch, generator=generator, device=device) < self.grayscale_p
            work = torch.where(grey.view(batch, 1, 1, 1), rgb_to_grayscale(work).expand_as(work), work)
        return work.clamp(0.0, 1.0).to(dtype)


# The keyword-only options of Augmentation (in order), which the presets and overrides set.
_OPTIONS = [p.name for p in inspect.signature(Augmentation.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY]


def build_augmentation(kind: str, image_size: int, channels: int, **overrides: Any) -> Augmentation:
    """Build one of the preset augmentations, optionally overriding options.

    Args:
        kind: ``"digits"``, ``"mnist"`` or ``"color"``; the values are in :data:`AUGMENTATION_PRESETS`.
        image_size: ``H = W`` of the images.
        channels: 1 or 3.
        **overrides: keyword arguments of :class:`Augmentation` replacing the preset's (``flip_p=0.0``).

    Raises:
        ValueError: unknown ``kind`` or an invalid option value.
        TypeError: an option that :class:`Augmentation` does not take.

    Example:
        >>> build_augmentation("mnist", 28, 1, degrees=5.0).degrees
        5.0
    """
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a str, got {kind!r} of type {type(kind).__name__}")
    if kind not in AUGMENTATION_PRESETS:
        raise ValueError(f"kind must be one of {', '.join(AUGMENTATION_KINDS)}, got {kind!r}")
    unknown = sorted(set(overrides) - set(_OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown augmentation option(s) {', '.join(map(repr, unknown))}; expected some of "
            f"{', '.join(sorted(_OPTIONS))}"
        )
    return Augmentation(image_size, channels, **{**AUGMENTATION_PRESETS[kind], **overrides})


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Per-channel standardisation ``(images - mean) / std``.

    Args:
        images: ``(B, C, H, W)`` floating-point tensor.
        mean: ``C`` channel means.
        std: ``C`` positive channel standard deviations.

    Returns:
        A new tensor of the same shape, dtype and device.

    Example:
        >>> normalize(torch.full((1, 1, 2, 2), 0.5), [0.25], [0.5])[0, 0, 0, 0].item()
        0.5
    """
    check_tensor("images", images, ndim=4, floating=True)
    channels = images.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"mean and std must have {channels} values (one per channel), got {list(mean)} and {list(std)}"
        )
    for index, value in enumerate(std):
        check_float(f"std[{index}]", value, minimum=0.0, strict_minimum=True)
    mean_t = torch.tensor([float(value) for value in mean], dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor([float(value) for value in std], dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t
