"""The parameters of the k-means: their types, the public :class:`KMeansParams` and the checked :class:`Settings`.

The keyword parameters are spelled out in three places, each needed: the signature of
:class:`~propos_losses.kmeans.SphericalKMeans` (scikit-learn's ``get_params`` reads it; it also holds the
defaults), :class:`KMeansParams` (the typed ``**params`` of
:func:`~propos_losses.kmeans.spherical_kmeans`), and :class:`Settings`, the checked values that one fit
passes down. :meth:`Settings.from_params` is the only place they are checked.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch
from torch import Tensor
from typing_extensions import TypedDict

from propos_losses._validation import check_float, check_int
from propos_losses.distributed import broadcast_, is_distributed

__all__ = [
    "RandomStateLike",
    "InitLike",
    "SampleSize",
    "AUTO_SAMPLE_SIZE",
    "SEED_BOUND",
    "KMeansParams",
    "Settings",
    "check_random_state",
    "draw_seed",
]

RandomStateLike = Union[None, int, np.random.RandomState, np.random.Generator]
InitLike = Union[str, Tensor, np.ndarray]
SampleSize = Union[int, str, None]

#: Default of ``sample_size``: the restarts run on ``auto_sample_size(K)`` rows (``_init.py``).
AUTO_SAMPLE_SIZE: str = "auto"

_INIT_METHODS = ("k-means++", "random")
SEED_BOUND = 2**63 - 1  # torch.Generator.manual_seed accepts seeds below 2**64


class KMeansParams(TypedDict, total=False):
    """The keyword parameters of :class:`SphericalKMeans`, all optional, for :func:`spherical_kmeans`.

    A typed ``**params`` for code that passes k-means settings on (as the
    reference trainer does). ``seed`` is the deprecated alias of
    ``random_state`` (a :class:`FutureWarning`; removed in 0.3).

    Example:
        >>> from propos_losses.kmeans import SphericalKMeans
        >>> params: KMeansParams = {"n_init": 1, "random_state": 0}
        >>> SphericalKMeans(3, **params).n_init
        1
    """

    n_init: int
    max_iter: int
    tol: float
    random_state: RandomStateLike
    init: InitLike
    chunk_size: Optional[int]
    verbose: bool
    sample_size: SampleSize
    distributed: Optional[bool]
    seed: Optional[int]


@dataclass(frozen=True, eq=False)
class Settings:
    """The parameters of one fit, checked and converted once (:meth:`from_params`), then passed down.

    ``random_state`` holds the deprecated ``seed`` when that was given. The Lloyd loops read
    ``max_iter``, ``tol``, ``chunk_size`` and ``verbose``; the driver gives them a copy with its own
    budget and stopping tolerance (``dataclasses.replace``).
    """

    n_clusters: int
    n_init: int
    max_iter: int
    tol: float
    random_state: RandomStateLike
    init: InitLike
    chunk_size: Optional[int]
    verbose: bool
    sample_size: SampleSize
    distributed: Optional[bool]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "Settings":
        """Check the parameters of :class:`~propos_losses.kmeans.SphericalKMeans` (its ``get_params()``).

        Raises the ``ValueError``/``TypeError`` that names the first bad parameter and its value
        (in a fixed order: ``n_clusters``, ``sample_size``, ``n_init``, ``max_iter``, ``tol``,
        ``random_state``, ``seed``, ``chunk_size``, ``verbose``, ``init``, ``distributed``).
        """
        n_clusters = check_int("n_clusters", params["n_clusters"], minimum=1)
        sample_size = params["sample_size"]
        if isinstance(sample_size, str):
            if sample_size != AUTO_SAMPLE_SIZE:
                raise ValueError(f"sample_size must be 'auto', None or an int >= n_clusters, got {sample_size!r}")
        elif sample_size is not None:
            sample_size = check_int("sample_size", sample_size, minimum=1)
            if sample_size < n_clusters:
                raise ValueError(f"sample_size must be >= n_clusters={n_clusters}, got {sample_size}")
        n_init = check_int("n_init", params["n_init"], minimum=1)
        max_iter = check_int("max_iter", params["max_iter"], minimum=1)
        tol = check_float("tol", params["tol"], minimum=0.0)
        random_state = params["random_state"]
        check_random_state("random_state", random_state)
        seed = params["seed"]
        if seed is not None:
            random_state = _check_seed(seed, random_state)
        chunk_size = params["chunk_size"]
        if chunk_size is not None:
            chunk_size = check_int("chunk_size", chunk_size, minimum=1)
        verbose = params["verbose"]
        if not isinstance(verbose, bool):
            raise TypeError(f"verbose must be a bool, got {verbose!r}")
        init = params["init"]
        if isinstance(init, str):
            if init not in _INIT_METHODS:
                raise ValueError(f"init must be one of {_INIT_METHODS} or an array of centres, got {init!r}")
        elif not isinstance(init, (Tensor, np.ndarray)):
            raise TypeError(f"init must be a string, a torch.Tensor or a numpy.ndarray, got {type(init).__name__}")
        distributed = params["distributed"]
        if distributed is not None and not isinstance(distributed, bool):
            raise TypeError(f"distributed must be None, True or False, got {distributed!r}")
        if distributed is True and not is_distributed():
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process group with more than one rank; "
                "use distributed=None to follow the process group when there is one"
            )
        return cls(
            n_clusters=n_clusters,
            n_init=n_init,
            max_iter=max_iter,
            tol=tol,
            random_state=random_state,
            init=init,
            chunk_size=chunk_size,
            verbose=verbose,
            sample_size=sample_size,
            distributed=distributed,
        )


def check_random_state(name: str, random_state: object) -> None:
    """``None``, an int in ``[0, 2**63 - 1]``, a ``numpy.random.RandomState`` or a ``numpy.random.Generator``."""
    if random_state is None:
        return
    if isinstance(random_state, (np.random.RandomState, np.random.Generator)):
        return
    if isinstance(random_state, bool) or not isinstance(random_state, numbers.Integral):
        raise ValueError(
            f"{name}={random_state!r} cannot be used to seed the k-means: use None, an int, "
            f"a numpy.random.RandomState or a numpy.random.Generator"
        )
    if not 0 <= int(random_state) <= SEED_BOUND:
        raise ValueError(f"{name} must be an int in [0, {SEED_BOUND}], got {random_state}")


def _check_seed(seed: object, random_state: object) -> int:
    """The deprecated ``seed`` (not ``None``) as the int ``random_state`` it stands for; checked.

    ``seed`` must be an int in ``[0, 2**63 - 1]`` and ``random_state`` must be ``None``.
    """
    check_random_state("seed", seed)
    if not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed (deprecated) must be None or an int, got {seed!r}; use random_state")
    if random_state is not None:
        raise ValueError(
            f"got random_state={random_state!r} and its deprecated alias seed={seed!r}: pass random_state only"
        )
    return int(seed)


def draw_seed(random_state: RandomStateLike, device: torch.device) -> int:
    """The seed of this fit's generator, identical on every rank.

    An int is the seed itself; a ``RandomState``/``Generator`` (``None``: NumPy's
    global ``RandomState``, as scikit-learn's ``check_random_state``) gives one
    draw, so successive fits with the same object differ. Under
    ``torch.distributed`` rank 0's draw is used everywhere.
    """
    if isinstance(random_state, np.random.Generator):
        drawn = int(random_state.integers(0, SEED_BOUND))
    elif isinstance(random_state, np.random.RandomState) or random_state is None:
        source = np.random.mtrand._rand if random_state is None else random_state
        drawn = int(source.randint(0, SEED_BOUND, dtype=np.int64))
    else:
        return int(random_state)
    return int(broadcast_(torch.tensor([drawn], dtype=torch.long, device=device)).item())
