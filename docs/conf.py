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
# Keep "--flag" in prose (the trainer settings list) as typed: quotes and ellipses only, no dashes.
smartquotes_action = "qe"

# Docstring type hints mention torch/numpy types that are not documented here.
nitpicky = False
# The included Markdown reports start at H2 under the page title.
suppress_warnings = ["ref.python", "myst.header"]

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
exclude_patterns = ["_build", "_generated"]
source_suffix = {".rst": "restructuredtext"}


# -- Generated reference of the trainer's command line and presets ---------------
# Written at build time from the argparse parser and the preset table, so the
# page can never drift from the code (one source of truth).


def _rst_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        lines.append("   * - " + (row[0] or " "))
        lines.extend("     - " + (cell or " ") for cell in row[1:])
    return "\n".join(lines) + "\n"


def _write_trainer_reference(app: object) -> None:
    import dataclasses

    from propos_losses.train import cli, config

    parser = cli.build_parser()
    rows = []
    for action in parser._actions:  # argparse exposes no public iterator over actions
        if not action.option_strings or action.dest == "help":
            continue
        flags = ", ".join(f"``{s}``" for s in action.option_strings)
        metavar = action.metavar or (action.dest.upper() if action.nargs != 0 else "")
        rows.append([flags, f"``{metavar}``" if metavar else "", (action.help or "").replace("\n", " ")])
    flags_table = _rst_table(["flag", "value", "meaning"], rows)

    defaults = config.TrainConfig()
    fields = [f.name for f in dataclasses.fields(config.TrainConfig) if f.name not in ("preset", "output_dir")]
    preset_rows = []
    for name in fields:
        cells = [f"``{name}``"]
        for preset in config.PRESET_NAMES:
            value = config.PRESETS[preset].get(name, getattr(defaults, name))
            cells.append(f"``{value!r}``")
        preset_rows.append(cells)
    presets_table = _rst_table(["setting", *config.PRESET_NAMES], preset_rows)

    out = os.path.join(os.path.dirname(__file__), "_generated")
    os.makedirs(out, exist_ok=True)
    for filename, text in (("trainer_flags.inc", flags_table), ("trainer_presets.inc", presets_table)):
        path = os.path.join(out, filename)
        if not os.path.exists(path) or open(path).read() != text:
            with open(path, "w") as handle:
                handle.write(text)


def setup(app: object) -> None:
    app.connect("builder-inited", _write_trainer_reference)  # type: ignore[attr-defined]
