"""The native HVPs (lipo_if.influence.native_hvp: Gauss–Newton and exact) against the autograd reference.

Small random MLPs with odd sizes, float64, sparse (fingerprint-like) and dense inputs, weight
decay included exactly as HessianOperator defines it. No RDKit, no extension required (without
lipo_if._C the native products run on the pure-PyTorch twins of the sparse kernels).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lipo_if.influence import HessianOperator, SolverConfig, solve
from lipo_if.influence.native_hvp import NativeHessian, native_unsupported_reason, select_hvp
from lipo_if.model import ModelConfig, build_model

REPO = Path(__file__).resolve().parents[1]
WD = 0.0137


def make_problem(n=61, bits=45, dense=8, hidden=(17, 9), density=0.05, seed=0, dtype=torch.float32):
    """Random MLP (bits + dense → hidden → 1) and data; density=1.0 gives a fully dense input."""
    gen = torch.Generator().manual_seed(seed)
    model = build_model(ModelConfig(in_dim=bits + dense, hidden=hidden), seed=seed).to(dtype)
    with torch.no_grad():  # biases away from zero so that ReLU masks are mixed
        for layer in model.layers:
            layer.bias.add_(0.1 * torch.randn(layer.bias.shape, generator=gen).to(dtype))
    if density < 1.0:
        x_bits = (torch.rand(n, bits, generator=gen) < density).to(dtype)
    else:
        x_bits = torch.randn(n, bits, generator=gen).to(dtype)
    X = torch.cat([x_bits, torch.randn(n, dense, generator=gen).to(dtype)], 1)
    y = torch.randn(n, generator=gen).to(dtype)
    return model, X, y


@pytest.mark.parametrize("kind", ["gauss-newton", "exact"])
@pytest.mark.parametrize("density", [0.05, 1.0])
@pytest.mark.parametrize("hidden", [(17, 9), (13,), (11, 7, 5)])
def test_native_hvp_equals_autograd(kind, density, hidden):
    """Full-batch (in chunks), minibatch by indices, arbitrary batch, with λ·v: every element
    (the exact Hessian against HessianOperator's double backward)."""
    model, X, y = make_problem(hidden=hidden, density=density, seed=len(hidden))
    op = HessianOperator(model, X, y, WD, kind=kind, chunk_size=19)  # 61 rows → 4 chunks
    native = NativeHessian(op)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(op.n_params, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(native.matvec(v), op.matvec(v), rtol=1e-12, atol=1e-13)
        idx = op.sample_indices(23, gen)
        batch = (op.X[idx], op.y[idx])
        expected = op.matvec(v, batch)
        torch.testing.assert_close(native.matvec(v, batch), expected, rtol=1e-12, atol=1e-13)
        got = native.from_internal(native.matvec_internal(native.to_internal(v), idx))
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13)
    one = torch.tensor([5])  # batch of one row
    torch.testing.assert_close(native.from_internal(native.matvec_internal(native.to_internal(v), one)),
                               op.matvec(v, (op.X[one], op.y[one])), rtol=1e-12, atol=1e-13)


def test_native_weight_decay_term_and_zero_decay():
    """matvec(v) − matvec(v) at λ = 0 is exactly λ·v (the HessianOperator definition)."""
    model, X, y = make_problem(seed=3)
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    with_wd = NativeHessian(HessianOperator(model, X, y, WD)).matvec(v)
    without = NativeHessian(HessianOperator(model, X, y, 0.0)).matvec(v)
    torch.testing.assert_close(with_wd - without, WD * v, rtol=1e-10, atol=1e-13)


def test_layout_round_trip_is_an_orthogonal_permutation():
    model, X, y = make_problem(seed=4)
    native = NativeHessian(HessianOperator(model, X, y, WD))
    v = torch.randn(native.n_params, dtype=torch.float64)
    internal = native.to_internal(v)
    assert torch.equal(native.from_internal(internal), v)
    assert torch.equal(torch.sort(internal).values, torch.sort(v).values)
    w0 = v[: 17 * 53].view(17, 53)
    assert torch.equal(internal[: 17 * 53].view(53, 17), w0.T)


def test_native_exact_differs_from_gauss_newton():
    """The exact product carries the residual-weighted second-order term: it is not the GN one."""
    model, X, y = make_problem(seed=7)
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    exact = NativeHessian(HessianOperator(model, X, y, WD, kind="exact")).matvec(v)
    gn = NativeHessian(HessianOperator(model, X, y, WD, kind="gauss-newton")).matvec(v)
    assert float(torch.linalg.vector_norm(exact - gn) / torch.linalg.vector_norm(gn)) > 1e-3


@pytest.mark.parametrize("density", [0.05, 1.0])
def test_lissa_native_and_autograd_agree(density):
    """Same seed → same minibatches → the two LiSSA solutions agree to rounding, and both are
    close to the direct solve."""
    model, X, y = make_problem(n=80, density=density, seed=5)
    op = HessianOperator(model, X, y, WD)
    v = op.gradient(X[:20], y[:20])
    common = dict(damping=0.05, scale=20.0, depth=150, batch_size=16, tol=1e-10, progress=False, seed=3)
    native = solve(op, v, "lissa", SolverConfig(hvp="native", **common))
    reference = solve(op, v, "lissa", SolverConfig(hvp="autograd", **common))
    assert native.info["hvp"] == "native" and reference.info["hvp"] == "autograd"
    assert native.iterations == reference.iterations
    torch.testing.assert_close(native.s, reference.s, rtol=1e-9, atol=1e-12)
    assert native.info["relative_residual"] == pytest.approx(reference.info["relative_residual"], rel=1e-6)
    # full-batch native LiSSA heads to the CG solution (contraction 1 − μ/scale per step), and
    # native CG equals autograd CG
    full = dict(common, batch_size=10_000, depth=2000, scale="auto")
    s_lissa = solve(op, v, "lissa", SolverConfig(hvp="native", **full)).s
    s_cg = solve(op, v, "cg", SolverConfig(hvp="native", damping=0.05, tol=1e-12, progress=False)).s
    s_cg_ref = solve(op, v, "cg", SolverConfig(hvp="autograd", damping=0.05, tol=1e-12, progress=False)).s
    torch.testing.assert_close(s_cg, s_cg_ref, rtol=1e-8, atol=1e-10)
    assert float(torch.linalg.vector_norm(s_lissa - s_cg) / torch.linalg.vector_norm(s_cg)) < 1e-4


def test_auto_selection_and_unsupported_cases():
    model, X, y = make_problem(seed=6)
    gn = HessianOperator(model, X, y, WD, kind="gauss-newton")
    exact = HessianOperator(model, X, y, WD, kind="exact")
    block = HessianOperator(model, X, y, WD, params=["layers.2.weight"])
    assert isinstance(select_hvp(gn, "auto"), NativeHessian)
    assert isinstance(select_hvp(exact, "auto"), NativeHessian) and select_hvp(exact, "auto").exact
    assert select_hvp(gn, "autograd") is gn
    assert select_hvp(block, "auto") is block
    assert native_unsupported_reason(exact) is None
    assert "full parameter vector" in native_unsupported_reason(block)
    with pytest.raises(ValueError, match="native HVP unavailable"):
        select_hvp(block, "native")
    with pytest.raises(ValueError, match="unknown hvp backend"):
        select_hvp(gn, "fast")
    with pytest.raises(ValueError, match="hvp must be one of"):
        SolverConfig(hvp="fast")
    # exact-Hessian solves: native by default, autograd on request, the same solution
    native = solve(exact, gn.gradient(), "cg", SolverConfig(damping=1.0, tol=1e-12, progress=False))
    reference = solve(exact, gn.gradient(), "cg", SolverConfig(damping=1.0, tol=1e-12, progress=False, hvp="autograd"))
    assert native.info["hvp"] == "native" and reference.info["hvp"] == "autograd"
    torch.testing.assert_close(native.s, reference.s, rtol=1e-8, atol=1e-10)
    # restricted blocks stay on autograd
    assert solve(block, block.gradient(), "cg", SolverConfig(damping=1.0, progress=False)).info["hvp"] == "autograd"


def test_native_hvp_without_extension():
    """LIPO_IF_NO_EXT=1: one warning, pure-PyTorch backend, native HVP still equals autograd."""
    code = (
        "import warnings, torch\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from lipo_if import ops\n"
        "    from lipo_if.influence import HessianOperator\n"
        "    from lipo_if.influence.native_hvp import NativeHessian\n"
        "msgs = [str(w.message) for w in caught if 'lipo_if._C is not available' in str(w.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert ops.backend() == 'pytorch'\n"
        "from lipo_if.model import ModelConfig, build_model\n"
        "torch.manual_seed(0)\n"
        "m = build_model(ModelConfig(in_dim=20, hidden=(7, 5)), seed=0)\n"
        "X = (torch.rand(30, 20) < 0.1).float(); y = torch.randn(30)\n"
        "op = HessianOperator(m, X, y, 0.01, chunk_size=11)\n"
        "v = torch.randn(op.n_params, dtype=torch.float64)\n"
        "torch.testing.assert_close(NativeHessian(op).matvec(v), op.matvec(v), rtol=1e-12, atol=1e-13)\n"
        "print('OK')\n"
    )
    env = {**os.environ, "LIPO_IF_NO_EXT": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("LIPO_IF_JIT", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


_SCORES_SCRIPT = """
import json, sys, torch
from lipo_if import ops
from lipo_if.influence import HessianOperator, SolverConfig, solve
from lipo_if.influence.scores import influence_scores
from lipo_if.model import ModelConfig, build_model
gen = torch.Generator().manual_seed(3)
m = build_model(ModelConfig(in_dim=53, hidden=(19, 7)), seed=3)
X = torch.cat([(torch.rand(90, 45, generator=gen) < 0.06).float(), torch.randn(90, 8, generator=gen)], 1)
y = torch.randn(90, generator=gen)
Xv, yv = X[:23] + 0.1, y[:23]
Xe = torch.cat([(torch.rand(41, 45, generator=gen) < 0.06).float(), torch.randn(41, 8, generator=gen)], 1)
ye = torch.randn(41, generator=gen)
op = HessianOperator(m, X, y, 0.01, dtype=torch.float32)
cfg = SolverConfig(damping=0.5, scale=40.0, depth=60, batch_size=32, tol=0.0, seed=1, progress=False)
res = solve(op, op.gradient(Xv, yv), "lissa", cfg)
scores = influence_scores(op, res.s, Xe, ye)
print(json.dumps({"backend": ops.backend(), "hvp": res.info["hvp"], "scores": scores.tolist()}))
"""


def _scores_in_subprocess(no_ext: bool) -> dict:
    import json

    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("LIPO_IF_JIT", None)
    env.pop("LIPO_IF_NO_EXT", None)
    if no_ext:
        env["LIPO_IF_NO_EXT"] = "1"
    proc = subprocess.run([sys.executable, "-c", _SCORES_SCRIPT], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_end_to_end_scores_identical_with_and_without_extension():
    """LiSSA solve + scoring in float32: compiled kernels vs the pure-PyTorch path, same seed."""
    from lipo_if import ops

    if ops.backend() == "pytorch":
        pytest.skip("extension not built: nothing to compare against")
    with_ext, without = _scores_in_subprocess(False), _scores_in_subprocess(True)
    assert with_ext["backend"] in ("cpp", "cpp+cuda") and without["backend"] == "pytorch"
    assert with_ext["hvp"] == without["hvp"] == "native"
    a, b = torch.tensor(with_ext["scores"]), torch.tensor(without["scores"])
    assert a.abs().max() > 0
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
