"""Packaging, as a user or a packager meets it: a CPU-only wheel built from the checkout, its contents, installed in
a fresh virtual environment with no compiler on PATH and exercised from outside the source tree; an sdist that builds
a wheel in a clean folder. Two full builds (about 75 s each on 2 cores)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WHEEL_BUDGET = 2 << 20      # a CPU-only wheel, compressed (measured: 1.0 MiB: the module 0.8, the README 0.05)
CORE_BUDGET = 3 << 20       # its _core module (measured: 2.2 MiB with the int8 and residual-code kernels of 6 levels)
SDIST_BUDGET = 1 << 20      # the sdist (measured: 0.36 MiB)
REFERENCES = sorted(p.stem for p in (ROOT / "python" / "tokenset" / "reference").glob("*.py") if p.stem != "__init__")

pytestmark = pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None,
                                reason="builds from a git checkout")


def run(cmd, cwd, env=None, timeout=1200):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-5000:]}"
    return proc.stdout


def build_env():
    """The build's environment: a CPU-only build (TOKENSET_CUDA=OFF), whatever CI exported; no PYTHONPATH."""
    env = dict(os.environ, TOKENSET_CUDA="OFF")
    env.pop("PYTHONPATH", None)
    return env


def isolation_flags(tool):
    """Build without isolation where the build backend is installed (offline, faster), else with it."""
    have = all(importlib.util.find_spec(m) for m in ("scikit_build_core", "pybind11"))
    return {"pip": ["--no-build-isolation"], "build": ["--no-isolation"]}[tool] if have else []


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """The files git tracks, copied to a fresh folder: what a clean clone holds, without this tree's build outputs."""
    dest = tmp_path_factory.mktemp("checkout") / "tokenset"
    names = run(["git", "ls-files", "-z"], ROOT).split("\0")
    for name in filter(None, names):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return dest


@pytest.fixture(scope="module")
def cpu_wheel(checkout, tmp_path_factory):
    out = tmp_path_factory.mktemp("wheels")
    run([sys.executable, "-m", "pip", "wheel", *isolation_flags("pip"), "--no-deps", "-w", out, checkout], checkout,
        env=build_env())
    wheels = sorted(out.glob("tokenset-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contents(cpu_wheel, checkout):
    assert len(REFERENCES) >= 7, REFERENCES
    with zipfile.ZipFile(cpu_wheel) as z:
        names = z.namelist()
        for module in ("__init__", "__main__", "_backend", "_storage", "index/core", "index/files"):
            assert f"tokenset/{module}.py" in names, module
        for ref in REFERENCES:  # the references ship: users check their own results against them
            assert f"tokenset/reference/{ref}.py" in names, ref
        cores = [n for n in names if n.startswith("tokenset/_core.") and n.endswith(".so")]
        assert len(cores) == 1, names
        assert not [n for n in names if n.startswith("tokenset/_cuda")], "a TOKENSET_CUDA=OFF wheel has no CUDA module"
        assert not [n for n in names if n.startswith(("tests/", "csrc/", "benchmarks/", "build/"))]
        baked = {str(checkout).encode(), str(ROOT).encode(), str(checkout / "build").encode()}
        for name in names:  # no path of the machine that built it, in any file (RPATHs, __FILE__, build dirs)
            data = z.read(name)
            assert not [p for p in baked if p in data], f"{name} holds a source-tree path"
        assert z.getinfo(cores[0]).file_size < CORE_BUDGET
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert [r for r in requires if "extra ==" not in r] == ["Requires-Dist: numpy>=1.22"], requires
    assert os.path.getsize(cpu_wheel) < WHEEL_BUDGET


def test_wheel_installs_and_runs_without_a_compiler(cpu_wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], tmp_path)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = str(bin_dir)  # nothing else: no compiler, no cmake
    for compiler in ("cc", "gcc", "c++", "g++", "clang", "cmake", "nvcc"):
        assert shutil.which(compiler, path=env["PATH"]) is None, compiler
    run([python, "-m", "pip", "install", "--quiet", cpu_wheel], tmp_path, env=env, timeout=600)  # numpy from the index
    work = tmp_path / "elsewhere"  # outside the source tree: nothing importable but the installed package
    work.mkdir()
    info = json.loads(run([python, "-m", "tokenset", "info"], work, env=env))
    assert info["cuda"] is False and info["simd_active"] in info["simd_compiled"]
    shutil.copy(ROOT / "tests" / "wheel_smoke.py", work)
    out = run([python, "wheel_smoke.py"], work, env=env)
    assert "wheel smoke suite passed" in out, out


def test_sdist_builds_a_wheel_in_a_clean_folder(checkout, tmp_path):
    pytest.importorskip("build", reason='python -m build: pip install "tokenset[test]"')
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--sdist", *isolation_flags("build"), "--outdir", dist, checkout], checkout,
        env=build_env())
    sdists = sorted(dist.glob("tokenset-*.tar.gz"))
    assert len(sdists) == 1, sdists
    assert os.path.getsize(sdists[0]) < SDIST_BUDGET
    with tarfile.open(sdists[0]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        for needed in ("pyproject.toml", "CMakeLists.txt", "README.md", "csrc/bindings/core.cpp", "csrc/cuda/maxsim.cu",
                       "python/tokenset/__init__.py", "python/tokenset/reference/maxsim.py", "tests/wheel_smoke.py"):
            assert needed in names, needed
        assert not [n for n in names if n.startswith(("build/", ".git/")) or n.endswith((".so", ".pyc"))]
        clean = tmp_path / "clean"
        tar.extractall(clean, filter="data") if sys.version_info >= (3, 12) else tar.extractall(clean)
    source = next(clean.iterdir())
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", *isolation_flags("pip"), "--no-deps", "-w", wheels, source], clean,
        env=build_env())
    assert len(list(wheels.glob("tokenset-*.whl"))) == 1
