"""Reference weighted segment sums, plain numpy (float64)."""
from __future__ import annotations

from typing import Optional

import numpy as np


def segment_sum(values: np.ndarray, segments: np.ndarray, count: int, weights: Optional[np.ndarray] = None
                ) -> np.ndarray:
    x = np.asarray(values, np.float64)
    w = np.ones(x.shape[0]) if weights is None else np.asarray(weights, np.float64)
    out = np.zeros((count, x.shape[1]))
    for i, s in enumerate(np.asarray(segments, np.int64)):
        out[s] += w[i] * x[i]
    return out
