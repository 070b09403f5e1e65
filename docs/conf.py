"""Sphinx configuration for propos_losses (built with ``sphinx-build -W``)."""

from __future__ import annotations

import datetime
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

from propos_losses import __version__  # noqa: E402

project = "propos_losses"
author = "propos_losses developers"
copyright = f"{datetime.date.today().year}, {author}"
release = __version__
version = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]

autosummary_generate = False
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# "Attributes:" sections as :ivar: fields: NamedTuple fields are already documented as members.
napoleon_use_ivar = True

# Docstring type hints mention torch/numpy types that are not documented here.
nitpicky = False
suppress_warnings = ["ref.python"]

# Docstring examples run under pytest --doctest-modules (in their module namespace);
# the doctest builder runs the examples of these pages.
doctest_test_doctest_blocks = ""

doctest_global_setup = """
import torch
import numpy as np
torch.manual_seed(0)
"""

html_theme = "alabaster"
html_static_path = ["_static"]
html_title = f"propos_losses {release}"
exclude_patterns = ["_build"]
source_suffix = {".rst": "restructuredtext"}
