"""What a search shows while it runs: the running trial's epoch and an ETA for the whole search.

Per finished trial the driver prints one line (kept in logs); between them, on a terminal, one
status line is redrawn in place after every epoch (``\\r``), so a long trial is not silent. Off a
terminal (a log file, CI) only the per-trial lines are written, each with the ETA.

The ETA is the time per finished trial of this session (all workers together, so parallel workers
count) times the trials left (less the epochs the running trial has done); before the first trial
finishes, the running trial's own pace (seconds per epoch times the epochs left, over the workers).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def duration(seconds: float) -> str:
    """``95`` -> ``1m35s``; ``4000`` -> ``1h06m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class SearchProgress:
    """The ETA bookkeeping of one worker and its in-place epoch line."""

    def __init__(self, total: int, done_before: int = 0, workers: int = 1, stream: TextIO | None = None):
        self.total = total
        self.done_before = done_before  # trials finished before this session (a resume)
        self.workers = max(1, workers)
        self.started = time.time()
        self.stream = stream if stream is not None else sys.stdout
        self.trial_started = self.started

    def eta(self, done: int, epoch_fraction: float = 0.0) -> float | None:
        """Seconds left for ``total`` trials when ``done`` are finished (None: no pace yet)."""
        left = max(0.0, self.total - done - epoch_fraction)  # the running trial's done part is not left
        finished_here = done - self.done_before
        now = time.time()
        if finished_here > 0:
            return (now - self.started) / finished_here * left
        if epoch_fraction > 0:
            per_trial = (now - self.trial_started) / epoch_fraction
            return per_trial * left / self.workers
        return None

    def eta_text(self, done: int, epoch_fraction: float = 0.0) -> str:
        seconds = self.eta(done, epoch_fraction)
        return "eta ?" if seconds is None else f"eta {duration(seconds)}"

    def start_trial(self) -> None:
        self.trial_started = time.time()

    def epoch(self, number: int, epoch: int, epochs: int, metrics: dict[str, Any], done: int) -> None:
        """Redraw the status line after an epoch of trial ``number`` (terminals only)."""
        if not self.stream.isatty():
            return
        accuracy = metrics.get("val_accuracy")
        acc = f"  val {accuracy:.4f}" if isinstance(accuracy, float) else ""
        line = (f"trial {number:>4} epoch {epoch}/{epochs}{acc} | done {done}/{self.total} "
                f"{self.eta_text(done, epoch / max(1, epochs))}")
        self.stream.write("\r" + line.ljust(100)[:100])
        self.stream.flush()

    def clear(self) -> None:
        """Wipe the status line before a per-trial line is printed."""
        if self.stream.isatty():
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
