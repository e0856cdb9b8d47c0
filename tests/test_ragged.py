"""Ragged: compact() (gapped batches rebased without copying tokens) and the bounded per-stream device caches."""
from __future__ import annotations

import numpy as np

import tokenset
from tokenset import _array


def test_compact_rebases_a_gapped_batch_without_copying():
    values = np.arange(30, dtype=np.float32).reshape(15, 2)
    r = tokenset.Ragged(values, [3, 5, 5, 9])  # rows 0-2 and 9-14 belong to no set
    c = r.compact()
    assert c.offsets.tolist() == [0, 2, 2, 6] and c.values.shape == (6, 2)
    assert np.shares_memory(c.values, values)
    for i in range(len(r)):
        assert np.array_equal(c[i], r[i])
    assert r.compact() is not r and c.compact() is c
    listed = tokenset.ragged([values[:2], values[2:5]])
    assert listed.compact() is listed


def test_device_caches_keep_the_last_few_streams(monkeypatch):
    """Device offsets (and FDE device state) are cached per stream; a program cycling through streams used to grow
    the cache without bound."""
    made = []
    monkeypatch.setattr(_array, "to_device", lambda arr, lib, dev: made.append(arr) or object())
    r = tokenset.Ragged(np.zeros((4, 2), np.float32), [0, 1, 4])
    for stream in range(100):
        r.device_offsets("torch", ("cuda", 0), stream)
    assert len(made) == 100 and len(r._device_offsets) <= 4
    again = r.device_offsets("torch", ("cuda", 0), 99)
    assert len(made) == 100 and again is r.device_offsets("torch", ("cuda", 0), 99)
    fde = tokenset.FDE(2, reps=1, simhash_bits=1, seed=0)
    for stream in range(50):
        fde._device_state("torch", ("cuda", 0), stream)
    assert len(fde._device_states) <= 4
