"""Build script for the compiled extension ``lipo_if._C``.

Metadata lives in ``pyproject.toml``; this file only declares the C++/CUDA extension.
The C++ (CPU) sources are always built. CUDA sources are added when a CUDA toolkit and a
CUDA build of torch are present, or when ``FORCE_CUDA=1``. Set ``LIPO_IF_NO_EXT=1`` to skip
the extension entirely (the package then runs on its pure-PyTorch path).
"""
from __future__ import annotations

import glob
import os
import runpy

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _split_policy_macros() -> list[tuple[str, str]]:
    """The column split constants of ``lipo_if/split_policy.py`` (their one definition) as compile
    definitions; loaded by path, since the package itself is not importable before it is built."""
    return runpy.run_path(os.path.join(ROOT, "lipo_if", "split_policy.py"))["compile_definitions"]()


def _extensions():
    if os.environ.get("LIPO_IF_NO_EXT") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    csrc = os.path.join("csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    if not sources:
        return [], {}
    cuda_sources = sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
    force_cuda = os.environ.get("FORCE_CUDA") == "1"
    use_cuda = bool(cuda_sources) and (force_cuda or (torch.cuda.is_available() and CUDA_HOME is not None))

    # -fopenmp: ATen's at::parallel_for is inlined from its headers, and without _OPENMP defined it
    # runs every loop on one thread. At run time libgomp.so.1 is the copy torch has already loaded.
    cxx_flags = ["-O3", "-g0", "-std=c++17", "-fopenmp"]
    if os.environ.get("LIPO_IF_NATIVE", "1") == "1" and not use_cuda:
        # The CPU kernels vectorize; -march=native lets the compiler use AVX-512 where present.
        cxx_flags.append("-march=native")
    define_macros = _split_policy_macros()
    extra = {"cxx": cxx_flags}
    if use_cuda:
        define_macros.append(("WITH_CUDA", None))
        extra["nvcc"] = ["-O3", "-std=c++17", "--expt-relaxed-constexpr"]
        ext = CUDAExtension(
            "lipo_if._C", sources + cuda_sources, define_macros=define_macros, extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension("lipo_if._C", sources, define_macros=define_macros, extra_compile_args=extra,
                           extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
