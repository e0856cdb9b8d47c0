"""``Index.evaluate``: recall of the candidate search against the brute force, latency, bytes, peak memory."""
from __future__ import annotations

import time
from typing import Any, Dict, Sequence

import numpy as np

from ..ragged import ragged


def evaluate(index: Any, queries: Any, k: int, candidates: Sequence[int], repeats: int) -> Dict[str, Any]:
    """Recall@k of ``index.search`` against ``index.exact_search`` for each candidate count, single-query latency
    percentiles (ms), bytes per document and the process's peak resident memory."""
    q = ragged(queries, name="queries")
    exact, _ = index.exact_search(q, k)
    rows = []
    for c in candidates:
        c = max(int(c), k)
        got, _ = index.search(q, k, candidates=c)
        hits = [len(set(a[a >= 0].tolist()) & set(b[b >= 0].tolist())) / max(1, int((b >= 0).sum()))
                for a, b in zip(got, exact)]
        times = []
        for _ in range(repeats):
            for i in range(len(q)):
                start = time.perf_counter()
                index.search(q[i], k, candidates=c)
                times.append((time.perf_counter() - start) * 1e3)
        rows.append({"candidates": c, "recall": float(np.mean(hits)) if hits else 1.0,
                     "latency_ms_p50": float(np.percentile(times, 50)) if times else 0.0,
                     "latency_ms_p95": float(np.percentile(times, 95)) if times else 0.0})
    return {"k": k, "queries": len(q), "documents": len(index), "bytes_per_document": index.bytes_per_document(),
            "results": rows, "peak_rss_bytes": peak_rss_bytes()}


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (0 where the platform does not say)."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except (ImportError, OSError):
        return 0
