"""CPU threads: as many as the cores this process may use, and a warning when others use them too.

torch sizes its thread pool from the machine's cores, not from what the process is allowed
(a CPU affinity mask, a container's CPU quota), and two torch processes on the same cores slow
each other ~10× (their OpenMP threads spin against each other). :func:`configure` sets the pool
to the cores actually available (``OMP_NUM_THREADS`` / ``UNLEARNBENCH_THREADS`` win when set);
:func:`busy_warning` says when the cores are already busy, and :class:`RunLock` when another
unlearnbench run holds them.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)


def _affinity() -> list[int] | None:
    """The CPUs this process may run on (None where the platform does not say: not Linux)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def available_cores() -> int:
    """Cores this process may run on: the affinity mask, capped by a cgroup v2/v1 CPU quota."""
    allowed = _affinity()
    n = len(allowed) if allowed else os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(n, math.ceil(quota))) if quota else n


def _cgroup_quota() -> float | None:
    try:
        q, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if q == "max" else int(q) / int(period)
    except (OSError, ValueError):
        pass
    try:
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if q <= 0 else q / period
    except (OSError, ValueError):
        return None


def configure() -> int:
    """Set torch's intra-op threads to the available cores (or the user's explicit choice); returns it."""
    import torch

    explicit = os.environ.get("UNLEARNBENCH_THREADS") or os.environ.get("OMP_NUM_THREADS")
    n = int(explicit) if explicit and explicit.isdigit() and int(explicit) > 0 else available_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def busy_now(seconds: float = 0.5) -> float:
    """Cores of this process's set busy right now (summed use over ``seconds``, this process's
    own share included: call it before the work starts)."""
    import psutil

    allowed = _affinity()
    per_cpu = psutil.cpu_percent(interval=seconds, percpu=True)
    used = [per_cpu[i] for i in allowed if i < len(per_cpu)] if allowed else per_cpu
    return sum(used) / 100.0


def busy_warning(threshold: float = 0.75) -> str | None:
    """A warning when other work already keeps the cores busy (1-minute load average ≥
    ``threshold`` × cores, and still busy over half a second now: the load average lags, so a
    job that has just ended is not taken for one running): timings will be slow and wrong, and so
    will everything else."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    cores = available_cores()
    if load >= threshold * cores and busy_now() >= threshold * cores:
        return (f"the {cores} available CPU cores are already busy (load average {load:.1f}): another process "
                "competes for them, so this run will be several times slower and its timings meaningless. "
                "Run one torch job at a time.")
    return None


class RunLock:
    """An advisory lock every run takes for its duration (``$UNLEARNBENCH_CACHE/run.lock``): a second
    run started meanwhile is warned that the two will share the cores (it is not stopped)."""

    def __init__(self, path: Path | None = None):
        from .core.cache import cache_dir

        self.path = path or cache_dir() / "run.lock"
        self.fh = None
        self.other: str | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.fh.seek(0)
            self.fh.truncate()
            self.fh.write(str(os.getpid()))
            self.fh.flush()
        except BlockingIOError:
            self.fh.seek(0)
            self.other = self.fh.read().strip() or "?"
            log.warning("another unlearnbench run (pid %s) is using this machine: the two share the CPU cores "
                        "and both will run several times slower; timings from either are not meaningful",
                        self.other)
            self.fh.close()
            self.fh = None
        return self

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
