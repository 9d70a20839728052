"""Metrics: a JSONL log (one object a line), optional TensorBoard, a progress bar.

Only the main process writes. A resumed run first drops the lines after its checkpoint's
step, so ``metrics.jsonl`` reads as if the run had never stopped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from segllm.files import write_text_atomic

METRICS_NAME = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every line of a metrics file, in order."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(path: Path, last_step: int) -> None:
    """Rewrite the file without lines whose step is after ``last_step`` (atomically)."""
    kept = [m for m in read_metrics(path) if m.get("step", 0) <= last_step]
    write_text_atomic(path, "".join(json.dumps(m) + "\n" for m in kept))


class MetricsTracker:
    """Writes metric dicts for the main process; every call is a no-op elsewhere."""

    def __init__(self, output_dir: str | Path, enabled: bool, tensorboard: bool,
                 resume_step: int | None = None):
        self.enabled = enabled
        self.path = Path(output_dir) / METRICS_NAME
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            truncate_metrics(self.path, resume_step)
        elif resume_step is None and self.path.exists():
            self.path.unlink()  # a fresh run: no lines from an older one
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))

    def log(self, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        if self._tb is not None:
            step = metrics["step"]
            for key, value in metrics.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class Progress:
    """A tqdm bar over optimizer steps with loss, lr, samples/s and tokens/s."""

    def __init__(self, enabled: bool, total: int, initial: int):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step",
                            dynamic_ncols=True)

    def update(self, metrics: dict[str, Any]) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                             samples_s=f"{metrics['samples_per_s']:.2f}",
                             tokens_s=f"{metrics['tokens_per_s']:.0f}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
