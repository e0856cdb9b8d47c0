"""Shared benchmark helpers: machine naming, interleaved timing, result files (JSON + Markdown)."""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown-cpu"


def machine_name(device: str = "cpu") -> str:
    if device == "cuda":
        import torch

        name = torch.cuda.get_device_name()
    else:
        name = f"{cpu_model()} {os.cpu_count()}c"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def time_interleaved(fns: Dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None] = lambda: None,
                     budget_s: float = 60.0, settle_s: float = 0.2) -> Dict[str, float]:
    """Median seconds per call. Methods run in rotating order each round, so that machine noise hits all alike.

    Each timed call follows untimed calls of the same method lasting at least `settle_s` (one call at least), so no
    method is timed while the previous one's thread pool still holds the cores: numpy's OpenBLAS workers busy-wait
    about 0.1 s after a call (measured: a 4.0 ms tokenset scan took 9.1 ms right after numpy, 4.0 ms after 0.2 s of
    its own calls), torch's OpenMP workers spin too, and a core left idle comes back slowly."""
    names = list(fns)
    for name in names:  # warm-up
        fns[name]()
    sync()
    times: Dict[str, List[float]] = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            settle_start = time.perf_counter()
            fns[name]()
            sync()
            while time.perf_counter() - settle_start < settle_s:
                fns[name]()
                sync()
            t0 = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and r >= 2:
            break
    return {n: float(np.median(t)) for n, t in times.items()}


def write_results(stem: str, device: str, payload: dict, table: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().isoformat()
    base = RESULTS / f"{stem}-{machine_name(device)}-{date}"
    payload = {"machine": machine_name(device), "cpu": cpu_model(), "cores": os.cpu_count(), "date": date, **payload}
    base.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    base.with_suffix(".md").write_text(table + "\n")
    return base
