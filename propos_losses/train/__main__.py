"""``python -m propos_losses.train``: the same as the ``propos-train`` console script."""

from propos_losses.train.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
