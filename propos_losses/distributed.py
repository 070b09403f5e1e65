"""The only place that talks to :mod:`torch.distributed`.

Every module of the package goes through these helpers, which behave as the
identity (or the single-process equivalent) when no process group is
initialised, so nothing here ever requires ``torch.distributed`` to be set up.

Gradient contract: :func:`all_reduce_sum` is differentiable and its backward
all-reduces (sums) the incoming gradients. Every rank that computes a loss from
the reduced value therefore receives ``world_size`` times its share, and after
DDP's gradient *averaging* the gradient on every rank equals the
single-process gradient on the concatenated global batch.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from typing import Any, Callable, Iterator, List, Mapping, Optional, Tuple, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from propos_losses._validation import check_bool

__all__ = [
    "is_distributed",
    "local_only",
    "get_world_size",
    "get_rank",
    "all_reduce_sum",
    "all_reduce_sum_",
    "all_reduce_max_",
    "all_gather_cat",
    "all_gather_cat_equal",
    "all_gather_cat_autograd",
    "broadcast_",
    "check_on_every_rank",
    "dtype_code",
    "collective_device",
    "any_rank",
    "barrier",
    "broadcast_text",
    "init_from_torchrun",
    "destroy_process_group",
]

ProcessGroup = Any  # torch.distributed.ProcessGroup; kept loose for typing across versions


# Depth of nested local_only() contexts: collectives are skipped while it is positive. A plain
# module-level int (not a ContextVar, which torch.compile cannot trace); local_only is process-wide.
_local_only_depth = 0


def is_distributed(group: Optional[ProcessGroup] = None) -> bool:
    """``True`` when a process group is initialised, has more than one rank and :func:`local_only` is not active."""
    if _local_only_depth > 0:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Run the package's computations on this process alone, even inside a process group.

    Inside the context every helper here behaves as without a process group
    (no collective is issued), so e.g. a k-means called on rank 0 only does not
    wait for the other ranks. The switch is process-wide (all threads).
    """
    global _local_only_depth
    _local_only_depth += 1
    try:
        yield
    finally:
        _local_only_depth -= 1


def get_world_size(group: Optional[ProcessGroup] = None) -> int:
    """World size, 1 without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


def get_rank(group: Optional[ProcessGroup] = None) -> int:
    """Rank of this process, 0 without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group)
    return 0


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: Optional[ProcessGroup]) -> Tensor:
        ctx.group = group
        out = tensor.detach().clone().contiguous()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tuple[Tensor, None]:
        grad = grad_output.detach().clone().contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def all_reduce_sum(tensor: Tensor, group: Optional[ProcessGroup] = None) -> Tensor:
    """Differentiable sum over ranks; returns ``tensor`` itself without a process group.

    Args:
        tensor: any shape; the same shape and dtype on every rank.
        group: process group, the default group when ``None``.

    Returns:
        The element-wise sum of ``tensor`` over all ranks, a new tensor that
        carries gradient: its backward sums the incoming gradients over ranks.
    """
    return _apply_across_ranks(_AllReduceSum, tensor, group)


def _apply_across_ranks(function: Any, tensor: Tensor, group: Optional[ProcessGroup]) -> Tensor:
    """``function.apply(tensor, group)`` (a collective autograd function) or, without a process group, ``tensor``."""
    if not is_distributed(group):
        return tensor
    result: Tensor = function.apply(tensor, group)
    return result


def _all_reduce_(tensor: Tensor, op: Any, group: Optional[ProcessGroup]) -> Tensor:
    if is_distributed(group):
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


def all_reduce_sum_(tensor: Tensor, group: Optional[ProcessGroup] = None) -> Tensor:
    """In-place, gradient-free sum over ranks (for counts and statistics)."""
    return _all_reduce_(tensor, dist.ReduceOp.SUM, group)


def broadcast_(tensor: Tensor, src: int = 0, group: Optional[ProcessGroup] = None) -> Tensor:
    """In-place broadcast from ``src``; a no-op without a process group."""
    if is_distributed(group):
        dist.broadcast(tensor, src=src, group=group)
    return tensor


# Trailing sizes exchanged one by one before a gather; any further ones are folded into one checksum.
_HEADER_DIMS = 6


def _dtype_id(dtype: torch.dtype) -> int:
    """A number naming ``dtype`` that is the same in every process (a checksum of its name)."""
    return zlib.crc32(str(dtype).encode("ascii")) & 0x7FFFFFFF


def _dtype_name(dtype_id: int) -> str:
    for value in vars(torch).values():
        if isinstance(value, torch.dtype) and _dtype_id(value) == dtype_id:
            return str(value)
    return f"dtype #{dtype_id}"


def _header(tensor: Tensor) -> List[int]:
    """``[rows, dtype id, ndim, trailing sizes (padded with -1), checksum of any further sizes]``; rows -1 for 0-d."""
    trailing = list(tensor.shape[1:])
    extra = trailing[_HEADER_DIMS:]
    padded = trailing[:_HEADER_DIMS] + [-1] * (_HEADER_DIMS - len(trailing[:_HEADER_DIMS]))
    fold = zlib.crc32(repr(extra).encode("ascii")) if extra else -1
    rows = tensor.shape[0] if tensor.dim() else -1
    return [rows, _dtype_id(tensor.dtype), tensor.dim()] + padded + [fold]


def _gather_sizes(tensor: Tensor, group: Optional[ProcessGroup], what: str = "all_gather_cat") -> List[int]:
    """Every rank's row count, after checking that dtype and trailing shape agree on every rank.

    One ``all_gather`` of a few integers per rank (one host sync), before the
    real gather: with a dtype or trailing shape that differs between ranks the
    gather itself would abort the process (gloo), hang (NCCL) or, for dtypes
    of different widths, hand one rank a tensor of the wrong shape. All ranks
    receive the same headers and therefore raise the same error.
    """
    header = torch.tensor(_header(tensor), dtype=torch.int64, device=tensor.device)
    headers = [torch.zeros_like(header) for _ in range(get_world_size(group))]
    dist.all_gather(headers, header, group=group)
    rows = [h.tolist() for h in headers]
    zero_dim = [rank for rank, h in enumerate(rows) if h[0] < 0]
    if zero_dim:
        raise ValueError(f"{what} needs tensors of at least one dimension, got a 0-d tensor on rank(s) {zero_dim}")
    if any(h[1:] != rows[0][1:] for h in rows):
        shapes = "; ".join(
            f"rank {rank}: {_dtype_name(h[1])}, trailing shape "
            f"{tuple(size for size in h[3 : 3 + min(h[2] - 1, _HEADER_DIMS)])}"
            f"{' + more' if h[2] - 1 > _HEADER_DIMS else ''}"
            for rank, h in enumerate(rows)
        )
        raise ValueError(
            f"{what}: the tensors differ between ranks ({shapes}); every rank must pass the same dtype and "
            "the same trailing shape (all sizes but the first); nothing was gathered"
        )
    return [h[0] for h in rows]


def _all_gather_padded(tensor: Tensor, sizes: List[int], group: Optional[ProcessGroup]) -> List[Tensor]:
    max_n = max(sizes)
    padded = tensor.new_zeros((max_n,) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    chunks = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(chunks, padded.contiguous(), group=group)
    return [c[:n] for c, n in zip(chunks, sizes)]


def all_gather_cat(tensor: Tensor, group: Optional[ProcessGroup] = None) -> Tensor:
    """Concatenate ``tensor`` from every rank in rank order, without gradient.

    The first dimension may differ between ranks; the other dimensions and the
    dtype must agree. One small ``all_gather`` of every rank's row count,
    dtype and trailing shape runs first (one host sync), so a mismatch makes
    every rank raise the same :class:`ValueError` instead of aborting (gloo)
    or hanging (NCCL) in the gather. Without a process group, returns
    ``tensor`` unchanged.

    Args:
        tensor: ``(n_r, ...)`` on rank ``r``, at least 1-D.

    Returns:
        ``(sum_r n_r, ...)``, identical on every rank.

    Raises:
        ValueError: on every rank, when the dtype or the trailing shape
            differs between ranks or a rank passes a 0-d tensor.
    """
    if not is_distributed(group):
        return tensor
    tensor = tensor.detach()
    sizes = _gather_sizes(tensor, group)
    return torch.cat(_all_gather_padded(tensor, sizes, group), dim=0)


def all_gather_cat_equal(tensor: Tensor, group: Optional[ProcessGroup] = None) -> Tensor:
    """:func:`all_gather_cat` for ranks that all hold the same number of rows: no size exchange, no host sync.

    One ``all_gather`` of equal shapes, so nothing is read back to the host and
    ``torch.compile`` traces it without a graph break. Every rank must pass the
    same shape; with different row counts the backend fails (gloo raises, NCCL
    may hang), and nothing checks that dtypes and trailing shapes agree (a
    mismatch aborts the process under gloo); use :func:`all_gather_cat`, which
    checks all of it on every rank, when batches can be uneven or ranks may
    disagree.
    Without a process group, returns ``tensor`` unchanged.

    Args:
        tensor: ``(n, ...)``, the same shape on every rank.

    Returns:
        ``(world_size * n, ...)`` in rank order, without gradient, identical on every rank.

    Example:
        >>> import torch
        >>> all_gather_cat_equal(torch.arange(3)).tolist()  # no process group
        [0, 1, 2]
    """
    if not is_distributed(group):
        return tensor
    tensor = tensor.detach().contiguous()
    chunks = [torch.empty_like(tensor) for _ in range(get_world_size(group))]
    dist.all_gather(chunks, tensor, group=group)
    return torch.cat(chunks, dim=0)


class _AllGatherCat(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: Optional[ProcessGroup]) -> Tensor:
        sizes = _gather_sizes(tensor, group, "all_gather_cat_autograd")
        rank = get_rank(group)
        ctx.group = group
        ctx.start = sum(sizes[:rank])
        ctx.stop = ctx.start + sizes[rank]
        return torch.cat(_all_gather_padded(tensor.detach(), sizes, group), dim=0)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tuple[Tensor, None]:
        grad = grad_output.detach().clone().contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.start : ctx.stop], None


def all_gather_cat_autograd(tensor: Tensor, group: Optional[ProcessGroup] = None) -> Tensor:
    """Differentiable :func:`all_gather_cat`.

    The backward sums the gradient of the gathered tensor over ranks and
    returns this rank's slice, so, as for :func:`all_reduce_sum`, DDP's
    gradient averaging yields the single-process gradient of the global batch
    (no ``1 / world_size`` scaling, unlike a gather whose backward keeps only
    the local slice).

    Raises:
        ValueError: on every rank, as :func:`all_gather_cat`, when the dtype or
            the trailing shape differs between ranks.
    """
    return _apply_across_ranks(_AllGatherCat, tensor, group)


def all_reduce_max_(tensor: Tensor, group: Optional[ProcessGroup] = None) -> Tensor:
    """In-place, gradient-free element-wise maximum over ranks; a no-op without a process group."""
    return _all_reduce_(tensor, dist.ReduceOp.MAX, group)


_T = TypeVar("_T")

# Dtypes compared between ranks by check_on_every_rank; anything else is code -1 (rejected locally anyway).
_DTYPE_CODES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def dtype_code(value: object) -> int:
    """A small integer naming ``value``'s floating dtype, for :func:`check_on_every_rank`; -1 if none."""
    dtype = getattr(value, "dtype", None)
    return _DTYPE_CODES.index(dtype) if dtype in _DTYPE_CODES else -1


def check_on_every_rank(
    check: Callable[[], _T],
    *,
    what: str,
    device: Optional[torch.device] = None,
    agree: Optional[Mapping[str, int]] = None,
    group: Optional[ProcessGroup] = None,
) -> _T:
    """Run local input checks so that, under ``torch.distributed``, every rank raises or none does.

    Local checks alone are not enough with a process group: a rank with bad
    input would raise by itself and leave the others blocked in the next
    collective, and inputs whose shapes differ between ranks (e.g. the feature
    size) make the collective itself abort the process (gloo) or hang (NCCL).
    Here one small all-reduce (a maximum over ``1 + 2 * len(agree)`` integers,
    one host sync) tells every rank whether any rank failed and whether each
    value of ``agree`` is the same everywhere.

    Args:
        check: the local checks; raises :class:`TypeError`/:class:`ValueError`
            on bad input. Its return value is returned.
        what: names the operation in the messages, e.g. ``"PSL"``.
        device: where the flag tensor lives (a CUDA device for NCCL).
        agree: named integers that must be equal on every rank (feature
            size, a :func:`dtype_code`, ...); use ``-1`` for "unknown" when
            the local input is too malformed to tell (the local check then
            fails and its error wins).
        group: process group, the default group when ``None``.

    Raises:
        TypeError, ValueError: this rank's own error; or, on a rank whose input
            was fine, a :class:`ValueError` saying that another rank failed or
            which ``agree`` value differs between ranks (with its range).

    Example:
        >>> import torch
        >>> x = torch.randn(4, 3)
        >>> check_on_every_rank(lambda: None, what="example", agree={"feature size": x.shape[1]})
    """
    error: Optional[Exception] = None
    result: Optional[_T] = None
    try:
        result = check()
    except (TypeError, ValueError) as exc:
        error = exc
    if is_distributed(group):
        items = list((agree or {}).items())
        flags = [0 if error is None else 1]
        for _, value in items:
            flags += [int(value), -int(value)]
        flag = torch.tensor(flags, dtype=torch.int64, device=device if device is not None else torch.device("cpu"))
        all_reduce_max_(flag, group)
        host = flag.tolist()
        if error is None and host[0] > 0:
            raise ValueError(f"{what} received bad input on another rank (see that rank's error); nothing was changed")
        if error is None:
            for i, (name, _) in enumerate(items):
                high, low = host[1 + 2 * i], -host[2 + 2 * i]
                if high != low:
                    raise ValueError(
                        f"{what}: {name} differs between ranks (from {low} to {high}); it must be the same on every rank"
                    )
    if error is not None:
        raise error
    return result  # type: ignore[return-value]


# ---------------------------------------------------------------- process-group lifetime and small messages


def collective_device(group: Optional[ProcessGroup] = None) -> torch.device:
    """Where tensors for a collective must live: this process's CUDA device under NCCL, else the CPU.

    NCCL reduces only CUDA tensors; gloo (and no process group at all) takes CPU tensors.

    Example:
        >>> collective_device()  # no process group
        device(type='cpu')
    """
    if dist.is_available() and dist.is_initialized() and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool, *, group: Optional[ProcessGroup] = None) -> bool:
    """Whether ``flag`` is true on any rank (one small all-reduce); ``flag`` itself without a process group.

    Example:
        >>> any_rank(False), any_rank(True)
        (False, True)
    """
    check_bool("flag", flag)
    if not is_distributed(group):
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int64, device=collective_device(group))
    all_reduce_max_(value, group)
    return bool(value.item())


def barrier(group: Optional[ProcessGroup] = None) -> None:
    """Wait until every rank gets here (an all-reduce of one number); a no-op without a process group."""
    if is_distributed(group):
        all_reduce_sum_(torch.zeros(1, device=collective_device(group)), group)


def broadcast_text(text: str, src: int = 0, group: Optional[ProcessGroup] = None) -> str:
    """Rank ``src``'s ``text`` on every rank (UTF-8 bytes, length first); ``text`` without a process group.

    Example:
        >>> broadcast_text("run-1")
        'run-1'
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not is_distributed(group):
        return text
    device = collective_device(group)
    data = text.encode("utf-8")
    length = torch.tensor([len(data)], dtype=torch.int64, device=device)
    broadcast_(length, src, group)
    if get_rank(group) == src:
        buffer = torch.tensor(list(data), dtype=torch.uint8, device=device)
    else:
        buffer = torch.zeros(int(length.item()), dtype=torch.uint8, device=device)
    broadcast_(buffer, src, group)
    return bytes(buffer.cpu().tolist()).decode("utf-8")


def init_from_torchrun(use_cuda: bool) -> bool:
    """Join the process group that ``torchrun`` describes in the environment; returns whether it did.

    Does nothing (returns ``False``) for a single process (``WORLD_SIZE`` unset
    or 1) or when a process group already exists. With ``use_cuda`` the
    process takes CUDA device ``LOCAL_RANK`` and the NCCL backend; gloo otherwise.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True


def destroy_process_group() -> None:
    """Leave and destroy the default process group (a no-op when there is none).

    After a successful run, call :func:`barrier` first so that every rank leaves
    together (as ``propos-train`` does): on torch 2.4 a gloo rank whose peer had
    already destroyed the group sometimes hung in its own destroy. After an error
    do not wait, since the other ranks may never arrive.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
