"""Data-set helpers for the E-step: sample indices and whole-data-set features.

ProPos indexes its pseudo-labels by sample, so the training loader must say
which samples a batch holds (:class:`WithIndex`), and the E-step needs the
target network's features of every un-augmented sample, in data-set order
(:func:`extract_features`). Both work with any map-style dataset, e.g.
torchvision's or lightly's, and with a plain tensor of inputs.
"""

from __future__ import annotations

from typing import Any, Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    SequentialSampler,
)

from propos_losses._validation import check_int
from propos_losses.distributed import all_gather_cat, check_on_every_rank, dtype_code, is_distributed

__all__ = ["WithIndex", "extract_features"]


def _check_map_style(name: str, dataset: object) -> None:
    if isinstance(dataset, IterableDataset):
        raise TypeError(
            f"{name} must be a map-style dataset (with __getitem__ and __len__), got the iterable-style "
            f"{type(dataset).__name__}, whose items have no stable index"
        )
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise TypeError(
            f"{name} must be a map-style dataset (with __getitem__ and __len__), got {type(dataset).__name__}"
        )


class WithIndex(Dataset[Any]):
    """A map-style dataset whose items also carry their index.

    Item ``i`` of the wrapped dataset becomes ``(*item, i)`` when the item is
    a tuple or list (torchvision and lightly datasets give ``(image, target)``,
    so ``(image, target, i)``), and ``(item, i)`` otherwise. The default
    ``DataLoader`` collation turns the index into an int64 tensor ``(B,)``:
    the sample indices that :class:`~propos_losses.PSL` and
    :class:`~propos_losses.ProPosLoss` use to look up pseudo-labels. The
    wrapper holds nothing but the dataset, so it pickles for ``DataLoader``
    workers whenever the dataset does.

    Args:
        dataset: a map-style dataset (``__getitem__`` and ``__len__``).

    Raises:
        TypeError: an iterable-style dataset or an object without
            ``__getitem__``/``__len__``.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> data = WithIndex(TensorDataset(torch.randn(6, 3), torch.arange(6) % 2))
        >>> x, y, index = data[4]
        >>> int(index)
        4
        >>> x, y, indices = next(iter(DataLoader(data, batch_size=4, shuffle=True)))
        >>> indices.dtype, indices.shape
        (torch.int64, torch.Size([4]))
    """

    def __init__(self, dataset: Dataset[Any]) -> None:
        _check_map_style("dataset", dataset)
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Tuple[Any, ...]:
        item = self.dataset[index]
        if isinstance(item, (tuple, list)):
            return (*item, index)
        return (item, index)

    def __repr__(self) -> str:
        return f"WithIndex({self.dataset!r})"


def _input_of(batch: Any) -> Tensor:
    """The model input of a batch: the batch itself, or the first element of a tuple/list batch."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("data yielded an empty batch tuple; expected (inputs, ...) or inputs")
        batch = batch[0]
    if not isinstance(batch, Tensor):
        raise TypeError(
            f"data must yield tensors or tuples whose first element is a tensor (the model input), "
            f"got {type(batch).__name__}"
        )
    return batch


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for buffer in module.buffers():
        return buffer.device
    return torch.device("cpu")


def _batches(
    data: Union[Tensor, Dataset[Any], DataLoader[Any]], batch_size: int
) -> Tuple[Iterator[Any], int, Optional[Tensor]]:
    """Batches of ``data``, its number of samples, and (for a DistributedSampler) this rank's sample indices."""
    if isinstance(data, Tensor):
        if data.dim() < 1 or data.shape[0] < 1:
            raise ValueError(f"data must be a tensor (N, ...) with N >= 1, got shape {tuple(data.shape)}")
        return iter(torch.split(data, batch_size)), int(data.shape[0]), None
    if isinstance(data, DataLoader):
        _check_map_style("data.dataset", data.dataset)
        sampler = data.sampler
        n = len(data.dataset)  # type: ignore[arg-type]
        if isinstance(sampler, DistributedSampler):
            # Deterministic for a given epoch: the same order the loader is about to use.
            indices = torch.tensor(list(iter(sampler)), dtype=torch.int64)
            return iter(data), n, indices
        batch_sampler = data.batch_sampler
        in_order = isinstance(sampler, SequentialSampler) and (
            # A custom batch_sampler replaces `sampler`: only a BatchSampler over a SequentialSampler keeps order.
            isinstance(batch_sampler, BatchSampler) and isinstance(batch_sampler.sampler, SequentialSampler)
        )
        if not in_order:
            used = batch_sampler.sampler if isinstance(batch_sampler, BatchSampler) else batch_sampler
            raise ValueError(
                f"data must be a DataLoader that visits the data set in order (shuffle=False) or uses a "
                f"DistributedSampler, got one with {type(used).__name__}; features come back in data-set order"
            )
        return iter(data), n, None
    _check_map_style("data", data)
    n = len(data)  # type: ignore[arg-type]
    # A private generator: iterating a DataLoader draws its base seed from it, not from the user's global RNG.
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    return iter(loader), n, None


@torch.no_grad()
def extract_features(
    module: nn.Module,
    data: Union[Tensor, Dataset[Any], DataLoader[Any]],
    *,
    batch_size: int = 256,
    device: Optional[Union[str, torch.device]] = None,
) -> Any:
    """Features of every sample of ``data``, in data-set order, for the E-step or an evaluation.

    ``module`` runs in eval mode (BatchNorm running statistics, no dropout)
    and under ``torch.no_grad``; afterwards every submodule is back in the
    mode it was in, also when an error is raised.

    Args:
        module: maps a batch of inputs ``(B, ...)`` to features; its output is
            flattened to ``(B, d)`` (a backbone's ``(B, C, 1, 1)`` included).
            It may also return a tuple of such outputs (e.g. backbone
            features and projections in one pass); the result is then the
            tuple of their feature tensors.
            E.g. the target network, or ``nn.Sequential(backbone_momentum,
            nn.Flatten(), projection_head_momentum)`` for a lightly model.
        data: the un-augmented inputs: a tensor ``(N, ...)``, a map-style
            ``Dataset`` whose items are inputs or tuples ``(input, ...)``
            (e.g. ``(image, target)``), or a ``DataLoader`` over such a
            dataset with ``shuffle=False`` or a ``DistributedSampler``.
        batch_size: samples per forward pass (tensor and dataset input; a
            ``DataLoader`` keeps its own), ``>= 1``.
        device: where the inputs go and the features are returned; ``None``:
            the device of ``module``'s first parameter (CPU without one).

    Returns:
        ``(N, d)`` features of ``module``'s output dtype on ``device``, row
        ``i`` for sample ``i`` (a tuple of them for a tuple output). Under ``torch.distributed`` with a
        ``DataLoader`` over a ``DistributedSampler``, each rank computes its
        shard and every rank receives all ``N`` rows, gathered in index order
        (the sampler's padding duplicates are dropped); without a
        ``DistributedSampler`` every rank computes all ``N`` rows itself.

    Raises:
        TypeError: ``module`` not an ``nn.Module``; ``data`` not a tensor,
            map-style dataset or ``DataLoader``; items without a tensor input;
            a module output that is not a tensor.
        ValueError: a shuffling ``DataLoader``, an empty data set, outputs of
            the wrong batch size or of changing feature size.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        >>> features = extract_features(net, torch.randn(10, 3), batch_size=4)
        >>> features.shape, net.training
        (torch.Size([10, 4]), True)
        >>> class TwoOutputs(torch.nn.Module):
        ...     def forward(self, x):
        ...         return x, 2 * x
        >>> [tuple(f.shape) for f in extract_features(TwoOutputs(), torch.randn(10, 3))]
        [(10, 3), (10, 3)]
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if not isinstance(data, (Tensor, Dataset, DataLoader)):
        raise TypeError(f"data must be a torch.Tensor, a map-style Dataset or a DataLoader, got {type(data).__name__}")
    target_device = _module_device(module) if device is None else torch.device(device)
    batches, n, shard_indices = _batches(data, batch_size)
    if n < 1:
        raise ValueError("data must hold at least one sample, got an empty data set")

    modes = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        chunks: List[Tuple[Tensor, ...]] = []
        single = True
        for batch in batches:
            inputs = _input_of(batch).to(target_device, non_blocking=True)
            output = module(inputs)
            single = isinstance(output, Tensor)
            outputs = _output_rows(output, inputs.shape[0])
            if chunks and [o.shape[1] for o in outputs] != [c.shape[1] for c in chunks[0]]:
                raise ValueError(
                    f"module returned features of size {[o.shape[1] for o in outputs]} after "
                    f"{[c.shape[1] for c in chunks[0]]}; it must return the same feature size for every batch"
                )
            chunks.append(outputs)
    finally:
        for sub, mode in modes:
            sub.training = mode
    results = []
    for parts in zip(*chunks):
        features = torch.cat(parts)
        if shard_indices is None:
            if features.shape[0] != n:
                raise ValueError(f"data yielded {features.shape[0]} samples, but its data set has {n}")
            results.append(features)
        else:
            results.append(_gather_in_index_order(features, shard_indices.to(features.device), n))
    return results[0] if single else tuple(results)


def _output_rows(output: object, batch_size: int) -> Tuple[Tensor, ...]:
    """A module's output as a tuple of ``(B, d)`` tensors (a tensor, or a tuple/list of tensors)."""
    outputs = tuple(output) if isinstance(output, (tuple, list)) else (output,)
    if not outputs or not all(isinstance(o, Tensor) for o in outputs):
        raise TypeError(
            f"module must return a tensor or a tuple of tensors, got {type(output).__name__}"
            + (f" of {[type(o).__name__ for o in outputs]}" if isinstance(output, (tuple, list)) else "")
        )
    rows = []
    for o in outputs:
        if o.dim() < 1 or o.shape[0] != batch_size:
            raise ValueError(
                f"module must return one feature row per input, got output shape {tuple(o.shape)} "
                f"for {batch_size} inputs"
            )
        rows.append(o.reshape(o.shape[0], -1))
    return tuple(rows)


def _gather_in_index_order(features: Tensor, indices: Tensor, n: int) -> Tensor:
    """All ranks' ``(n_r, d)`` features placed at their sample indices: ``(n, d)`` on every rank."""
    if indices.shape[0] != features.shape[0]:
        raise ValueError(
            f"the DistributedSampler gave {indices.shape[0]} indices but the loader yielded {features.shape[0]} samples "
            "(drop_last=True on the DataLoader is not supported here)"
        )
    if is_distributed():
        # The module's output width must agree: every rank raises the same error rather than the gather failing.
        check_on_every_rank(
            lambda: None,
            what="extract_features",
            device=features.device,
            agree={"feature size": features.shape[1], "dtype": dtype_code(features.dtype)},
        )
        features = all_gather_cat(features)
        indices = all_gather_cat(indices)
    out = features.new_zeros((n, features.shape[1]))
    seen = torch.zeros(n, dtype=torch.bool, device=features.device)
    out[indices] = features  # padding duplicates repeat a sample; its rows are equal
    seen[indices] = True
    if not bool(seen.all()):
        missing = int((~seen).sum())
        raise ValueError(f"{missing} samples were not visited by any rank's DistributedSampler")
    return out
