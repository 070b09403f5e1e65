"""``propos-train`` turns file-system failures, divergence and non-finite checkpoints into one line and an exit status.

Issue 26, item 8: each of these used to end in a Python traceback (exit status 1).
Disk full and read-only file systems are simulated by making the writes of one
module fail (monkeypatch), never with real file systems.
"""

from __future__ import annotations

import errno
import importlib.abc
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict

import pytest
import torch

from propos_losses.train import checkpoint as checkpoint_module
from propos_losses.train import rundir, runlog
from propos_losses.train.__main__ import launch
from propos_losses.train.checkpoint import load_checkpoint
from propos_losses.train.cli import (
    EXIT_DISK_FULL,
    EXIT_DIVERGED,
    EXIT_FILE_SYSTEM_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    main,
)
from propos_losses.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = (
    "--max-samples 200 --epochs 2 --batch-size 64 --hidden-dim 32 --out-dim 16 --kmeans-n-init 1 "
    "--final-kmeans-n-init 1 --device cpu --no-plots --quiet"
).split()
QUIET = ["--quiet", "--no-plots"]
LONG_NAME = "n" * 300  # one path component over the usual 255-byte limit (ENAMETOOLONG)


def _snapshot(folder: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(err: str) -> str:
    assert err.startswith("propos-train: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """A run stopped after epoch 1 of 2: its checkpoint is the one every failure below must keep."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    assert main(TINY + ["--output-dir", str(run_dir), "--stop-after", "1"]) == 0
    return run_dir


def _copy_run(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


# ---------------------------------------------------------------- names over 255 bytes


@pytest.mark.parametrize("flag", ["--output-dir", "--resume", "--data-dir"])
def test_a_name_longer_than_the_file_system_allows_is_a_one_line_user_error(flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [flag, str(tmp_path / LONG_NAME / "run")]
    if flag == "--data-dir":
        argv = ["--dataset", "mnist"] + argv
    assert main(argv + ["--epochs", "1", "--device", "cpu"] + QUIET) == EXIT_USER_ERROR
    err = _one_error_line(capsys.readouterr().err)
    assert f"{flag}: the name 'nnnn" in err and "300 bytes long, longer than the file system allows" in err
    assert LONG_NAME not in err  # the message names the part without printing all of it
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- disk full, read-only file system


class _FailingOs:
    """``os`` for :mod:`propos_losses.train.rundir` whose ``fsync`` of written data fails with ``code``."""

    def __init__(self, code: int) -> None:
        self.code = code

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fsync(self, fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}") or os.fstat(fd).st_size == 0:
            return os.fsync(fd)  # fsync_dir, not a write
        raise OSError(self.code, os.strerror(self.code))


class _FailingTempfile:
    """``tempfile`` for :mod:`propos_losses.train.rundir` whose ``mkstemp`` fails as on a read-only file system."""

    def __init__(self, code: int) -> None:
        self.code = code

    def __getattr__(self, name: str) -> Any:
        return getattr(tempfile, name)

    def mkstemp(self, prefix: str = "", suffix: str = "", dir: str | os.PathLike = ".") -> Any:
        raise OSError(self.code, os.strerror(self.code), os.path.join(dir, f"{prefix}abc123{suffix}"))


def _failing_open(code: int) -> Callable[..., Any]:
    """``open`` for :mod:`propos_losses.train.runlog` that cannot append to the log."""

    def fake_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "a" in mode or "+" in mode or "w" in mode:
            raise OSError(code, os.strerror(code), str(path))
        return open(path, mode, *args, **kwargs)

    return fake_open


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_last_one_and_the_run_resumes(
    stopped_run, tmp_path, monkeypatch, capsys
):
    run_dir = _copy_run(stopped_run, tmp_path / "run")
    saved = (run_dir / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(rundir, "os", _FailingOs(errno.ENOSPC))
    assert main(["--resume", str(run_dir)] + QUIET) == EXIT_DISK_FULL
    err = _one_error_line(capsys.readouterr().err)
    assert f"cannot write {str(run_dir / 'checkpoint.pt')!r}: No space left on device (ENOSPC)" in err, err
    assert f"its last checkpoint (epoch 1) in {str(run_dir)!r} is intact" in err
    assert err.rstrip().endswith(f"continue the run from it with: propos-train --resume {run_dir}"), err
    assert (run_dir / "checkpoint.pt").read_bytes() == saved
    assert not list(run_dir.glob(".checkpoint.pt.*.tmp"))  # the partial copy is removed

    monkeypatch.undo()  # space freed: the command printed continues the run
    assert main(["--resume", str(run_dir)] + QUIET) == 0
    assert load_checkpoint(run_dir).epoch == 2 and (run_dir / "assignments.csv").is_file()


@pytest.mark.parametrize(
    "where, code",
    [("log", errno.EROFS), ("checkpoint", errno.EROFS), ("checkpoint", errno.EACCES), ("log", errno.EPERM)],
)
def test_an_output_directory_that_turns_read_only_mid_run_exits_5_and_keeps_the_checkpoint(
    where, code, stopped_run, tmp_path, monkeypatch, capsys
):
    run_dir = _copy_run(stopped_run, tmp_path / "run")
    saved = (run_dir / "checkpoint.pt").read_bytes()
    if where == "log":
        monkeypatch.setattr(runlog, "open", _failing_open(code), raising=False)
    else:
        monkeypatch.setattr(rundir, "tempfile", _FailingTempfile(code))
    assert main(["--resume", str(run_dir)] + QUIET) == EXIT_FILE_SYSTEM_ERROR
    err = _one_error_line(capsys.readouterr().err)
    name = "metrics.jsonl" if where == "log" else "checkpoint.pt"
    assert f"cannot write {str(run_dir / name)!r}: {os.strerror(code)} ({errno.errorcode[code]})" in err, err
    assert "make the output directory writable again" in err
    assert f"continue the run from it with: propos-train --resume {run_dir}" in err
    assert (run_dir / "checkpoint.pt").read_bytes() == saved


# ---------------------------------------------------------------- divergence


@pytest.mark.parametrize("base_lr", ["1e30", "1e300"])
def test_a_learning_rate_that_diverges_exits_3_with_one_line(base_lr, tmp_path, capsys):
    # 1e30: the loss becomes NaN (FloatingPointError); 1e300: SGD cannot even convert the rate to float32.
    run_dir = tmp_path / "run"
    assert main(TINY + ["--base-lr", base_lr, "--output-dir", str(run_dir)]) == EXIT_DIVERGED
    err = _one_error_line(capsys.readouterr().err)
    assert "propos-train: error: training diverged (non-finite " in err and " in epoch 1" in err, err
    assert f"lower --base-lr (this run has {float(base_lr):g}) and start a new run" in err
    assert f"no checkpoint was written in {str(run_dir)!r}" in err


def test_divergence_after_a_checkpoint_keeps_the_last_good_one(stopped_run, tmp_path, monkeypatch, capsys):
    run_dir = _copy_run(stopped_run, tmp_path / "run")
    saved = (run_dir / "checkpoint.pt").read_bytes()
    epoch_stats = Trainer._epoch_stats

    def nan_in_epoch_2(self: Trainer, totals: torch.Tensor, lr: float) -> Dict[str, Any]:
        totals[0] = float("nan")
        return epoch_stats(self, totals, lr)

    monkeypatch.setattr(Trainer, "_epoch_stats", nan_in_epoch_2)
    assert main(["--resume", str(run_dir)] + QUIET) == EXIT_DIVERGED
    err = _one_error_line(capsys.readouterr().err)
    assert "training diverged (non-finite loss in epoch 2); lower --base-lr" in err, err
    assert f"its last checkpoint (epoch 1) in {str(run_dir)!r} is intact" in err
    assert (run_dir / "checkpoint.pt").read_bytes() == saved


# ---------------------------------------------------------------- a signed checkpoint with NaN weights


@pytest.mark.parametrize("entry", ["online", "optimizer"])
def test_a_checkpoint_with_nan_weights_and_a_recomputed_digest_is_refused(
    entry, stopped_run, tmp_path, monkeypatch, capsys
):
    run_dir = _copy_run(stopped_run, tmp_path / "run")
    state = load_checkpoint(run_dir)
    if entry == "online":
        name = next(k for k, v in state.online.items() if v.is_floating_point())
        state.online[name][0] = float("nan")
        where = f"online.{name}"
    else:
        buffers = state.optimizer["state"]
        key = next(k for k, v in buffers.items() if "momentum_buffer" in v)
        buffers[key]["momentum_buffer"].view(-1)[0] = float("inf")
        where = f"optimizer.state.{key}.momentum_buffer"
    # Signed again: the SHA-256 check passes, the values are what is wrong.
    rundir.atomic_write_bytes(run_dir / "checkpoint.pt", checkpoint_module.checkpoint_bytes(state))
    before = _snapshot(run_dir)
    assert main(["--resume", str(run_dir)] + QUIET) == EXIT_USER_ERROR
    err = _one_error_line(capsys.readouterr().err)
    assert f"is damaged: {where} holds NaN or infinite values" in err, err
    assert _snapshot(run_dir) == before


# ---------------------------------------------------------------- SIGINT while the imports run


class _InterruptImport(importlib.abc.MetaPathFinder):
    """Deliver SIGINT (as Ctrl-C does) when ``name`` is about to be imported."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname == self.name:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_launch_turns_sigint_during_the_imports_into_one_line_and_status_130(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "propos_losses.train.cli")  # imported again, and interrupted
    monkeypatch.setattr(sys, "meta_path", [_InterruptImport("propos_losses.train.cli"), *sys.meta_path])
    assert launch(["--print-config"]) == EXIT_INTERRUPTED == 130
    err = capsys.readouterr().err
    assert err == "propos-train: interrupted by SIGINT while starting; nothing was written\n"


def _console_script() -> str:
    """The ``module:function`` that ``pyproject.toml`` names for ``propos-train``."""
    found = re.search(r'^propos-train\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert found is not None
    return found.group(1)


#: What the generated ``propos-train`` script and ``python -m`` run, with SIGINT when torch is first imported.
_INTERRUPTED_START = """
import importlib, os, runpy, signal, sys, importlib.abc
class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torch":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Interrupt())
sys.argv = ["propos-train", "--print-config"]
if sys.argv_how == "-m":
    runpy.run_module("propos_losses.train", run_name="__main__", alter_sys=True)
else:
    module, _, attr = sys.argv_how.partition(":")
    sys.exit(getattr(importlib.import_module(module), attr)())
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("how", ["console script", "-m"])
def test_sigint_while_torch_is_imported_at_start_up_exits_130_without_a_traceback(how, tmp_path):
    code = _INTERRUPTED_START.replace("sys.argv_how", repr("-m" if how == "-m" else _console_script()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    process = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 130, process.stderr
    assert process.stderr == "propos-train: interrupted by SIGINT while starting; nothing was written\n"
