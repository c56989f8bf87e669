"""A test hook: kill the process at a named point, to show that recovery from SIGKILL works.

`SLPO_FAULT_POINT=<point>[@<n>]` makes every process that reaches `<point>` for the n-th time
(default: the first) send itself SIGKILL there: no handler, no cleanup, as a preempted job or the
out-of-memory killer would. Unset, `fault_point` does nothing but read the variable. Points:

    score-batch        pipeline: the engine returned a batch; its shard is not written yet
    shard-write        pipeline: a shard's temporary file holds its row groups, not its footer
    shard-done         pipeline: a shard and its record are written; the next shard not begun
    train-micro-batch  trainer: a micro-batch's backward and `engine.step()` are done
    checkpoint-files   trainer: this rank's checkpoint files are written; the checkpoint is not
                       marked complete (no `trainer_state.json`)

The fault tests (`tests/test_faults_*.py`) set it on child processes; nothing else should.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "SLPO_FAULT_POINT"
POINTS = ("score-batch", "shard-write", "shard-done", "train-micro-batch", "checkpoint-files")

_reached: Counter[str] = Counter()


def fault_point(name: str) -> None:
    """SIGKILL this process if `$SLPO_FAULT_POINT` names `name` and this is the n-th visit."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    _reached[name] += 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
