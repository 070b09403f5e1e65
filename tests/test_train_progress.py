"""The trainer's progress display: a bar on a terminal only, the loss read back only when the bar refreshes."""

from __future__ import annotations

import io
from typing import List

from propos_losses.train.progress import Progress, format_duration


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def counting_loss(calls: List[int], value: float = 1.25) -> "object":
    def read() -> float:
        calls.append(1)
        return value

    return read


def test_no_terminal_no_bar_and_no_loss_read() -> None:
    stream, calls = io.StringIO(), []
    progress = Progress(total_epochs=2, steps_per_epoch=4, samples_per_step=8, stream=stream, refresh_s=0.0)
    assert not progress.bar_enabled
    progress.start_epoch(0)
    for _ in range(4):
        progress.step(counting_loss(calls))  # type: ignore[arg-type]
    progress.end_epoch()
    assert stream.getvalue() == "" and calls == []


def test_on_a_terminal_the_bar_shows_steps_loss_rate_and_run_eta() -> None:
    stream, calls = Terminal(), []
    progress = Progress(total_epochs=3, steps_per_epoch=5, samples_per_step=16, stream=stream, refresh_s=0.0)
    assert progress.bar_enabled
    progress.start_epoch(1)
    for _ in range(5):
        progress.step(counting_loss(calls))  # type: ignore[arg-type]
    text = stream.getvalue()
    progress.end_epoch()
    assert "epoch 2/3" in text and "5/5" in text
    assert "loss 1.2500" in text and "samples/s" in text and "run ETA" in text
    assert len(calls) == 5  # refresh_s=0: every step refreshes


def test_the_loss_is_read_back_at_most_once_per_refresh_interval() -> None:
    stream, calls = Terminal(), []
    progress = Progress(total_epochs=1, steps_per_epoch=50, samples_per_step=4, stream=stream, refresh_s=3600.0)
    progress.start_epoch(0)
    for _ in range(50):
        progress.step(counting_loss(calls))  # type: ignore[arg-type]
    progress.end_epoch()
    assert len(calls) == 1  # the first step only: no host sync per step


def test_a_resumed_epoch_starts_its_bar_at_the_steps_already_done() -> None:
    stream = Terminal()
    progress = Progress(total_epochs=1, steps_per_epoch=10, samples_per_step=4, stream=stream, refresh_s=0.0)
    progress.start_epoch(0, first_step=7)
    progress.step(lambda: 0.5)
    assert "8/10" in stream.getvalue()
    progress.end_epoch()


def test_disabled_progress_shows_nothing_even_on_a_terminal() -> None:
    stream, printed = Terminal(), []
    progress = Progress(total_epochs=1, steps_per_epoch=2, samples_per_step=4, stream=stream, enabled=False)
    progress.start_epoch(0)
    progress.step(lambda: 0.5)
    progress.message("E-step started", printed.append)
    progress.end_epoch()
    assert stream.getvalue() == "" and printed == []


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 59.6, 61, 3600, 86399)] == ["0:00", "1:00", "1:01", "1:00:00", "23:59:59"]


# ------------------------------------------------------------------ the trainer, as a user runs it

import os  # noqa: E402
import pty  # noqa: E402
import select  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

TINY_RUN = (
    "--max-samples 128 --epochs 2 --batch-size 32 --hidden-dim 16 --out-dim 8 --kmeans-n-init "
    "1 --final-kmeans-n-init 1 --device cpu --no-plots"
).split()


def _environment() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("PROPOS_TRAIN_DEFAULT_DIR", None)
    return env


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_under_a_terminal_the_run_shows_the_bar(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "propos_losses.train", *TINY_RUN, "--output-dir", str(tmp_path / "run")],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=_environment(),
        close_fds=True,
    )
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 120.0)
        if not ready:
            process.kill()
            pytest.fail("no output for 120 s")
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert process.wait(timeout=60) == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "\r" in screen and "%|" in screen and "epoch 1/2" in screen and "/4 [" in screen  # 4 steps per epoch
    assert "epoch 2/2  loss" in screen  # the plain per-epoch lines are still there


def test_without_a_terminal_no_bar_characters_reach_the_output(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "propos_losses.train", *TINY_RUN, "--output-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "epoch 1/2  loss" in output and "epoch 2/2  loss" in output
    assert "\r" not in output and "%|" not in output and "samples/s" not in output


def test_run_eta_is_this_epochs_pace_plus_the_gap_between_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    from propos_losses.train import progress as module

    clock = [0.0]
    monkeypatch.setattr(module.time, "perf_counter", lambda: clock[0])
    stream = Terminal()
    progress = Progress(total_epochs=3, steps_per_epoch=10, samples_per_step=8, stream=stream, refresh_s=0.0)
    for epoch in range(2):
        clock[0] += 4.0  # E-step and checkpoint before the epoch
        progress.start_epoch(epoch)
        for _ in range(10 if epoch == 0 else 1):
            clock[0] += 0.5
            progress.step(lambda: 1.0)
        if epoch == 0:
            progress.end_epoch()
    # Epoch 2 after one step: 9 steps at 0.5 s, then one more 4 s gap and 10 steps of epoch 3.
    assert f"run ETA {format_duration(9 * 0.5 + 4.0 + 10 * 0.5)}" in stream.getvalue().split("\r")[-1]
    assert "16 samples/s" in stream.getvalue().split("\r")[-1]
    progress.end_epoch()
