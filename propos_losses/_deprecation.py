"""Deprecated names: one wrapper that warns and forwards, so every alias behaves the same."""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, TypeVar, cast

__all__ = ["REMOVED_IN", "deprecated_alias", "warn_deprecated_parameter"]

#: The release that removes the names deprecated in 0.2.
REMOVED_IN = "0.3"

_F = TypeVar("_F", bound=Callable[..., Any])


def deprecated_alias(function: _F, old_name: str, *, why: str, example: str, result: str) -> _F:
    """``function`` under its old name: same signature and result, plus a :class:`FutureWarning`.

    Args:
        function: the function under its new name.
        old_name: the deprecated name (the alias's ``__name__``).
        why: one sentence for the docstring, saying why the name changed.
        example: a call of the alias for the docstring's example, e.g. ``"old(1)"``
            (``torch`` is imported there).
        result: what ``example`` prints.

    Returns:
        The alias; its signature is ``function``'s (``__wrapped__``).

    Example:
        >>> import warnings
        >>> def new(x: int) -> int:
        ...     return x + 1
        >>> old = deprecated_alias(new, "old", why="Clearer.", example="old(1)", result="2")
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     old(1), str(caught[0].message)
        (2, 'propos_losses.old is deprecated and will be removed in 0.3; use new')
    """
    message = f"propos_losses.{old_name} is deprecated and will be removed in {REMOVED_IN}; use {function.__name__}"

    @functools.wraps(function)
    def alias(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(message, FutureWarning, stacklevel=2)
        return function(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old_name
    alias.__doc__ = (
        f"Deprecated name of :func:`{function.__name__}` (a :class:`FutureWarning`; removed in {REMOVED_IN}).\n\n"
        f"{why}\n\n"
        "Example:\n"
        "    >>> import warnings, torch\n"
        "    >>> with warnings.catch_warnings():\n"
        '    ...     warnings.simplefilter("ignore", FutureWarning)\n'
        f"    ...     {example}\n"
        f"    {result}\n"
    )
    return cast(_F, alias)


def warn_deprecated_parameter(owner: str, old_name: str, new_name: str, *, stacklevel: int = 2) -> None:
    """Warn that ``owner``'s parameter ``old_name`` is deprecated: a :class:`FutureWarning`, as for the aliases.

    Args:
        owner: the class or function that takes the parameter, e.g. ``"SphericalKMeans"``.
        old_name: the deprecated parameter.
        new_name: the parameter to use instead.
        stacklevel: as for :func:`warnings.warn`, counted from the caller of this function.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_deprecated_parameter("SphericalKMeans", "seed", "random_state")
        >>> str(caught[0].message)
        'propos_losses.SphericalKMeans(seed=...) is deprecated and will be removed in 0.3; use random_state'
    """
    message = f"propos_losses.{owner}({old_name}=...) is deprecated and will be removed in {REMOVED_IN}; use {new_name}"
    warnings.warn(message, FutureWarning, stacklevel=stacklevel + 1)
