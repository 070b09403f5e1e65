"""``python -m propos_losses.train``: the same as the ``propos-train`` console script.

Only the standard library is imported here, so that Ctrl-C during the trainer's
imports (seconds) prints one line and exits with status 130 instead of a traceback.
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
        What :func:`~propos_losses.train.cli.main` returns, or 130 when interrupted before it took over SIGINT.
    """
    try:
        from propos_losses.train.cli import main

        return main(argv)
    except KeyboardInterrupt:  # main handles its own interrupts: this one came during the imports
        print("propos-train: interrupted by SIGINT while starting; nothing was written", file=sys.stderr, flush=True)
        return 128 + int(signal.SIGINT)


if __name__ == "__main__":
    raise SystemExit(launch())
