"""Per-trial, per-epoch TensorBoard scalars: ``tensorboard --logdir RUN`` shows every trial's curves.

Each trial writes an event file into its own folder (``trials/<n>/``), so TensorBoard lists the
trials as runs named ``trials/<n>``; both backends go through :func:`~repnas.search._runner.run_trial`,
so both write them. The writer is tensorboardX's ``SummaryWriter`` (ray[tune], a dependency,
brings tensorboardX) or else ``torch.utils.tensorboard``'s (needs the ``tensorboard`` package);
viewing needs ``tensorboard`` (``pip install repnas[tensorboard]``). Without a writer, or with
``REPNAS_TENSORBOARD=0``, nothing is written.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any


def _writer_class():
    if os.environ.get("REPNAS_TENSORBOARD", "1") == "0":
        return None
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
    return SummaryWriter


class EpochScalars:
    """Writes a trial's numeric epoch metrics as scalars (step = epoch); a no-op without a writer."""

    def __init__(self, trial_dir: str | Path):
        self.trial_dir = Path(trial_dir)
        self._writer = None
        self._cls = _writer_class()

    def __call__(self, epoch: int, metrics: dict[str, Any]) -> None:
        if self._cls is None:
            return
        if self._writer is None:
            self._writer = self._cls(logdir=str(self.trial_dir)) if "tensorboardX" in self._cls.__module__ \
                else self._cls(log_dir=str(self.trial_dir))
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._writer.add_scalar(name, float(value), epoch)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
