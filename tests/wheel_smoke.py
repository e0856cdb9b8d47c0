"""A smoke suite for an installed tokenset wheel, run from outside the source tree by tests/test_wheel.py and by
cibuildwheel's test command: a silent import from the installed package, MaxSim against its numpy reference at every
SIMD level the CPU runs, FDE and k-center against theirs, top-k, an index saved / loaded / verified, prune and merge.
Needs only numpy. Prints one line per check and exits non-zero on a failure."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np


def check(name, ok):
    print(f"{'ok  ' if ok else 'FAIL'} {name}")
    if not ok:
        sys.exit(1)


def main() -> None:
    # Import silently: a CUDA build on a machine without a GPU (or with too old a driver) must not print.
    run = subprocess.run([sys.executable, "-c", "import tokenset"], capture_output=True, text=True)
    check("import prints nothing", run.returncode == 0 and run.stdout == "" and run.stderr == "")

    import tokenset
    from tokenset import reference

    here = os.path.dirname(os.path.abspath(tokenset.__file__))
    check(f"imported from the installed package ({here})", "site-packages" in here or "dist-packages" in here)
    info = tokenset.build_info()
    check(f"build_info: {info['simd_active']} of {info['simd_compiled']}, cuda={info['cuda']}",
          info["simd_active"] in info["simd_compiled"])
    if info["cuda"] and info["cuda_devices"] == 0:  # a CUDA build here: any CUDA call says why it cannot run
        try:
            tokenset._backend.cuda()
            check("CUDA call without a usable GPU is refused", False)
        except RuntimeError as exc:
            check("CUDA call without a usable GPU says why", "cannot run here" in str(exc))

    rng = np.random.default_rng(0)
    q = [rng.standard_normal((n, 32)).astype(np.float32) for n in (3, 7)]
    d = [rng.standard_normal((n, 32)).astype(np.float32) for n in (1, 5, 9, 0)]
    for level in info["simd_compiled"]:
        if level == "amx" and info["simd_best"] != "amx":
            continue
        try:
            tokenset.set_simd_level(level)
        except ValueError:
            continue  # built but not supported by this CPU
        got = tokenset.maxsim(q, d)
        want = reference.maxsim.maxsim(q, d)
        check(f"maxsim == reference ({level})", np.allclose(got, want, rtol=1e-5, atol=1e-5, equal_nan=True))
    tokenset.set_simd_level(info["simd_best"])
    scores, ids = tokenset.maxsim_topk(q, d, 2)
    check("maxsim_topk", ids.shape == (2, 2) and (ids >= 0).all())
    fde = tokenset.FDE(32, reps=4, simhash_bits=3, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        fde.save(os.path.join(tmp, "e.fde"))
        check("FDE save/load", tokenset.FDE.load(os.path.join(tmp, "e.fde")) == fde)
        check("FDE == reference", np.allclose(fde.encode_documents(d), reference.fde.encode(
            d, fde.simhash, fde.projection, documents=True, fill_empty=fde.fill_empty), atol=1e-4))
        index = tokenset.Index(32, fde=fde)
        index.add(d[:3])
        index.save(os.path.join(tmp, "idx"))
        loaded = tokenset.Index.load(os.path.join(tmp, "idx"))
        loaded.verify()
        check("Index save/load/search", loaded.search(d[1], k=1)[0][0, 0] == 1)
    picks = tokenset.kcenter(d[2], 4)
    check("kcenter == reference", np.array_equal(np.asarray(picks).reshape(-1), reference.kcenter.kcenter_set(d[2], 4)[0]))
    pruned = tokenset.prune(d[:3], 2, method="divprune")
    check("prune", pruned.lengths.tolist() == [1, 2, 2])
    merged = tokenset.merge(d[:3], 2, method="tome")
    check("merge", merged.sizes.sum() == 15)
    print("wheel smoke suite passed")


if __name__ == "__main__":
    main()
