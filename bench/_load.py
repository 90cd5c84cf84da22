"""How busy the rest of the machine was while a benchmark ran.

The load average counts the benchmark's own threads (an ONNX Runtime pool at 2 threads alone
lifts it above 2 on a 2-core machine), so it cannot tell a quiet machine from a busy one. This
meter takes the CPU time the whole machine spent (``/proc/stat``) minus what this process and
its children spent, as a share of all cores over the wall time.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager


def _machine_busy_seconds() -> float | None:
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None  # not Linux: the page then says it could not tell
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class OtherLoad:
    """``meter = OtherLoad()`` at the start; ``meter.cores()``: how many cores' worth of CPU the
    other processes used since then (0 on a quiet machine; 1.0 = one other process always busy)."""

    def __init__(self) -> None:
        self._start = (time.monotonic(), _machine_busy_seconds(), _own_seconds())

    def cores(self) -> float | None:
        wall0, busy0, own0 = self._start
        busy = _machine_busy_seconds()
        if busy is None or busy0 is None:
            return None
        wall = max(time.monotonic() - wall0, 1e-9)
        return max(0.0, (busy - busy0) - (_own_seconds() - own0)) / wall


def load_note(other_cores: float | None, cores: int) -> str:
    """One sentence for a benchmark page: quiet, or how loaded, with what that means."""
    if other_cores is None:
        return "The load from other processes could not be read on this system (no /proc/stat)."
    if other_cores > 0.2:
        return (f"**Taken under load**: other processes used {other_cores:.2f} of the {cores} cores on average during the "
                "run, so these numbers show that the machinery works, not the accuracy a quiet machine gives.")
    return f"The machine was quiet: other processes used {other_cores:.2f} of the {cores} cores on average during the run."


def _spin(stop: multiprocessing.synchronize.Event) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


@contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """``count`` processes spinning on the CPU until the block ends (a user's machine is rarely idle)."""
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(count)]
    for process in spinners:
        process.start()
    try:
        yield
    finally:
        stop.set()
        for process in spinners:
            process.join(timeout=5)
