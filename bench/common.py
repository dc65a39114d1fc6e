"""Machine description, load average and small helpers shared by the bench sections."""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent


def loadavg() -> tuple[float, float, float]:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        return (0.0, 0.0, 0.0)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version_of(dist: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict:
    import torch
    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    return {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu_model(), "cores": os.cpu_count(), "memory_gib": mem, "gpu": gpu,
        "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "transformers": version_of("transformers"), "llama_cpp_python": version_of("llama-cpp-python"),
        "gguf": version_of("gguf"), "tokenizers": version_of("tokenizers"), "pygls": version_of("pygls"),
        "commit": git_commit(), "nice": os.nice(0),
    }


@contextlib.contextmanager
def section(report: dict, name: str, log=print):
    """Record wall time and the load average at the start and the end of a section."""
    rec = {"load_start": loadavg(), "t0": time.perf_counter()}
    log(f"== {name}  (load average {rec['load_start'][0]:.2f})")
    try:
        yield rec
    finally:
        rec["seconds"] = round(time.perf_counter() - rec.pop("t0"), 1)
        rec["load_end"] = loadavg()
        report.setdefault("sections", {})[name] = rec
        log(f"== {name}: {rec['seconds']:.0f} s (load average {rec['load_end'][0]:.2f})")


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def pctl(xs: Sequence[float], q: float) -> float:
    from training.evaluate import percentile
    return percentile(list(xs), q)


def dist(xs: Sequence[float]) -> dict:
    """p50 / p95 / p99 / mean / n of a list of milliseconds."""
    xs = list(xs)
    return {"n": len(xs), "p50": round(median(xs), 2), "p95": round(pctl(xs, 95), 2),
            "p99": round(pctl(xs, 99), 2), "mean": round(sum(xs) / len(xs), 2) if xs else 0.0}


def logger(quiet: bool):
    import sys

    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)
    return log
