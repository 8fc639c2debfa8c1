"""What a run reports: a rich progress bar (ETA, img/s), TensorBoard scalars and RUN_DIR/history.jsonl."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from cxrkit.training.checkpoint import atomic_write, plain

HISTORY = "history.jsonl"


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> Path:
    """Rewrite history.jsonl from the checkpointed history, so a resumed run never duplicates an epoch's line."""
    path = Path(run_dir) / HISTORY
    lines = "".join(json.dumps(_json_safe(plain(h))) + "\n" for h in history)
    atomic_write(path, lines.encode())
    return path


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


class Monitor:
    """Progress bar + TensorBoard for the main rank; a silent no-op on the others."""

    def __init__(self, run_dir: Path, *, enabled: bool, quiet: bool, tensorboard: bool):
        self.enabled = enabled
        self.writer = None
        self.progress = None
        self._task = None
        self.quiet, self.lines = quiet, False
        self._epoch, self._epochs, self._total, self._done, self._every = 0, 0, 0, 0, 1
        if not enabled:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))
        if not quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                     console=Console(stderr=True), transient=False)
            self.progress.start()
        # without a terminal (CI logs, nohup, a pipe) the bar is off, so plain lines carry the progress instead
        self.lines = not quiet and self.progress is None

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int = 0) -> None:
        self._epoch, self._epochs, self._total, self._done = epoch, epochs, total, done
        self._every = max(1, total // 10)  # about ten lines per epoch, the first after its first step
        if self.progress is not None:
            if self._task is not None:
                self.progress.remove_task(self._task)
            self._task = self.progress.add_task(f"epoch {epoch + 1}/{epochs}", total=total, completed=done,
                                                stats="")

    def step(self, n: int, loss: float, img_s: float) -> None:
        if self.progress is not None and self._task is not None:
            self.progress.update(self._task, advance=n, stats=f"loss {loss:.4f}  {img_s:,.0f} img/s")
        if not self.lines:
            return
        before, self._done = self._done, self._done + n
        # the epoch's last batch gets no line: the epoch line follows once validation is done
        due = before == 0 or self._done // self._every != before // self._every
        if not due or self._done >= self._total:
            return
        shown = f"{loss:.4f}" if math.isfinite(loss) else "n/a"  # the running loss is first synced at log_every
        print(f"epoch {self._epoch + 1}/{self._epochs}: batch {self._done}/{self._total}  loss {shown}  "
              f"{img_s:,.0f} img/s", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        """A one-off line (early stopping, the quality gate) on the bar's console or stderr."""
        if not self.enabled or self.quiet:
            return
        if self.progress is not None:
            self.progress.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def scalars(self, values: dict[str, float | None], step: int) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if v is not None and math.isfinite(v):
                self.writer.add_scalar(k, v, step)

    def epoch_line(self, record: dict[str, Any]) -> None:
        if not self.enabled or self.quiet:
            return
        msg = (f"epoch {record['epoch'] + 1}: train loss {record['train_loss']:.4f}  val loss {record['val_loss']:.4f}"
               f"  val mean AUROC {record['val_mean_auroc']:.4f}  lr {record['lr']:.2e}  {record['img_per_s']:,.0f} img/s")
        if self.progress is not None:
            self.progress.console.print(msg)
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.writer is not None:
            self.writer.close()
