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
