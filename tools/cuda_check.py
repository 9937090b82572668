"""Compile-check every CUDA source of the extension with ``nvcc -c`` (no GPU needed).

Usage: ``python tools/cuda_check.py [files.cu ...]`` (default: ``csrc/cuda/*.cu``).
Uses torch's include paths, the Python include dir and the split policy of lipo_if/split_policy.py;
writes objects to a temporary directory,
prints PASS/FAIL per file and exits non-zero when any file fails or nvcc is missing.
"""
from __future__ import annotations

import glob
import os
import runpy
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nvcc_command(source: str, obj: str) -> list[str]:
    """The ``nvcc -c`` command line for one ``.cu`` file (same defines as the real CUDA build)."""
    from torch.utils.cpp_extension import include_paths

    includes = [f"-I{p}" for p in [*include_paths(), sysconfig.get_paths()["include"]]]
    policy = runpy.run_path(os.path.join(ROOT, "lipo_if", "split_policy.py"))["compile_definitions"]()
    return [
        "nvcc", "-c", source, "-o", obj, *includes,
        "-std=c++17", "-O3", "--expt-relaxed-constexpr",
        "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", "-DTORCH_EXTENSION_NAME=_C", "-DWITH_CUDA",
        "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
        *(f"-D{name}={value}" for name, value in policy),
        "-Xcompiler", "-fPIC",
    ]


def check(source: str, outdir: str) -> tuple[bool, float, str]:
    """Compiles ``source``; returns (passed, seconds, combined compiler output)."""
    obj = os.path.join(outdir, os.path.basename(source) + ".o")
    start = time.perf_counter()
    proc = subprocess.run(nvcc_command(source, obj), capture_output=True, text=True, check=False)
    return proc.returncode == 0, time.perf_counter() - start, proc.stdout + proc.stderr


def main(argv: list[str]) -> int:
    if shutil.which("nvcc") is None:
        print("FAIL: nvcc not found on PATH")
        return 2
    sources = argv or sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    if not sources:
        print("FAIL: no .cu files found")
        return 2
    failures = 0
    with tempfile.TemporaryDirectory(prefix="lipo_if_nvcc_") as outdir:
        for src in sources:
            ok, secs, log = check(src, outdir)
            print(f"{'PASS' if ok else 'FAIL'} {os.path.relpath(src, ROOT)} ({secs:.0f} s)", flush=True)
            if not ok:
                failures += 1
                print(log)
    print(f"{len(sources) - failures}/{len(sources)} CUDA sources compile")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
