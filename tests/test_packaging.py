"""The sdist and the wheel build, carry ``py.typed`` and no tests, and import from a clean venv."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_wheel_ships_py_typed_and_no_tests(dists: dict[str, Path]) -> None:
    names = zipfile.ZipFile(dists["wheel"]).namelist()
    assert "propos_losses/py.typed" in names
    assert "propos_losses/__init__.py" in names
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n]
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(dists["wheel"]).read(metadata).decode()
    for field in (
        "Requires-Dist: torch>=2.4",
        "Requires-Dist: numpy",
        "Requires-Dist: scipy",
        "Summary: ",
        "License-Expression: MIT",
        "Project-URL: Paper, https://arxiv.org/abs/2111.11821",
    ):
        assert field in text


def test_sdist_contains_the_package_and_its_metadata(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as tar:
        names = tar.getnames()
    for part in ("propos_losses/__init__.py", "propos_losses/py.typed", "pyproject.toml", "README.md", "PKG-INFO"):
        assert any(n.endswith(part) for n in names), part


def test_wheel_imports_from_a_clean_venv(dists: dict[str, Path], tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    # system_site_packages gives the venv the already-installed torch/numpy/scipy
    # (installing a second torch would take minutes); the package itself must
    # come from the wheel, which the check on __file__ below makes sure of.
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    python = env_dir / ("Scripts" if sys.platform == "win32" else "bin") / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(dists["wheel"])],
        check=True,
        capture_output=True,
        text=True,
    )
    code = (
        "import importlib.util, pathlib, sys\n"
        "import propos_losses\n"
        "from propos_losses import __version__\n"
        "p = pathlib.Path(propos_losses.__file__).resolve()\n"
        f"assert str(p).startswith(str(pathlib.Path({str(env_dir)!r}).resolve())), p\n"
        "assert (p.parent / 'py.typed').exists()\n"
        "print(__version__)\n"
    )
    result = subprocess.run([str(python), "-I", "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.strip()


def test_changelog_has_unreleased_and_a_dated_section_for_the_current_version() -> None:
    import re

    from propos_losses import __version__

    text = (Path(__file__).resolve().parents[1] / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\](.*)$", text, flags=re.MULTILINE)
    assert headings[0][0] == "Unreleased"
    released = {name: rest for name, rest in headings[1:]}
    assert __version__ in released, f"CHANGELOG.md has no section for version {__version__}"
    assert re.fullmatch(r" - \d{4}-\d{2}-\d{2}", released[__version__])


def test_every_module_imports_and_the_cli_runs_without_docstrings() -> None:
    """``python -OO`` strips docstrings; nothing may depend on them at import (TrainConfig's settings list did)."""
    code = (
        "import importlib, pkgutil, propos_losses\n"
        "names = [m.name for m in pkgutil.walk_packages(propos_losses.__path__, 'propos_losses.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "from propos_losses.train.cli import main\n"
        "assert main(['--help']) == 0\n"
        "print(len(names))\n"
    )
    result = subprocess.run([sys.executable, "-OO", "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip().splitlines()[-1]) >= 30
