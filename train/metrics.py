"""Where the numbers go, on rank 0 only: `OUT/metrics.jsonl`, TensorBoard, a progress bar.

`metrics.jsonl` holds one JSON object per optimizer step (`step`, `epoch`, `loss`, `lr`,
`grad_norm`, the loss metrics, `tokens_per_second`, `samples_per_second`, `elapsed`), plus
rows of their own for evaluation (keys under `eval/`) and the step-0 check (`ref_check/`).
Other ranks construct the logger too, and it does nothing there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from schemas import write_text_atomic

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def truncate_after(path: Path, step: int) -> None:
    """Drop rows logged after `step` (by a run that stopped past its last checkpoint)."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line).get("step", 0) <= step]
    if len(kept) != len(rows):
        logger.info("dropping %d rows after step %d from %s", len(rows) - len(kept), step, path)
        write_text_atomic(path, "".join(f"{line}\n" for line in kept))


class MetricsLogger:
    """Appends rows to `metrics.jsonl` and TensorBoard, and drives the progress bar."""

    def __init__(self, out: Path, *, enabled: bool, total_steps: int, start_step: int):
        self.enabled = enabled
        self._file = self._writer = self._bar = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        out.mkdir(parents=True, exist_ok=True)
        path = out / METRICS_FILE
        if start_step == 0:
            path.unlink(missing_ok=True)
        else:
            truncate_after(path, start_step)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._writer = SummaryWriter(str(out / TENSORBOARD_DIR), purge_step=start_step + 1)
        self._bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def log(self, row: dict[str, Any]) -> None:
        """Write one row; numeric entries also go to TensorBoard at `row["step"]`."""
        if not self.enabled:
            return
        self._file.write(json.dumps(row, sort_keys=False) + "\n")
        self._file.flush()
        step = int(row.get("step", 0))
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, step)

    def step_done(self, row: dict[str, Any]) -> None:
        """Log an optimizer step's row and advance the bar."""
        self.log(row)
        if self.enabled:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{row['lr']:.2g}")

    def close(self) -> None:
        if not self.enabled:
            return
        self._bar.close()
        self._writer.close()
        self._file.close()
