"""propos_losses: ProPos prototype scattering and positive sampling for any SSL loop.

>>> from propos_losses import PSL
"""

from propos_losses._version import __version__

__all__ = ["__version__"]
