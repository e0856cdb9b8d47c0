"""tokenset.distributed: an index sharded across local Ray workers (num_cpus=2): exact merge, recovery of a killed
worker from disk, and a clear error (never a partial answer) when a shard cannot come back."""
from __future__ import annotations

import contextlib
import os
import signal
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason='pip install "tokenset[ray]"')

import tokenset  # noqa: E402
from tokenset import distributed  # noqa: E402

DIM = 16


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENSET_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def corpus(rng, n):
    return [rng.standard_normal((int(m), DIM)).astype(np.float32) for m in rng.integers(3, 30, n)]


@contextlib.contextmanager
def sharded_index(tmp_path, docs, **kwargs):
    """Two shards of `docs` under tmp_path, served until the block ends."""
    sharded = distributed.ShardedIndex.build(docs, tmp_path, shards=2, dim=DIM,
                                             fde=tokenset.FDE(DIM, reps=4, simhash_bits=3, seed=0), **kwargs)
    try:
        yield sharded
    finally:
        sharded.close()


def test_sharded_search_equals_one_index(local_ray, tmp_path):
    rng = np.random.default_rng(0)
    docs = corpus(rng, 120)
    with sharded_index(tmp_path, docs) as sharded:
        assert len(sharded) == 120
        whole = tokenset.Index(DIM, fde=tokenset.FDE(DIM, reps=4, simhash_bits=3, seed=0))
        whole.add(docs)
        queries = [d[:4] for d in docs[:10]]
        ids, scores = sharded.search(queries, k=7, candidates=120)  # every document a candidate: exact
        want_ids, want_scores = whole.exact_search(queries, k=7)
        assert np.array_equal(ids, want_ids) and np.array_equal(scores, want_scores)


def test_sharded_usearch_backend_is_saved_with_each_shard(local_ray, tmp_path):
    pytest.importorskip("usearch", reason='pip install "tokenset[ann]"')
    rng = np.random.default_rng(2)
    docs = corpus(rng, 120)
    with sharded_index(tmp_path, docs, backend="usearch", backend_options={"connectivity": 8}) as sharded:
        for d in sharded.directories:
            shard = tokenset.Index.load(d)
            assert shard.backend == "usearch" and shard.backend_options["connectivity"] == 8
        whole = tokenset.Index(DIM, fde=tokenset.FDE(DIM, reps=4, simhash_bits=3, seed=0))
        whole.add(docs)
        queries = [d[:4] for d in docs[:10]]
        ids, scores = sharded.search(queries, k=7, candidates=120)
        want_ids, _ = whole.exact_search(queries, k=7)
        # The graph's candidates are approximate; the scores of what it found are exact MaxSim (of the stored
        # float16 tokens).
        exact = tokenset.maxsim(queries, [d.astype(np.float16) for d in docs])
        assert np.array_equal(scores, np.take_along_axis(exact, ids, 1))
        # Candidates beyond a shard's size: the graph returns (nearly) all its documents, so (nearly) the exact top-k.
        recall = np.mean([len(set(a) & set(b)) / 7 for a, b in zip(ids.tolist(), want_ids.tolist())])
        assert recall >= 0.8, recall
        # Few candidates: approximate, and still exact scores for what was found.
        ids, scores = sharded.search(queries, k=7, candidates=10)
        assert all(len(set(row)) == 7 for row in ids.tolist())
        assert np.array_equal(scores, np.take_along_axis(exact, ids, 1))


@pytest.mark.parametrize("bad, exc", [
    (dict(backend="faiss"), ValueError),
    (dict(start_timout=10), TypeError),       # misspelt: a ShardedIndex argument
    (dict(max_restarts=-2), ValueError),
])
def test_build_checks_every_argument_before_writing(local_ray, tmp_path, bad, exc):
    docs = corpus(np.random.default_rng(3), 10)
    with pytest.raises(exc):
        distributed.ShardedIndex.build(docs, tmp_path / "out", shards=2, dim=DIM, **bad)
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore:Index\\(storage=")
def test_sharded_residual_storage_shares_one_codec(local_ray, tmp_path):
    """Every shard codes with one codec (trained on all the documents, or given), so that the merge stays exact."""
    rng = np.random.default_rng(1)
    docs = corpus(rng, 120)
    with sharded_index(tmp_path / "trained", docs, storage="residual2") as sharded:
        codecs = [tokenset.Index.load(d).codec for d in sharded.directories]
        assert codecs[0] is not None and codecs[0] == codecs[1]
        whole = tokenset.Index(DIM, fde=tokenset.FDE(DIM, reps=4, simhash_bits=3, seed=0), storage="residual2",
                               codec=codecs[0])
        whole.add(docs)
        queries = [d[:4] for d in docs[:10]]
        ids, scores = sharded.search(queries, k=7, candidates=120)
        want_ids, want_scores = whole.exact_search(queries, k=7)
        assert np.array_equal(ids, want_ids) and np.array_equal(scores, want_scores)
    given = tokenset.ResidualCodec.train(docs, bits=2, centroids=4)
    with sharded_index(tmp_path / "given", docs, storage="residual2", codec=given) as sharded:
        assert all(tokenset.Index.load(d).codec == given for d in sharded.directories)


def test_killed_worker_recovers_from_disk(local_ray, tmp_path):
    rng = np.random.default_rng(1)
    docs = corpus(rng, 60)
    with sharded_index(tmp_path, docs, max_restarts=1) as sharded:
        queries = [d[:3] for d in docs[:5]]
        before = sharded.search(queries, k=5, candidates=60)
        os.kill(sharded.worker_pids()[0], signal.SIGKILL)
        time.sleep(0.5)
        after = sharded.search(queries, k=5, candidates=60)  # restarted, reloaded, retried
        assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])


def test_dead_shard_is_an_error_not_a_partial_answer(local_ray, tmp_path):
    rng = np.random.default_rng(2)
    docs = corpus(rng, 40)
    with sharded_index(tmp_path, docs, max_restarts=0) as sharded:
        os.kill(sharded.worker_pids()[1], signal.SIGKILL)
        time.sleep(0.5)
        with pytest.raises(distributed.ShardUnavailableError, match="shard-1"):
            sharded.search([docs[0][:3]], k=5)


def test_ties_at_a_shards_kth_place_keep_the_lower_id(local_ray, tmp_path):
    """Identical documents: shard 0 holds ids 50, 60, 1 (stored in that order), shard 1 holds 2, 3. The top 2 over
    both is ids 1 and 2: each shard cuts its own list by id too (it used to cut by position, dropping id 1)."""
    same = np.ones((3, DIM), np.float32)
    encoder = tokenset.FDE(DIM, reps=4, simhash_bits=3, seed=0)
    for name, ids in (("a", [50, 60, 1]), ("b", [2, 3])):
        shard = tokenset.Index(DIM, fde=encoder)
        shard.add([same] * len(ids), ids=ids)
        shard.save(tmp_path / name)
    sharded = distributed.ShardedIndex([tmp_path / "a", tmp_path / "b"])
    try:
        ids, _ = sharded.search(same, k=2)
        assert ids.tolist() == [[1, 2]]
        with pytest.raises(ValueError, match="k must be"):
            sharded.search(same, k=0)
    finally:
        sharded.close()


def test_shards_must_hold_distinct_ids(local_ray, tmp_path):
    encoder = tokenset.FDE(DIM, reps=4, simhash_bits=3, seed=0)
    for name, ids in (("a", [1, 2]), ("b", [2, 3])):
        shard = tokenset.Index(DIM, fde=encoder)
        shard.add([np.ones((2, DIM), np.float32)] * 2, ids=ids)
        shard.save(tmp_path / name)
    with pytest.raises(ValueError, match="id 2 is stored in more than one shard"):
        distributed.ShardedIndex([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ValueError, match="timeout"):
        distributed.ShardedIndex([tmp_path / "a"], timeout=0)


def test_a_shard_that_does_not_answer_in_time_is_an_error(local_ray, tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    docs = corpus(rng, 20)
    with sharded_index(tmp_path, docs) as sharded:
        sharded.timeout = 1e-4  # no shard answers a search this fast
        with pytest.raises(distributed.ShardUnavailableError, match="did not answer within"):
            sharded.search([docs[0][:3]], k=5)


def test_more_shards_than_documents(local_ray, tmp_path):
    """Building used to fail ("an empty list has no sets") after writing the first shards."""
    docs = corpus(np.random.default_rng(4), 3)
    sharded = distributed.ShardedIndex.build(docs, tmp_path, shards=5, dim=DIM, num_cpus=0.25, start_timeout=120,
                                             fde=tokenset.FDE(DIM, reps=4, simhash_bits=3, seed=0))
    try:
        assert len(sharded) == 3
        ids, _ = sharded.search(docs[1][:3], k=5)
        assert ids[0, 0] == 1 and (ids[0, 3:] == -1).all()
    finally:
        sharded.close()


def test_more_workers_than_the_cluster_can_start_is_refused_at_once(local_ray, tmp_path):
    """2 shards x 2 CPUs on a 2-CPU Ray used to wait forever for workers that could never start."""
    docs = corpus(np.random.default_rng(5), 6)
    with pytest.raises(ValueError, match="need more CPUs than this Ray cluster has"):
        distributed.ShardedIndex.build(docs, tmp_path / "out", shards=2, dim=DIM, num_cpus=2,
                                       fde=tokenset.FDE(DIM, reps=4, simhash_bits=3, seed=0))
    assert not (tmp_path / "out").exists()  # refused before any shard was written
