"""``python -m propos_losses.train``: the same as the ``propos-train`` console script.

:func:`launch` is the whole program: it imports the trainer (torch,
scikit-learn: seconds) and runs :func:`propos_losses.train.cli.main`, turning
Ctrl-C during the imports into one line and exit status 130 instead of a
traceback. Only the standard library is imported here; whatever a package
``__init__`` imports before this module runs is outside its reach.
"""

from __future__ import annotations

import signal
import sys
from typing import Optional, Sequence

__all__ = ["launch"]


def launch(argv: Optional[Sequence[str]] = None) -> int:
    """Import the command line and run it; returns the exit status.

    Args:
        argv: arguments without the program name (``sys.argv[1:]`` when ``None``).

    Returns:
        What :func:`~propos_losses.train.cli.main` returns, or 130 (``128 + SIGINT``)
        when interrupted before it could take over SIGINT.
    """
    try:
        from propos_losses.train.cli import main

        return main(argv)
    except KeyboardInterrupt:  # main handles its own interrupts: this one came during the imports
        print("propos-train: interrupted by SIGINT while starting; nothing was written", file=sys.stderr, flush=True)
        return 128 + int(signal.SIGINT)


if __name__ == "__main__":
    raise SystemExit(launch())
