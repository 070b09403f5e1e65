"""Run directories of ``propos-train``: nothing lost, nothing mixed, no raw tracebacks (issue 16).

One run per directory even when two start at once; a run killed at any point
can be continued with ``--resume``; a damaged or foreign checkpoint is refused;
every user error is one line and exit status 2 before anything is written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch

from propos_losses.train import checkpoint as checkpoint_module
from propos_losses.train import cli
from propos_losses.train.checkpoint import load_checkpoint
from propos_losses.train.cli import EXIT_USER_ERROR, main
from propos_losses.train.rundir import atomic_write_bytes
from propos_losses.train.trainer import TIMING_KEYS, Trainer

REPO = Path(__file__).resolve().parents[1]
# 128 digits, 2 steps per epoch, small heads: about a second per epoch on one core.
TINY = (
    "--max-samples 128 --epochs 2 --batch-size 64 --hidden-dim 16 --out-dim 8 --kmeans-n-init "
    "1 --final-kmeans-n-init 1 --warmup-epochs 1 --psl-warmup-epochs 1 --device cpu --quiet"
).split()
QUIET = ["--quiet", "--no-plots"]


def _log(run_dir: Path) -> List[Dict[str, Any]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _snapshot(folder: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _write_idx(folder: Path, images: np.ndarray, labels: np.ndarray, *, header: bytes | None = None) -> Path:
    """A plain IDX pair ``train-{images,labels}-idx*-ubyte`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    n, height, width = images.shape
    image_header = (
        header
        if header is not None
        else (b"\x00\x00\x08\x03" + n.to_bytes(4, "big") + height.to_bytes(4, "big") + width.to_bytes(4, "big"))
    )
    (folder / "train-images-idx3-ubyte").write_bytes(image_header + images.astype(np.uint8).tobytes())
    (folder / "train-labels-idx1-ubyte").write_bytes(
        b"\x00\x00\x08\x01" + len(labels).to_bytes(4, "big") + labels.astype(np.uint8).tobytes()
    )
    return folder


def _strokes(n: int, seed: int, side: int = 12, width: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, side, width or side)) < 0.3).astype(np.uint8) * 255


MNIST = (
    "--preset mnist --backbone small_cnn --batch-size 16 --epochs 2 --hidden-dim 16 --out-dim "
    "8 --kmeans-n-init 1 --final-kmeans-n-init 1 --device cpu"
).split()


# ---------------------------------------------------------------- item 1: one run per directory


def test_two_runs_started_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_timestamp", lambda: "20260101-000000")  # both start in the same second
    assert main(TINY + ["--seed", "0", "--no-plots"]) == 0
    assert main(TINY + ["--seed", "1", "--no-plots"]) == 0
    first, second = tmp_path / "runs" / "20260101-000000", tmp_path / "runs" / "20260101-000000-2"
    assert json.loads((first / "config.json").read_text())["seed"] == 0
    assert json.loads((second / "config.json").read_text())["seed"] == 1
    assert json.loads((second / "config.json").read_text())["output_dir"] == str(Path("runs") / second.name)
    for run_dir in (first, second):
        assert [r["event"] for r in _log(run_dir)].count("final") == 1


def _start_another_run_during_setup(monkeypatch, other_argv: List[str], results: List[int]) -> None:
    """While this run loads its data (after its directory check), another run takes the same directory."""
    original = Trainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if not results:
            results.append(-1)  # the other run's own Trainer must not start a third
            results[0] = main(other_argv)

    monkeypatch.setattr(Trainer, "__init__", init)


def test_a_run_whose_explicit_directory_is_taken_meanwhile_stops_without_mixing(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    others: List[int] = []
    _start_another_run_during_setup(
        monkeypatch, TINY + ["--seed", "1", "--no-plots", "--output-dir", str(run_dir)], others
    )
    assert main(TINY + ["--seed", "0", "--no-plots", "--output-dir", str(run_dir)]) == EXIT_USER_ERROR
    assert others == [0]
    assert "was taken by another run" in capsys.readouterr().err
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 1
    assert [r["event"] for r in _log(run_dir)] == ["estep", "epoch", "estep", "epoch", "final"]


def test_a_default_directory_taken_meanwhile_gets_the_next_free_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_timestamp", lambda: "20260101-000000")
    others: List[int] = []
    _start_another_run_during_setup(monkeypatch, TINY + ["--seed", "1", "--no-plots"], others)
    assert main(TINY + ["--seed", "0", "--no-plots"]) == 0
    assert others == [0]
    runs = tmp_path / "runs"
    assert json.loads((runs / "20260101-000000" / "config.json").read_text())["seed"] == 1
    assert json.loads((runs / "20260101-000000-2" / "config.json").read_text())["seed"] == 0
    for run_dir in runs.iterdir():
        assert [r["event"] for r in _log(run_dir)] == ["estep", "epoch", "estep", "epoch", "final"]


def test_a_run_directory_in_use_cannot_be_resumed_by_a_second_process(tmp_path, capsys):
    from propos_losses.train.rundir import lock_run_dir

    run_dir = tmp_path / "run"
    assert main(TINY + QUIET + ["--output-dir", str(run_dir), "--stop-after", "1"]) == 0
    before = _snapshot(run_dir)
    with lock_run_dir(run_dir):  # as the first resumption would hold it
        assert main(["--resume", str(run_dir)] + QUIET) == EXIT_USER_ERROR
    assert "is in use by another propos-train process" in capsys.readouterr().err
    assert _snapshot(run_dir) == before


# ---------------------------------------------------------------- items 3 and 10: killed before the first checkpoint


def test_resume_restarts_a_run_killed_before_its_first_checkpoint_and_removes_temporaries(tmp_path, monkeypatch):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(TINY + QUIET + ["--output-dir", str(straight)]) == 0

    def killed_while_saving(self):
        # The temporary of the interrupted write stays behind, as after a SIGKILL.
        (self.output_dir / ".checkpoint.pt.abc123.tmp").write_bytes(b"partial")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "save_checkpoint", killed_while_saving)
        assert main(TINY + QUIET + ["--output-dir", str(killed)]) == 130
    assert sorted(p.name for p in killed.iterdir()) == [".checkpoint.pt.abc123.tmp", "config.json", "metrics.jsonl"]
    assert main(["--resume", str(killed)] + QUIET) == 0
    assert _log(killed) == _log(straight)
    assert not list(killed.glob(".*.tmp"))


def test_resume_removes_temporaries_left_by_a_kill_during_a_checkpoint_write(tmp_path):
    run_dir = tmp_path / "run"
    assert main(TINY + QUIET + ["--output-dir", str(run_dir), "--stop-after", "1"]) == 0
    for name in (".checkpoint.pt.x1y2z3.tmp", ".assignments.csv.q9.tmp"):
        (run_dir / name).write_bytes(bytes(1000))
    (run_dir / "notes.tmp").write_text("not ours")
    assert main(["--resume", str(run_dir)] + QUIET) == 0
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "assignments.csv",
        "checkpoint.pt",
        "config.json",
        "metrics.jsonl",
        "notes.tmp",
    ]


def test_resume_of_a_directory_without_checkpoint_or_config_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--resume", str(tmp_path / "empty")]) == EXIT_USER_ERROR
    assert "holds no run to resume" in capsys.readouterr().err
    assert list((tmp_path / "empty").iterdir()) == []


# ---------------------------------------------------------------- item 4: one-line errors, exit 2, nothing written


def _error_case(name: str, tmp_path: Path) -> List[str]:
    data = tmp_path / "data"
    labels = np.arange(64) % 4
    if name == "batch_over_classes":
        return ["--max-samples", "5", "--batch-size", "4"]
    if name == "clusters_over_samples":
        return ["--max-samples", "100", "--batch-size", "32", "--num-clusters", "101"]
    if name == "label_255":
        return MNIST + ["--data-dir", str(_write_idx(data, _strokes(64, 0), np.append(labels[:-1], 255)))]
    if name == "one_class":
        return MNIST + ["--data-dir", str(_write_idx(data, _strokes(64, 0), np.zeros(64, np.int64)))]
    if name == "sparse_labels":
        return MNIST + ["--data-dir", str(_write_idx(data, _strokes(64, 0), np.full(64, 3)))]
    if name == "non_square":
        return MNIST + ["--data-dir", str(_write_idx(data, _strokes(64, 0, 12, 10), labels))]
    if name == "all_black":
        return MNIST + ["--data-dir", str(_write_idx(data, np.zeros((64, 12, 12), np.uint8), labels))]
    if name == "tiny_temperature":
        return ["--max-samples", "100", "--batch-size", "32", "--temperature", "1e-300"]
    if name == "translate":
        return ["--max-samples", "100", "--batch-size", "32", "--translate", "5"]
    if name == "preset_list":
        (tmp_path / "c.json").write_text(json.dumps({"preset": ["digits"]}))
        return ["--config", str(tmp_path / "c.json")]
    if name == "output_under_a_file":
        (tmp_path / "afile").write_text("x")
        return ["--output-dir", str(tmp_path / "afile" / "sub")]
    if name == "idx_size_overflow":  # 4 dimensions of 2**16: 2**64 bytes, 0 in int64 arithmetic
        header = b"\x00\x00\x08\x04" + (2**16).to_bytes(4, "big") * 4
        return MNIST + ["--data-dir", str(_write_idx(data, np.zeros((0, 1, 1)), np.zeros(0), header=header))]
    raise AssertionError(name)


ERROR_CASES = {
    "batch_over_classes": "has 10 classes but only 5 samples",
    "clusters_over_samples": "num_clusters (101) is larger than the data set (100 samples)",
    "label_255": "must be 0..K-1 with every class present; they range up to 255",
    "one_class": "has a single class",
    "sparse_labels": "must be 0..K-1 with every class present",
    "non_square": "needs square images",
    "all_black": "are identical (e.g. all black)",
    "tiny_temperature": "temperature must be >=",
    "translate": "translate must be <= 1",
    "preset_list": "unknown preset ['digits']",
    "output_under_a_file": "afile' is not a directory",
    "idx_size_overflow": "size mismatch",
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_user_errors_exit_2_with_one_line_before_anything_is_written(case, tmp_path, monkeypatch, capsys):
    argv = _error_case(case, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the default run directory would appear here
    before = _snapshot(tmp_path)
    assert main(argv + ["--device", "cpu", "--epochs", "1", "--no-plots"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("propos-train: error: ") and err.count("\n") == 1, err
    assert ERROR_CASES[case] in err
    assert _snapshot(tmp_path) == before and list(work.iterdir()) == []


# ---------------------------------------------------------------- item 5: the metrics log


def test_resume_drops_a_torn_record_and_the_log_stays_readable(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(TINY + QUIET + ["--output-dir", str(straight)]) == 0
    assert main(TINY + QUIET + ["--output-dir", str(resumed), "--stop-after", "1"]) == 0
    with open(resumed / "metrics.jsonl", "ab") as fh:  # killed in the middle of the next E-step's record
        fh.write(b'{"backbone_acc": 0.5, "ev')
    assert main(["--resume", str(resumed), "--quiet"]) == 0  # plots read the whole log
    assert _log(resumed) == _log(straight)
    assert (resumed / "metrics.png").is_file()


def test_every_later_resume_leaves_exactly_one_final_record(tmp_path):
    run_dir = tmp_path / "run"
    assert main(TINY + QUIET + ["--output-dir", str(run_dir)]) == 0
    (run_dir / "assignments.csv").unlink()  # killed before the assignments: the evaluation is redone
    for _ in range(2):
        assert main(["--resume", str(run_dir)] + QUIET) == 0
    assert [r["event"] for r in _log(run_dir)].count("final") == 1


def test_the_log_is_made_durable_before_the_checkpoint_that_counts_it(tmp_path, monkeypatch):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name file descriptors")
    synced: List[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert main(TINY + QUIET + ["--output-dir", str(tmp_path / "run"), "--stop-after", "1"]) == 0
    checkpoint_writes = [i for i, name in enumerate(synced) if name.startswith(".checkpoint.pt.")]
    assert checkpoint_writes and "metrics.jsonl" in synced[: checkpoint_writes[0]]


def test_every_file_of_a_run_gets_the_permissions_of_a_plain_open(tmp_path):
    old = os.umask(0o027)
    try:
        assert main(TINY + ["--output-dir", str(tmp_path / "run")]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()}
    assert set(modes) >= {"checkpoint.pt", "config.json", "metrics.jsonl", "assignments.csv", "metrics.png"}
    assert set(modes.values()) == {0o640}, modes


def test_resume_draws_the_plots_of_a_finished_run_that_was_stopped_before_drawing_them(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(TINY + QUIET + ["--output-dir", str(run_dir), "--epochs", "1"]) == 0
    log = (run_dir / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["--resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "already finished" in out and "plots:" in out
    assert (run_dir / "metrics.png").is_file() and (run_dir / "cluster_sizes.png").is_file()
    assert (run_dir / "metrics.jsonl").read_bytes() == log


# ---------------------------------------------------------------- item 8: verified checkpoints


def _rewrite_checkpoint(run_dir: Path, change: Any) -> None:
    """Edit the state and store it with a valid digest (as a tool that knows the format would)."""
    state = load_checkpoint(run_dir)
    change(state)
    atomic_write_bytes(run_dir / "checkpoint.pt", checkpoint_module.checkpoint_bytes(state))


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    assert main(TINY + QUIET + ["--output-dir", str(run_dir), "--stop-after", "1"]) == 0
    return run_dir


def _copy_run(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


@pytest.mark.parametrize(
    "damage, message",
    [
        ("flip", "is corrupt: its content does not match the SHA-256"),
        ("epoch_99", "is damaged: it is at epoch 99 of a 2-epoch run"),
        ("epoch_minus_3", "is damaged: epoch is -3"),
        ("step", "do not fit a 2-epoch run"),
        ("config_string", "its settings are a str, not a table of settings"),
        ("config_json", "hold different settings: they are not one run"),
    ],
)
def test_a_damaged_or_edited_checkpoint_is_refused_and_nothing_changes(damage, message, stopped_run, tmp_path, capsys):
    run_dir = _copy_run(stopped_run, tmp_path / "run")
    if damage == "flip":
        data = bytearray((run_dir / "checkpoint.pt").read_bytes())
        data[len(data) // 2] ^= 0x10  # in the middle of the weights
        (run_dir / "checkpoint.pt").write_bytes(bytes(data))
    elif damage == "epoch_99":
        _rewrite_checkpoint(run_dir, lambda state: setattr(state, "epoch", 99))
    elif damage == "epoch_minus_3":
        _rewrite_checkpoint(run_dir, lambda state: setattr(state, "epoch", -3))
    elif damage == "step":
        _rewrite_checkpoint(run_dir, lambda state: setattr(state, "step", 1))
    elif damage == "config_string":
        _rewrite_checkpoint(run_dir, lambda state: setattr(state, "config", "x"))
    else:
        config = json.loads((run_dir / "config.json").read_text())
        (run_dir / "config.json").write_text(json.dumps({**config, "seed": 7}))
    before = _snapshot(run_dir)
    assert main(["--resume", str(run_dir)] + QUIET) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert _snapshot(run_dir) == before


def test_resume_refuses_a_different_data_set_of_the_same_size(tmp_path, capsys):
    data, run_dir = tmp_path / "data", tmp_path / "run"
    labels = np.arange(64) % 4
    _write_idx(data, _strokes(64, 0), labels)
    assert main(MNIST + QUIET + ["--data-dir", str(data), "--output-dir", str(run_dir), "--stop-after", "1"]) == 0
    _write_idx(data, _strokes(64, 1), labels)  # other images, same sizes
    before = _snapshot(run_dir)
    assert main(["--resume", str(run_dir)] + QUIET) == EXIT_USER_ERROR
    assert "the data set differs from the one the run" in capsys.readouterr().err
    assert _snapshot(run_dir) == before
    _write_idx(data, _strokes(64, 0), labels)  # the original files again
    assert main(["--resume", str(run_dir)] + QUIET) == 0


def test_checkpoints_hold_the_fingerprints_of_their_data_and_settings(stopped_run):
    state = load_checkpoint(stopped_run)
    assert len(state.data_sha256) == len(state.config_sha256) == 64
    assert state.log_bytes == (stopped_run / "metrics.jsonl").stat().st_size


# ---------------------------------------------------------------- header


def test_the_run_header_names_the_preset_chosen_by_the_data_set(tmp_path, capsys):
    data = _write_idx(tmp_path / "data", _strokes(64, 0), np.arange(64) % 4)
    argv = [
        "--dataset",
        "mnist",
        "--data-dir",
        str(data),
        *"--backbone small_cnn --batch-size 16 --epochs 1 --hidden-dim 16 --out-dim 8 --kmeans-n-init 1 --device cpu --no-plots --output-dir".split(),
        str(tmp_path / "run"),
    ]
    assert main(argv) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith(f"run {tmp_path / 'run'}: preset mnist, mnist (")


# ---------------------------------------------------------------- item 11: signals


def _start(argv: List[str], cwd: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "propos_losses.train", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_and_sigint_keep_the_checkpoint_and_print_the_real_resume_command(tmp_path):
    run_dir = tmp_path / "run"
    argv = TINY + QUIET + ["--epochs", "40", "--output-dir", str(run_dir)]
    process = _start(argv, tmp_path)
    _wait_for(run_dir / "checkpoint.pt", process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM == 143, err
    assert err.strip().splitlines()[-1].endswith(f"continue with: propos-train --resume {run_dir}"), err
    assert "SIGTERM" in err and "Traceback" not in err
    first = load_checkpoint(run_dir)
    assert 1 <= first.epoch < 40

    before = (run_dir / "checkpoint.pt").stat().st_mtime_ns
    process = _start(["--resume", str(run_dir), "--quiet", "--no-plots"], tmp_path)
    while (run_dir / "checkpoint.pt").stat().st_mtime_ns == before:  # the resumed run saved an epoch
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert f"continue with: propos-train --resume {run_dir}" in err and "Traceback" not in err
    state = load_checkpoint(run_dir)  # a complete, verified checkpoint, further on
    assert first.step < state.step and state.epoch < 40
    lines = (run_dir / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) >= state.log_lines and all(json.loads(line) for line in lines[: state.log_lines])


def test_an_interrupt_before_the_run_directory_exists_says_nothing_was_written(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "__init__", interrupted)
    assert main(TINY + QUIET + ["--output-dir", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert "nothing was written" in err and "<run directory>" not in err
    assert not (tmp_path / "run").exists()
    assert torch.get_num_threads() >= 1  # the interpreter is still usable
