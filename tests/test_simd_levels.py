"""The run-time SIMD levels: which levels a CPU gets, the TOKENSET_SIMD cap, and the two builds of the avxvnni level
(VEX for AVX-VNNI CPUs, EVEX for AVX-512 VNNI CPUs without it). Each kernel's levels are compared with its scalar code
in that kernel's tests (the `simd` fixture)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tokenset
from conftest import SIMD_LEVELS

ORDER = list(tokenset._build.SIMD_LEVELS)


def cpu_flags():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    match = re.search(r"^flags\s*:(.*)$", text, re.M)
    return set(match.group(1).split()) if match else None


def test_levels_are_listed_in_order_and_the_best_is_supported():
    info = tokenset.build_info()
    assert [lvl for lvl in ORDER if lvl in info["simd_compiled"]] == info["simd_compiled"]
    assert info["simd_best"] == SIMD_LEVELS[-1]
    assert set(SIMD_LEVELS) <= set(info["simd_compiled"])


@pytest.mark.skipif("avxvnni" not in tokenset.build_info()["simd_compiled"], reason="no avxvnni level in this build")
def test_avx_vnni_encoding_follows_the_cpu():
    flags = cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    avx2 = {"avx2", "fma", "f16c"} <= flags
    if avx2 and "avx_vnni" in flags:
        expected = "vex"
    elif avx2 and {"avx512_vnni", "avx512vl"} <= flags:
        expected = "evex"
    else:
        expected = None
    assert tokenset.build_info()["avx_vnni"] == expected
    assert ("avxvnni" in SIMD_LEVELS) == (expected is not None)


@pytest.mark.parametrize("cap", ORDER)
def test_environment_cap_takes_the_best_supported_level_at_or_below_it(cap):
    # A CPU may support a level without one below it (AVX-512 without VNNI): the cap never picks an unsupported one.
    expected = [lvl for lvl in SIMD_LEVELS if ORDER.index(lvl) <= ORDER.index(cap)][-1]
    env = dict(os.environ, TOKENSET_SIMD=cap)
    out = subprocess.run([sys.executable, "-c", "import json, tokenset; print(json.dumps(tokenset.build_info()))"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["simd_active"] == expected
    assert info["simd_best"] == SIMD_LEVELS[-1]  # the cap limits the active level only


@pytest.mark.parametrize("name", ["bogus", "AVX2", " avx2", "avxvnni_evex"])
def test_an_unknown_environment_level_is_ignored_with_a_warning(name):
    env = dict(os.environ, TOKENSET_SIMD=name)
    out = subprocess.run([sys.executable, "-c", "import tokenset; print(tokenset.simd_level())"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == SIMD_LEVELS[-1]
    assert "is not a SIMD level and was ignored" in out.stderr and "avxvnni" in out.stderr


@pytest.mark.skipif("avxvnni" not in SIMD_LEVELS, reason="this CPU runs neither AVX-VNNI nor AVX-512 VNNI")
@pytest.mark.parametrize("kind", ["int8", "residual"])
def test_avxvnni_level_gives_the_scalar_bits(kind):
    """The level's own kernels (not the AVX2 ones it falls back to for other ops) on odd shapes: dims that leave a
    partial 4-byte word, rows in blocks of 6 with tails, query panels of 16 with tails."""
    rng = np.random.default_rng(7)
    results = {}
    for dim in (1, 3, 5, 32, 33, 64, 100, 128):
        if kind == "residual" and dim % 8:
            continue
        queries = [rng.standard_normal((n, dim)).astype(np.float32) for n in (1, 15, 16, 17, 40)]
        docs = [rng.standard_normal((n, dim)).astype(np.float32) for n in (0, 1, 5, 6, 7, 13, 61)]
        if kind == "int8":
            stored = tokenset.quantize(docs)
            query_input = tokenset.quantize(queries)
        else:
            codec = tokenset.ResidualCodec.train(np.concatenate([d for d in docs if len(d)]), bits=2, centroids=8, seed=1)
            stored = codec.encode(docs)
            query_input = queries
        for level in ("scalar", "avxvnni"):
            tokenset.set_simd_level(level)
            try:
                scores = np.asarray(tokenset.maxsim(query_input, stored))
                top = tokenset.maxsim_topk(query_input, stored, 3)
            finally:
                tokenset.set_simd_level(tokenset.build_info()["simd_best"])
            results[level] = (scores, np.asarray(top[0]), np.asarray(top[1]))
        for a, b in zip(results["scalar"], results["avxvnni"]):
            np.testing.assert_array_equal(a, b, err_msg=f"{kind} dim {dim}")


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not on PATH")
@pytest.mark.skipif("avxvnni" not in tokenset.build_info()["simd_compiled"], reason="no avxvnni level in this build")
def test_avxvnni_kernels_ship_in_both_encodings():
    """The VEX build is what AVX-VNNI CPUs run and cannot run here: check that it exists, VEX-encoded (first byte
    0xc4 / 0xc5; EVEX is 0x62), beside the EVEX build the tests above run."""
    core = Path(tokenset._backend._core.__file__)
    raw = subprocess.run(["objdump", "-d", str(core)], capture_output=True, text=True, timeout=300).stdout
    assert raw, "objdump gave no listing"
    encodings = {"vex": 0, "evex": 0}
    for line in raw.splitlines():
        if "vpdpbusd" in line and "%ymm" in line:
            first_byte = line.split("\t")[1].split()[0]
            encodings["evex" if first_byte == "62" else "vex"] += 1
    assert encodings["vex"] > 0 and encodings["evex"] > 0, encodings
