"""Index.save / load / verify as a user's folder sees them: nothing of theirs deleted, concurrent saves and loads from
threads and processes, special files refused, streamed saves in bounded memory, file modes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc

import numpy as np
import pytest

import tokenset
from tokenset.index import files as index_files

from conftest import held_by_another_thread, subprocess_env

DIM = 8


def tiny_index(n=60, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    index = tokenset.Index(DIM, fde=tokenset.FDE(DIM, reps=2, simhash_bits=2, seed=0), **kwargs)
    docs = [rng.standard_normal((int(m), DIM)).astype(np.float32) for m in rng.integers(1, 8, n)]
    index.add(docs)
    return index, docs


def generation_files(directory):
    with open(os.path.join(directory, "manifest.json")) as f:
        manifest = json.load(f)
    return {m["file"] for m in manifest["arrays"].values()} | {manifest["encoder"]["file"]}


def test_save_never_deletes_what_it_did_not_write(tmp_path):
    index, docs = tiny_index()
    # A folder of the user's data with no index in it is refused, untouched.
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "my_embeddings.npy", np.arange(3))
    (data / "notes.tmp").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no tokenset index"):
        index.save(data)
    assert sorted(os.listdir(data)) == ["my_embeddings.npy", "notes.tmp"]
    # So is a folder whose manifest.json is somebody else's.
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"name": "my project"}')
    with pytest.raises(ValueError, match="not a tokenset index manifest"):
        index.save(other)
    assert os.listdir(other) == ["manifest.json"]
    # Files put beside a saved index survive every later save; the previous generation does not.
    folder = tmp_path / "idx"
    index.save(folder)
    first = generation_files(folder)
    np.save(folder / "my_embeddings.npy", np.arange(3))
    (folder / "fde-notmine.encoder").write_text("mine")
    (folder / "leftover.npy.tmp").write_text("mine")
    index.remove([0, 1])
    index.save(folder)
    second = generation_files(folder)
    names = set(os.listdir(folder))
    assert not first & names and second <= names
    assert {"my_embeddings.npy", "fde-notmine.encoder", "leftover.npy.tmp"} <= names
    assert names == second | {"manifest.json", ".tokenset-index.lock", "my_embeddings.npy", "fde-notmine.encoder",
                              "leftover.npy.tmp"}
    assert np.array_equal(np.load(folder / "my_embeddings.npy"), np.arange(3))
    assert len(tokenset.Index.load(folder)) == len(docs) - 2


def test_interrupted_save_temporaries_are_cleaned_but_only_ours(tmp_path):
    index, _ = tiny_index()
    index.save(tmp_path)
    ours = tmp_path / ".tokens-0123456789ab.npy.0123456789abcdef.tmp"
    ours.write_bytes(b"partial")
    theirs = tmp_path / ".mine.0123456789abcdef.tmp"
    theirs.write_bytes(b"mine")
    index.save(tmp_path)
    assert not ours.exists() and theirs.exists()


def test_saved_files_follow_the_umask(tmp_path):
    index, _ = tiny_index()
    old = os.umask(0o022)
    try:
        index.save(tmp_path / "a")
    finally:
        os.umask(old)
    for name in os.listdir(tmp_path / "a"):
        assert os.stat(tmp_path / "a" / name).st_mode & 0o777 == 0o644, name


def test_concurrent_saves_leave_one_complete_generation(tmp_path):
    """2 threads x 15 trials saving two different indexes to one folder: 13 of 15 used to leave a folder that no
    longer loaded."""
    a, _ = tiny_index(40, seed=1)
    b, _ = tiny_index(70, seed=2)
    for trial in range(15):
        folder = tmp_path / f"t{trial}"
        errors = []

        def save(index):
            try:
                index.save(folder)
            except Exception as exc:  # noqa: BLE001 - any exception fails the test below
                errors.append(exc)

        threads = [threading.Thread(target=save, args=(ix,)) for ix in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        loaded = tokenset.Index.load(folder)
        loaded.verify()
        assert len(loaded) in (40, 70)
        assert set(os.listdir(folder)) == generation_files(folder) | {"manifest.json", ".tokenset-index.lock"}


def test_loads_racing_saves_never_fail(tmp_path):
    """Loads while another thread saves again and again: every load sees one complete generation (about 50 of 3,660
    loads used to fail, some with a raw FileNotFoundError)."""
    index, docs = tiny_index(30)
    index.save(tmp_path)
    stop = threading.Event()
    failures, loads = [], [0]

    def saver():
        while not stop.is_set():
            index.save(tmp_path)

    def loader():
        while not stop.is_set():
            try:
                loaded = tokenset.Index.load(tmp_path, mmap=bool(loads[0] % 2))
                assert len(loaded) == 30
                loads[0] += 1
            except Exception as exc:  # noqa: BLE001
                failures.append(repr(exc))

    threads = [threading.Thread(target=saver), threading.Thread(target=loader)]
    for t in threads:
        t.start()
    threads[1].join(timeout=4)
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    assert loads[0] > 20


def test_verify_after_load_then_save_into_the_same_folder(tmp_path):
    index, _ = tiny_index()
    index.save(tmp_path)
    loaded = tokenset.Index.load(tmp_path)
    loaded.remove([3])
    loaded.save(tmp_path)  # deletes the generation `loaded` was opened from
    loaded.verify()  # checks what it saved
    again = tokenset.Index.load(tmp_path)
    index.save(tmp_path)  # another Index replaces the generation
    with pytest.raises(ValueError, match="saved again"):
        again.verify()
    with pytest.raises(ValueError, match="checks the files of an index"):
        tiny_index()[0].verify()


def test_load_refuses_special_files(tmp_path):
    """A FIFO used to block load forever, and a symlink to /dev/zero to read until memory ran out."""
    index, _ = tiny_index()
    index.save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    encoder = tmp_path / manifest["encoder"]["file"]
    encoder.unlink()
    os.mkfifo(encoder)
    code = f"import tokenset; tokenset.Index.load({str(tmp_path)!r})"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=subprocess_env())
    assert run.returncode != 0 and "not a regular file" in run.stderr
    encoder.unlink()
    os.symlink("/dev/zero", encoder)
    with pytest.raises(ValueError, match="not a regular file"):
        tokenset.Index.load(tmp_path)
    tokens = tmp_path / manifest["arrays"]["tokens"]["file"]
    tokens.unlink()
    os.symlink("/dev/zero", tokens)
    with pytest.raises(ValueError, match="not a regular file"):
        tokenset.Index.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        tokenset.Index.load(tmp_path / "nothing-here")


def test_save_streams_in_blocks_and_round_trips(tmp_path, monkeypatch):
    """Save holds one block, not the corpus (it used to hold ~2x the live corpus): tokens, FDEs and ids are written
    from views of the live runs; with tiny blocks every array is cut into many pieces and still round-trips."""
    rng = np.random.default_rng(5)
    index = tokenset.Index(64, fde=tokenset.FDE(64, reps=2, simhash_bits=2, final_dim=64, seed=0), dtype="float32")
    index.add(rng.standard_normal((4000, 64, 64)).astype(np.float32))  # 65 MB of tokens
    index.remove(np.arange(0, 4000, 3))  # scattered tombstones: live documents gathered block by block
    monkeypatch.setattr(index_files, "BLOCK_BYTES", 4 << 20)
    tracemalloc.start()
    try:
        index.save(tmp_path / "big")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * (4 << 20), peak  # a block, its gather index, a chunk's rows: never the 65 MB corpus
    assert np.array_equal(tokenset.Index.load(tmp_path / "big").ids, index.ids)
    monkeypatch.setattr(index_files, "BLOCK_BYTES", 1000)
    small, docs = tiny_index(50)
    small.remove([0, 7, 8, 9, 49])
    long_doc = np.random.default_rng(6).standard_normal((200, DIM)).astype(np.float32)  # longer than a block
    small.add(docs[:3] + [long_doc, docs[4]], ids=[100, 101, 102, 103, 104])
    small.remove([101])  # the long document is gathered from a segment with a tombstone
    small.save(tmp_path / "small")
    loaded = tokenset.Index.load(tmp_path / "small")
    assert np.array_equal(loaded.ids, small.ids)
    for want, got in zip(small.exact_search(docs[:10] + [long_doc], 5), loaded.exact_search(docs[:10] + [long_doc], 5)):
        assert np.array_equal(want, got)
    assert loaded.exact_search(long_doc, 1)[0][0, 0] == 103


def test_saves_and_loads_from_processes(tmp_path):
    """Processes saving, loading, searching, adding and removing on one folder at once: afterwards it loads and
    holds exactly one complete generation."""
    index, _ = tiny_index(20)
    index.save(tmp_path)
    worker = textwrap.dedent(f"""
        import sys, numpy as np, tokenset
        rng = np.random.default_rng(int(sys.argv[1]))
        for step in range(12):
            index = tokenset.Index.load({str(tmp_path)!r})
            docs = [rng.standard_normal((3, {DIM})).astype(np.float32) for _ in range(4)]
            index.add(docs)
            index.remove(index.ids[:1])
            index.search(docs[0], k=3)
            index.save({str(tmp_path)!r})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", worker, str(seed)], env=subprocess_env(),
                              stderr=subprocess.PIPE, text=True) for seed in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    loaded = tokenset.Index.load(tmp_path)
    loaded.verify()
    # Each worker's save holds what it loaded + 3 (last writer wins): 20 + 3j documents for some j in 1..36.
    assert (len(loaded) - 20) % 3 == 0 and 23 <= len(loaded) <= 20 + 3 * 36
    assert set(os.listdir(tmp_path)) == generation_files(tmp_path) | {"manifest.json", ".tokenset-index.lock"}


def test_one_index_under_threads_adding_removing_searching_saving_loading(tmp_path):
    """Threads share one Index and one folder: adds, removes, searches, saves and loads at once. Nothing is lost or
    duplicated, every search answers from one consistent snapshot, and the folder ends with one complete
    generation that holds what the index holds."""
    index, docs = tiny_index(50)
    rng = np.random.default_rng(9)
    stop = threading.Event()
    errors, added, removed = [], [], []
    lock = threading.Lock()

    def guarded(body):
        def run():
            while not stop.is_set():
                try:
                    body()
                except Exception as exc:  # noqa: BLE001
                    errors.append(repr(exc))
                    return
        return run

    def add():
        new = index.add([rng.standard_normal((3, DIM)).astype(np.float32) for _ in range(5)])
        with lock:
            added.extend(new.tolist())

    def remove():
        with lock:
            pool = [i for i in added if i not in removed]
            pick = pool[:2]
            removed.extend(pick)
        if pick:
            index.remove(pick)

    def search():
        ids, scores = index.search(docs[:4], k=5, candidates=20)
        for row in ids:
            got = row[row >= 0]
            assert len(set(got.tolist())) == got.size  # no document twice in one answer

    def save():
        index.save(tmp_path)

    def load():
        loaded = tokenset.Index.load(tmp_path)
        assert len(np.unique(loaded.ids)) == len(loaded)

    index.save(tmp_path)
    threads = [threading.Thread(target=guarded(f)) for f in (add, remove, search, search, save, save, load)]
    for t in threads:
        t.start()
    stop.wait(3)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(index) == 50 + len(added) - len(removed)
    assert sorted(index.ids.tolist()) == sorted(set(range(50)) | set(added) - set(removed))
    index.save(tmp_path)
    loaded = tokenset.Index.load(tmp_path)
    loaded.verify()
    assert sorted(loaded.ids.tolist()) == sorted(index.ids.tolist())
    assert set(os.listdir(tmp_path)) == generation_files(tmp_path) | {"manifest.json", ".tokenset-index.lock"}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_fork_while_another_thread_saves(tmp_path):
    """A child forked while a thread of the parent holds the folder's save lock can save there once the parent is
    done (the inherited in-process lock used to stay held forever in the child), and the child's copy of the
    parent's descriptor does not keep the parent's lock held."""
    from tokenset import _storage

    index, _ = tiny_index(10)
    index.save(tmp_path)
    with held_by_another_thread(_storage.DirectoryLock(str(tmp_path), index_files.LOCK)):
        pid = os.fork()
        if pid == 0:  # the child waits for the parent's lock, then saves
            try:
                index.save(tmp_path)
                os._exit(0)
            except BaseException:  # noqa: BLE001
                os._exit(3)
    index.save(tmp_path)  # would wait forever if the child's copy of the descriptor kept the lock
    for _ in range(600):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        threading.Event().wait(0.1)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child never got the folder's lock")
    assert os.WEXITSTATUS(status) == 0
    assert len(tokenset.Index.load(tmp_path)) == 10


def test_failed_and_killed_saves_leave_no_files_behind(tmp_path, monkeypatch):
    """A save that fails (a full disk) removes the files it wrote; the files of a save killed before its manifest
    are removed by the next save (they used to stay forever: a full copy of the index per failure)."""
    from tokenset import _storage

    index, _ = tiny_index(30)
    index.save(tmp_path)
    clean = set(os.listdir(tmp_path))
    real = _storage.write_npy

    def full_disk(path, *args):
        if os.path.basename(str(path)).startswith("fde-"):
            raise OSError(28, "No space left on device")
        return real(path, *args)

    monkeypatch.setattr(_storage, "write_npy", full_disk)
    with pytest.raises(OSError, match="No space"):
        index.save(tmp_path)
    monkeypatch.setattr(_storage, "write_npy", real)
    assert set(os.listdir(tmp_path)) == clean
    code = textwrap.dedent(f"""
        import os, tokenset
        from tokenset import _storage
        index = tokenset.Index.load({str(tmp_path)!r}, mmap=False)
        real = _storage.atomic_write
        def dying(target, write):
            real(target, write)
            if os.path.basename(str(target)).endswith(".encoder"):
                os._exit(9)  # killed after every file of the generation, before its manifest
        _storage.atomic_write = dying
        index.save({str(tmp_path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert len(set(os.listdir(tmp_path)) - clean) == 5  # the orphaned generation
    index.save(tmp_path)
    assert set(os.listdir(tmp_path)) == generation_files(tmp_path) | {"manifest.json", ".tokenset-index.lock"}


def test_a_slow_load_under_repeated_saves_still_loads(tmp_path, monkeypatch):
    """A load slower than the saves replacing the generation (a slow disk): it used to give up after one retry and
    call a healthy folder damaged; after two tries it now opens the generation holding the folder's lock shared."""
    from tokenset import _storage

    index, _ = tiny_index(40)
    index.save(tmp_path)
    real = _storage.read_npy_file

    def slow(f, name, *args, **kwargs):
        if name.startswith("tokens-"):
            threading.Event().wait(0.3)
        return real(f, name, *args, **kwargs)

    stop = threading.Event()

    def saver():
        while not stop.is_set():
            index.save(tmp_path)
            stop.wait(0.02)

    thread = threading.Thread(target=saver)
    thread.start()
    monkeypatch.setattr(_storage, "read_npy_file", slow)
    try:
        assert len(tokenset.Index.load(tmp_path, mmap=False)) == 40
    finally:
        stop.set()
        thread.join()


def test_folder_edge_cases(tmp_path):
    from tokenset import _storage

    # Temporaries of an older tokenset (mkstemp names) are ours, not foreign content.
    index, _ = tiny_index(10)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".tokens-0123456789ab.npy.k3_x9q2z.tmp").write_bytes(b"partial")
    index.save(tmp_path / "a")
    assert ".tokens-0123456789ab.npy.k3_x9q2z.tmp" not in os.listdir(tmp_path / "a")
    # A damaged tokenset manifest is still ours: saving over it repairs the folder.
    manifest = tmp_path / "a" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"documents": 10', '"documents": 11'))
    with pytest.raises(ValueError, match="manifest.json does not match its checksum"):
        tokenset.Index.load(tmp_path / "a")
    index.save(tmp_path / "a")
    assert len(tokenset.Index.load(tmp_path / "a")) == 10
    # A crafted header whose element count wraps int64 (2^48+1 x 2^16 x 2 bytes = 2^65 + 2^17) is refused by its
    # size, naming the file, not by numpy.
    crafted = tmp_path / "crafted.npy"
    shape = (2**48 + 1, 65536)
    with open(crafted, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f2", "fortran_order": False, "shape": shape})
        f.write(bytes(1 << 17))
    for mmap in (True, False):
        with open(crafted, "rb") as f:
            with pytest.raises(ValueError, match="crafted.npy is .* bytes, its header says"):
                _storage.read_npy_file(f, "crafted.npy", np.float16, shape, mmap, ValueError)


def test_an_index_with_an_empty_document_loads_and_searches(tmp_path):
    """A memory-mapped empty document (its slice is a plain ndarray) made every search of a loaded index fail."""
    index = tokenset.Index(DIM, fde=tokenset.FDE(DIM, reps=2, simhash_bits=2, seed=0))
    z, q = np.zeros((0, DIM), np.float32), np.ones((3, DIM), np.float32)
    index.add([z, q, z])
    index.save(tmp_path)
    for mmap in (True, False):
        ids, scores = tokenset.Index.load(tmp_path, mmap=mmap).search(q, k=3)
        assert ids[0, 0] == 1 and np.array_equal(ids, index.search(q, k=3)[0])


def test_save_with_empty_documents_among_tombstones(tmp_path):
    """Live documents without tokens gathered from a segment with tombstones made a zero-row block that the writer
    could not cast (save failed on a valid index)."""
    index = tokenset.Index(DIM, fde=tokenset.FDE(DIM, reps=2, simhash_bits=2, seed=0))
    z, q = np.zeros((0, DIM), np.float32), np.ones((3, DIM), np.float32)
    index.add([z, q, z, z])
    index.remove([1, 2])
    index.save(tmp_path)
    assert sorted(tokenset.Index.load(tmp_path).ids.tolist()) == [0, 3]


def test_user_files_that_look_like_ours_survive(tmp_path):
    """A new folder holding only a user's file named like a generation file, and users' dot-files named like an
    older tokenset's temporaries of the manifest: none is deleted (only files of folders tokenset saved before, and
    temporaries of its generation files, are)."""
    index, _ = tiny_index(10)
    (tmp_path / "tokens-000000000001.npy").write_bytes(b"mine")
    index.save(tmp_path)
    for name in (".manifest.json.original.tmp", ".manifest.json.backup_1.tmp"):
        (tmp_path / name).write_text("mine")
    index.save(tmp_path)
    names = set(os.listdir(tmp_path))
    assert {"tokens-000000000001.npy", ".manifest.json.original.tmp", ".manifest.json.backup_1.tmp"} <= names


def test_a_planted_lock_file_that_is_not_a_file_is_refused(tmp_path):
    from tokenset import _storage

    os.mkfifo(tmp_path / index_files.LOCK)
    for lock in (_storage.DirectoryLock, _storage.SharedDirectoryLock):
        with pytest.raises(ValueError, match="not a regular file"):
            with lock(str(tmp_path), index_files.LOCK):
                pass


def test_concurrent_saves_without_a_working_lock_never_delete_each_others_files(tmp_path):
    """Where flock does not exist (Windows) or does not exclude (some network file systems), two processes saving
    at once must still leave a loadable folder: a save deletes only what the manifest it replaced named."""
    index, _ = tiny_index(30)
    index.save(tmp_path)
    worker = textwrap.dedent(f"""
        import sys
        sys.modules["fcntl"] = None  # no flock: saves exclude only threads of their own process
        import tokenset
        index = tokenset.Index.load({str(tmp_path)!r}, mmap=False)
        for _ in range(25):
            index.save({str(tmp_path)!r})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", worker], env=subprocess_env(), stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    loaded = tokenset.Index.load(tmp_path)
    loaded.verify()
    assert len(loaded) == 30
