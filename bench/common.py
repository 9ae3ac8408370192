"""What every benchmark shares: the machine it ran on, its load, and where results go.

A figure without its machine is not a figure: each result JSON carries `nproc`, the CPU model and flags that
matter, RAM, the load average before and after, the date and the exact command.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# fp32 lanes per vector register, by the widest instruction set the CPU flags announce
ISA = r"avx512f|avx512_vnni|avx2|fma|amx_int8|avx_vnni"
VECTOR_LANES = (("avx512f", 16), ("avx2", 8), ("avx", 8), ("sse2", 4))


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                key, value = (s.strip() for s in line.split(":", 1))
                info.setdefault(key, value)
    except OSError:
        pass
    return info


def mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return float("nan")


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def fp32_peak(clock_ghz: float | None = None, fma_units: int = 2) -> dict[str, Any]:
    """Theoretical fp32 peak: lanes x 2 FLOP (FMA) x FMA units per core x cores x clock.

    Lanes from the CPU flags (AVX-512: 16, AVX2: 8); `fma_units` = 2 (two 512-bit FMA ports on server
    Xeons from Skylake-SP on; one on some client parts: pass 1 there); the clock is /proc/cpuinfo's `cpu MHz`
    (the nominal clock a VM reports; turbo or AVX-512 down-clocking move the real one).
    """
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    lanes = next((n for flag, n in VECTOR_LANES if flag in flags), 1)
    fma = 2 if "fma" in flags or "avx512f" in flags else 1
    ghz = clock_ghz or float(info.get("cpu MHz", "0") or 0) / 1000.0
    n = cores()
    gflops = lanes * fma * fma_units * n * ghz
    return {"gflops": round(gflops, 1), "lanes": lanes, "flop_per_fma": fma, "fma_units": fma_units,
            "cores": n, "clock_ghz": ghz,
            "formula": f"{lanes} lanes x {fma} FLOP x {fma_units} FMA units x {n} cores x {ghz:.2f} GHz"}


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    return {"nproc": cores(), "cpu_model": info.get("model name", platform.processor()),
            "cpu_mhz": float(info.get("cpu MHz", "0") or 0),
            "isa": sorted(f for f in flags if re.fullmatch(ISA, f)),
            "ram_gib": mem_total_gib(), "python": platform.python_version(), "kernel": platform.release()}


class Run:
    """Context for one benchmark run: records the machine, command, load and timing, then writes the JSON."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.time()
        self.record: dict[str, Any] = {
            "benchmark": name, "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
            "load_before": loadavg(),
        }

    def save(self, results: dict[str, Any], out: Path | None = None) -> Path:
        self.record["load_after"] = loadavg()
        self.record["seconds"] = round(time.time() - self.started, 1)
        self.record["other_work_running"] = max(self.record["load_before"][:1] + self.record["load_after"][:1]
                                                or [0]) > 0.5 * cores()
        self.record["results"] = results
        path = out or RESULTS / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.record, indent=2, default=float) + "\n")
        m = self.record["machine"]
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"\nmachine: {m['nproc']} x {m['cpu_model']}, {m['ram_gib']} GiB; load "
              f"{self.record['load_before']} -> {self.record['load_after']}; wrote {shown}")
        return path


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table (also pasted into docs/BENCHMARKS.md)."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
             "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _status_mib(pid: int | str) -> dict[str, float]:
    """The memory lines (kB) of /proc/PID/status, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0]) / 1024
    return out


def rss_mib(pid: int | str = "self") -> float:
    return _status_mib(pid).get("VmRSS", float("nan"))


def memory_mib(pid: int | str = "self") -> dict[str, float]:
    """A process's resident memory now (VmRSS) and its peak so far (VmHWM), in MiB."""
    status = _status_mib(pid)
    return {"rss_mib": round(status.get("VmRSS", float("nan")), 1),
            "peak_mib": round(status.get("VmHWM", float("nan")), 1)}


def percentile_ms(seconds: list[float], q: float) -> float:
    """The library's percentile (fashionrec.evaluate.metrics), NaN for a run with no samples."""
    from fashionrec.evaluate.metrics import percentile_ms as library_percentile_ms

    return library_percentile_ms(seconds, q) if len(seconds) else float("nan")
