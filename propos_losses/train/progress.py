"""The in-epoch progress bar (tqdm, rank 0, on a terminal); what it shows: docs/trainer.rst, "Progress"."""

from __future__ import annotations

import io
import os
import sys
import time
from typing import Any, Callable, Optional, TextIO

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``seconds`` as ``m:ss`` or ``h:mm:ss``.

    Example:
        >>> format_duration(75.4), format_duration(3725)
        ('1:15', '1:02:05')
    """
    whole = int(max(seconds, 0.0) + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Progress display of one training run.

    Args:
        total_epochs: epochs of the run.
        steps_per_epoch: optimiser steps per epoch.
        samples_per_step: global batch size (all ranks).
        enabled: show anything at all (``False`` on ranks other than 0).
        bar: draw the in-epoch bar; ``None`` (default) draws it when ``stream`` is a terminal.
        stream: where the bar goes (default ``sys.stderr``).
        refresh_s: least seconds between two reads of the running loss.

    Example:
        >>> import io
        >>> progress = Progress(total_epochs=2, steps_per_epoch=3, samples_per_step=32, stream=io.StringIO())
        >>> progress.bar_enabled  # not a terminal: no bar
        False
    """

    def __init__(
        self,
        *,
        total_epochs: int,
        steps_per_epoch: int,
        samples_per_step: int,
        enabled: bool = True,
        bar: Optional[bool] = None,
        stream: Optional[TextIO] = None,
        refresh_s: float = 0.5,
    ) -> None:
        self.total_epochs = total_epochs
        self.steps_per_epoch = steps_per_epoch
        self.samples_per_step = samples_per_step
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        is_terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar_enabled = enabled and (is_terminal if bar is None else bar)
        self.refresh_s = refresh_s
        self._bar: Any = None
        self._epoch_end: Optional[float] = None
        self._between_epochs = 0.0  # E-step, evaluation and checkpoint between the last two epochs
        self._remaining_epochs = 0
        self._steps_left_before = 0
        self._epoch_start = 0.0
        self._epoch_steps = 0
        self._last_refresh = 0.0

    def start_epoch(self, epoch: int, first_step: int = 0) -> None:
        """Open the bar of epoch ``epoch`` (0-based), ``first_step`` steps already done (a resumed epoch)."""
        self._epoch_start = time.perf_counter()
        if self._epoch_end is not None:
            self._between_epochs = self._epoch_start - self._epoch_end
        self._epoch_steps = 0
        self._last_refresh = 0.0
        self._remaining_epochs = self.total_epochs - epoch - 1
        self._steps_left_before = self._remaining_epochs * self.steps_per_epoch + (self.steps_per_epoch - first_step)
        if not self.bar_enabled:
            return
        from tqdm import tqdm  # the train extra's dependency, imported only for a terminal

        try:
            size = os.get_terminal_size(self.stream.fileno())
            sized = size.columns > 0 and size.lines > 0
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            sized = False
        self._bar = tqdm(
            total=self.steps_per_epoch,
            initial=first_step,
            desc=f"epoch {epoch + 1}/{self.total_epochs}",
            unit="step",
            file=self.stream,
            # Follow the terminal's size; one that reports none (a fresh pseudo-terminal: tqdm would
            # then draw nothing, its bar being "below" a 0-line screen) gets 100 x 24.
            dynamic_ncols=sized,
            ncols=None if sized else 100,
            nrows=None if sized else 24,
            leave=False,
            mininterval=self.refresh_s,
            miniters=1,
            bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
        )

    def step(self, running_loss: Callable[[], float]) -> None:
        """One step done; ``running_loss()`` (a host sync) is called only when the bar refreshes."""
        self._epoch_steps += 1
        if self._bar is None:
            return
        now = time.perf_counter()
        if now - self._last_refresh >= self.refresh_s:
            self._last_refresh = now
            elapsed = max(now - self._epoch_start, 1e-9)
            rate = self._epoch_steps * self.samples_per_step / elapsed
            # This epoch's pace for the steps left, plus the last gap between epochs for each epoch to come.
            run_left = (elapsed / self._epoch_steps) * (self._steps_left_before - self._epoch_steps)
            run_left += self._between_epochs * self._remaining_epochs
            self._bar.set_postfix_str(
                f"loss {running_loss():.4f}, {rate:,.0f} samples/s, run ETA {format_duration(run_left)}",
                refresh=False,
            )
        self._bar.update(1)

    def end_epoch(self) -> None:
        """Close the bar (the trainer then prints its per-epoch line)."""
        self._epoch_end = time.perf_counter()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def message(self, text: str, log: Callable[[str], None]) -> None:
        """Print ``text`` through ``log`` without tearing an open bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.clear()
        log(text)
        if self._bar is not None:
            self._bar.refresh()
