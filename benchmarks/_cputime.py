"""CPU-time clocks for benchmarks on a shared machine.

On a busy machine the wall time mostly measures the other processes; with one torch thread the
CPU time of this process is the work done. Every timing also records its wall time in ``WALL``
(seconds per item, in order), which the benchmarks write beside their CPU times."""

from __future__ import annotations

import time

WALL: list[float] = []  # wall seconds per item of every timing, in order


def clock() -> tuple[float, float]:
    """A start point: ``(wall, CPU)`` seconds."""
    return time.perf_counter(), time.process_time()


def since(t0: tuple[float, float], n: int) -> float:
    """CPU seconds per item since ``t0`` (this process's, all threads); the wall time per item
    is appended to ``WALL``."""
    wall, cpu_s = time.perf_counter() - t0[0], time.process_time() - t0[1]
    WALL.append(wall / n)
    return cpu_s / n
