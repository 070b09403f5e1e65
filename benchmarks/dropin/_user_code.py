"""What a lightly user already has before adding ProPos: lightly's BYOL pieces and a data set.

lightly cannot be installed beside the CPU torch wheel on our CI machines, so
the pieces its BYOL example uses are mirrored here with lightly 1.6's layout and
semantics (``lightly.models.modules.BYOLProjectionHead``/``BYOLPredictionHead``,
``lightly.models.utils.deactivate_requires_grad``/``update_momentum``,
``lightly.utils.scheduler.cosine_schedule``, ``lightly.loss.NegativeCosineSimilarity``).
The data set is a map-style dataset of ``(image, label)`` items (torchvision's
shape); the two augmented views are made in the collate function, as lightly's
``MultiViewCollate``/collate-function API does, batched in plain torch.
Nothing here uses propos_losses except :func:`evaluate`, which scores the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from propos_losses import SphericalKMeans, evaluate_clustering
from propos_losses.train.augment import build_augmentation, normalize
from propos_losses.train.data import load_dataset
from propos_losses.train.models import build_backbone


# ----------------------------------------------------------------- lightly mirrors


class BYOLProjectionHead(nn.Sequential):
    """lightly's BYOLProjectionHead: Linear - BatchNorm1d - ReLU - Linear."""

    def __init__(self, input_dim: int = 2048, hidden_dim: int = 4096, output_dim: int = 256) -> None:
        super().__init__(
            nn.Linear(input_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, output_dim)
        )


class BYOLPredictionHead(BYOLProjectionHead):
    """lightly's BYOLPredictionHead (same layout)."""

    def __init__(self, input_dim: int = 256, hidden_dim: int = 4096, output_dim: int = 256) -> None:
        super().__init__(input_dim, hidden_dim, output_dim)


def deactivate_requires_grad(model: nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad = False


@torch.no_grad()
def update_momentum(model: nn.Module, model_ema: nn.Module, m: float) -> None:
    """lightly.models.utils.update_momentum: EMA of the parameters only (buffers untouched)."""
    for model_ema_param, model_param in zip(model_ema.parameters(), model.parameters()):
        model_ema_param.data = model_ema_param.data * m + model_param.data * (1.0 - m)


def cosine_schedule(step: int, max_steps: int, start_value: float, end_value: float) -> float:
    """lightly.utils.scheduler.cosine_schedule."""
    if max_steps == 1:
        return end_value
    return end_value - (end_value - start_value) * (math.cos(math.pi * step / (max_steps - 1)) + 1) / 2


class NegativeCosineSimilarity(nn.Module):
    """lightly.loss.NegativeCosineSimilarity: ``-cos(x0, x1)`` averaged over the batch."""

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        return -nn.functional.cosine_similarity(x0, x1, dim=1).mean()


# ----------------------------------------------------------------- the user's data


class ImageFolderLike(Dataset):
    """``(image, label)`` items, images as float tensors normalised per channel (a torchvision-style dataset)."""

    def __init__(self, images: Tensor, labels: Tensor, mean: Sequence[float], std: Sequence[float]) -> None:
        self.images = normalize(images.float() / 255.0, mean, std)
        self.labels = labels

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> Any:
        return self.images[index], int(self.labels[index])


class TwoViewCollate:
    """Collate ``(image, *rest)`` items into ``((view0, view1), *rest)``, augmenting the whole batch at once."""

    def __init__(self, augment: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        self.augment, self.mean, self.std = augment, mean, std

    def __call__(self, items: List[Any]) -> Any:
        images = torch.stack([item[0] for item in items])
        rest = default_collate([tuple(item[1:]) for item in items])
        # Augment in [0, 1] pixel space, then normalise again.
        pixels = images * torch.tensor(self.std).view(1, -1, 1, 1) + torch.tensor(self.mean).view(1, -1, 1, 1)
        views = tuple(normalize(self.augment(pixels).clamp(0, 1), self.mean, self.std) for _ in range(2))
        return (views, *rest)


@dataclass
class Setup:
    dataset: ImageFolderLike  # training items (image, label)
    collate: TwoViewCollate
    backbone: nn.Module
    feature_dim: int
    num_classes: int
    epochs: int
    batch_size: int
    lr: float
    hidden_dim: int = 512
    out_dim: int = 64


def make_setup(name: str, data_dir: Optional[str], max_samples: Optional[int], seed: int) -> Setup:
    """The user's data, backbone and recipe: ``digits`` (1,797 8x8) or ``mnist`` (first ``max_samples``)."""
    torch.manual_seed(seed)
    data = load_dataset(name, data_dir, max_samples=max_samples)
    scaled = data.images.float() / 255.0
    mean = scaled.mean(dim=(0, 2, 3)).tolist()
    std = scaled.std(dim=(0, 2, 3)).tolist()
    size = int(data.images.shape[-1])
    backbone, feature_dim = build_backbone("small_cnn" if name == "digits" else "flat_cnn", 1, size)
    augment = build_augmentation(name, size, 1)
    dataset = ImageFolderLike(data.images, data.labels, mean, std)
    if name == "digits":
        return Setup(dataset, TwoViewCollate(augment, mean, std), backbone, feature_dim, int(data.num_classes),
                     epochs=60, batch_size=32, lr=0.05)
    return Setup(dataset, TwoViewCollate(augment, mean, std), backbone, feature_dim, int(data.num_classes),
                 epochs=15, batch_size=128, lr=0.05)


@torch.no_grad()
def evaluate(backbone: nn.Module, projection_head: nn.Module, dataset: ImageFolderLike, num_classes: int, seed: int) -> dict:
    """k-means (10 restarts) on target backbone and projector features of the un-augmented data; NMI/ACC/ARI."""
    backbone.eval()
    projection_head.eval()
    features = torch.cat([backbone(x).flatten(1) for x in dataset.images.split(512)])
    projections = torch.cat([projection_head(f) for f in features.split(512)])
    out = {}
    for name, values in (("backbone", features), ("projector", projections)):
        labels = SphericalKMeans(num_classes, n_init=10, random_state=seed).fit_predict(values)
        out.update({f"{name}_{k}": v for k, v in evaluate_clustering(dataset.labels, labels).items()})
    return out
