"""The exact FDE candidate stage: every live document's stored FDE (float16, or int8 with a scale per row) scored by
the fused :func:`tokenset.inner_product_topk` (read in place; memory: per-thread heaps of ``candidates`` per query), one
pass per segment, the segments' lists merged on the host. O(candidates x segments) per query beyond the scan itself."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from .. import _array
from ..inner_product import inner_product_topk
from .device import segment_copy, segment_mask
from .ranking import rank_order
from .store import Snapshot


def fde_candidates(query_fdes: Any, snapshot: Snapshot, candidates: int,
                   device: Optional[Tuple[str, int]] = None) -> np.ndarray:
    """Positions in `snapshot` ``[nq, <= candidates]`` (-1 where fewer live documents exist) of each query's best
    live documents by FDE inner product; ties to the lower position."""
    nq = int(query_fdes.shape[0])
    all_s, all_p = [np.full((nq, 0), -np.inf, np.float32)], [np.zeros((nq, 0), np.int64)]
    for (seg, alive), base, live in zip(snapshot, snapshot.bases.tolist(), snapshot.live_counts):
        if live == 0:
            continue
        every = live == len(seg)
        if device is None:
            fdes, mask = seg.fde, None if every else alive
        else:
            fdes, mask = segment_copy(seg, device)[0], None if every else segment_mask(seg, alive, device)
        s, i = inner_product_topk(query_fdes, fdes, min(candidates, live), mask=mask,
                                  scales=None if device is not None else seg.fde_scales)
        s, i = np.asarray(_array.host_copy(s)), np.asarray(_array.host_copy(i))
        all_s.append(s)
        all_p.append(np.where(i >= 0, i + base, -1))
    s, p = np.concatenate(all_s, 1), np.concatenate(all_p, 1)
    if len(all_s) > 2 and s.shape[1] > candidates:  # several segments: keep the best overall
        p = np.take_along_axis(p, rank_order(s, p, candidates), 1)
    return p
