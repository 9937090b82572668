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


def _fused_problem(inputs: str, seed: int):
    """Inputs for the fused LiSSA step: fingerprint bits + a descriptor block (one column range),
    the same columns shuffled (scattered dense columns), a fully dense input (every column in
    the GEMM part), bits only; the last two with one bit set in ≈40 % of the rows (a dense column
    outside the descriptor range)."""
    if inputs == "dense":
        return make_problem(n=70, density=1.0, seed=seed)
    model, X, y = make_problem(n=70, dense=0 if inputs == "bits-only" else 8, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    if inputs != "block":
        X[:, 3] = (torch.rand(X.shape[0], generator=gen) < 0.4).to(X.dtype)  # a frequent bit: dense column
    if inputs == "scattered":
        perm = torch.randperm(X.shape[1], generator=gen)
        X = X[:, perm]
        with torch.no_grad():
            model.layers[0].weight.copy_(model.layers[0].weight[:, perm])
    return model, X, y


@pytest.mark.parametrize("kind", ["gauss-newton", "exact"])
@pytest.mark.parametrize("inputs", ["block", "scattered", "dense", "bits-only"])
def test_fused_lissa_step_equals_product_then_update(kind, inputs):
    """lissa_step_ (fused first block, CSR training input) = matvec_internal + ops.lissa_step to
    rounding, step by step over 12 minibatches (sizes 1, 23 and the whole set), norms included."""
    from lipo_if import ops

    model, X, y = _fused_problem(inputs, seed=11)
    native = NativeHessian(HessianOperator(model, X, y, WD, kind=kind))
    split = native._sparse_input
    if inputs == "block":
        assert split.dense_range is not None and split.csr.nnz > 0
    if inputs == "scattered":
        assert split.dense_range is None and split.dense_cols.numel() == 9
    if inputs == "dense":
        assert split.dense_cols.numel() == X.shape[1] and split.csr.nnz == 0
    if inputs == "bits-only":
        assert split.dense_cols.tolist() == [3]
    gen = torch.Generator().manual_seed(2)
    v = native.to_internal(torch.randn(native.n_params, generator=gen, dtype=torch.float64))
    h_ref, h_fused = v.clone(), v.clone()
    damping, scale = 0.05 + WD / 20.0, 20.0
    for step in range(12):
        idx = torch.arange(70) if step == 5 else torch.randperm(70, generator=gen)[: (1 if step == 3 else 23)]
        hv = native.matvec_internal(h_ref, idx, weight_decay=False)
        h_ref, step_ref = ops.lissa_step(h_ref, v, hv, damping, scale)
        step_norm, h_norm = native.lissa_step_(h_fused, v, idx, damping, scale)
        torch.testing.assert_close(h_fused, h_ref, rtol=1e-12, atol=1e-13)
        assert step_norm == pytest.approx(float(step_ref), rel=1e-10)
        assert h_norm == pytest.approx(float(torch.linalg.vector_norm(h_ref)), rel=1e-12)


@pytest.mark.parametrize("kind", ["gauss-newton", "exact"])
def test_lissa_solve_fused_and_unfused_agree(kind):
    """solve() through the fused step (default) and through product + lissa_step: the same
    solution to rounding and the same per-step trace."""
    model, X, y = _fused_problem("scattered", seed=12)
    op = HessianOperator(model, X, y, WD, kind=kind)
    v = op.gradient(X[:15], y[:15])
    cfg = SolverConfig(damping=0.3, scale=25.0, depth=60, batch_size=17, tol=0.0, progress=False, seed=4,
                       check_definite=False)
    fused_op, plain_op = NativeHessian(op), NativeHessian(op)
    plain_op.fused_lissa = False
    fused, plain = solve(fused_op, v, "lissa", cfg), solve(plain_op, v, "lissa", cfg)
    torch.testing.assert_close(fused.s, plain.s, rtol=1e-11, atol=1e-13)
    for a, b in zip(fused.trace, plain.trace):
        assert a["step_norm"] == pytest.approx(b["step_norm"], rel=1e-9)
        assert a["h_norm"] == pytest.approx(b["h_norm"], rel=1e-11)


def _problem_with_dead_units(all_dead_layer: bool):
    """hidden (11, 7, 5) with units off on every training row: in layer 2 units 1 and 4 (unit 4
    wakes up on inputs scaled ×40), in layer 3 unit 0 — or, with ``all_dead_layer``, every unit of
    layer 3. Also returns an input batch on which unit 4 of layer 2 is on."""
    model, X, y = make_problem(n=61, hidden=(11, 7, 5), seed=21)
    layers = model.layers
    with torch.no_grad():
        h1 = torch.relu(layers[0](X))
        layers[1].weight[4] = 1.0
        layers[1].bias[4] = -(float(h1.sum(1).max()) + 1.0)  # off on the training rows, on for large inputs
        layers[1].bias[1] = -1e3
        if all_dead_layer:
            layers[2].bias[:] = -1e3
        else:
            layers[2].bias[0] = -1e3
        X_awake = 40.0 * X[:9]
        assert float(layers[1](torch.relu(layers[0](X_awake)))[:, 4].max()) > 0  # the batch wakes unit 4 up
    return model, X, y, X_awake


@pytest.mark.parametrize("kind", ["gauss-newton", "exact"])
@pytest.mark.parametrize("all_dead_layer", [False, True])
def test_dead_units_dropped_products_unchanged(kind, all_dead_layer):
    """Units off on every training row leave the products; training-row products (full set,
    minibatch, fused step) stay equal to autograd and to the full-width products, and a batch on
    which a dropped unit is on still gets the exact product (run at full width)."""
    from lipo_if import ops

    model, X, y, X_awake = _problem_with_dead_units(all_dead_layer)
    op = HessianOperator(model, X, y, WD, kind=kind, chunk_size=19)
    native, full_width = NativeHessian(op), NativeHessian(op, drop_dead_units=False)
    live = [int((m.sum(0) != 0).sum()) for m in full_width.masks]
    assert [m.shape[1] for m in full_width.masks] == [11, 7, 5]
    assert [m.shape[1] for m in native.masks] == [11, *live[1:]]  # the first hidden layer is never cut
    assert 0 < live[1] <= 5 and (live[2] == 0 if all_dead_layer else 0 < live[2] <= 4)
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(op.n_params, generator=gen, dtype=torch.float64)
    internal = native.to_internal(v)
    assert torch.equal(native.from_internal(internal), v)
    assert torch.equal(torch.sort(internal).values, torch.sort(v).values)
    torch.testing.assert_close(native.matvec(v), op.matvec(v), rtol=1e-12, atol=1e-13)
    idx = op.sample_indices(23, gen)
    expected = op.matvec(v, (op.X[idx], op.y[idx]))
    torch.testing.assert_close(native.from_internal(native.matvec_internal(internal, idx)), expected,
                               rtol=1e-12, atol=1e-13)
    awake = (X_awake, y[:9])
    torch.testing.assert_close(native.matvec(v, awake), op.matvec(v, awake), rtol=1e-12, atol=1e-13)
    # the fused LiSSA step (tail block with dropped rows and columns) equals the full-width one
    damping, scale = 0.05, 20.0
    w = full_width.to_internal(v)
    h_native, h_full = internal.clone(), w.clone()
    for _ in range(4):
        idx = op.sample_indices(23, gen)
        norms = native.lissa_step_(h_native, internal, idx, damping, scale)
        assert norms == pytest.approx(full_width.lissa_step_(h_full, w, idx, damping, scale), rel=1e-12)
        torch.testing.assert_close(native.from_internal(h_native), full_width.from_internal(h_full),
                                   rtol=1e-12, atol=1e-13)
    hv = native.matvec_internal(h_native, idx, weight_decay=False)
    torch.testing.assert_close(native.from_internal(ops.lissa_step(h_native, internal, hv, damping, scale)[0]),
                               full_width.from_internal(ops.lissa_step(h_full, w, full_width.matvec_internal(
                                   h_full, idx, weight_decay=False), damping, scale)[0]), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kind", ["gauss-newton", "exact"])
@pytest.mark.parametrize("hidden", [(17, 9), (11, 7, 5), (13,)])
def test_folded_head_equals_layer_by_layer(kind, hidden):
    """The folded last hidden layer + output layer (default) gives the layer-by-layer products:
    full set, minibatch, a batch of other rows, and fused LiSSA steps; one hidden layer: no fold."""
    model, X, y = make_problem(hidden=hidden, seed=31)
    op = HessianOperator(model, X, y, WD, kind=kind, chunk_size=19)
    folded, plain = NativeHessian(op), NativeHessian(op, fold_head=False)
    assert folded.fold_head == (len(hidden) >= 2) and (folded.proj is not None) == folded.fold_head
    assert not plain.fold_head and plain.proj is None
    gen = torch.Generator().manual_seed(8)
    v = torch.randn(op.n_params, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(folded.matvec(v), plain.matvec(v), rtol=1e-12, atol=1e-13)
    idx = op.sample_indices(23, gen)
    torch.testing.assert_close(folded.matvec_internal(folded.to_internal(v), idx),
                               plain.matvec_internal(plain.to_internal(v), idx), rtol=1e-12, atol=1e-13)
    other = (torch.randn(7, X.shape[1], generator=gen, dtype=X.dtype), torch.randn(7, generator=gen, dtype=X.dtype))
    torch.testing.assert_close(folded.matvec(v, other), op.matvec(v, other), rtol=1e-12, atol=1e-13)
    hf, hp = folded.to_internal(v), plain.to_internal(v)
    vf, vp = hf.clone(), hp.clone()
    for _ in range(3):
        idx = op.sample_indices(23, gen)
        assert folded.lissa_step_(hf, vf, idx, 0.05, 20.0) == pytest.approx(plain.lissa_step_(hp, vp, idx, 0.05, 20.0),
                                                                            rel=1e-12)
    torch.testing.assert_close(folded.from_internal(hf), plain.from_internal(hp), rtol=1e-12, atol=1e-13)


def test_fused_lissa_step_rejects_aliasing():
    model, X, y = make_problem(seed=13)
    native = NativeHessian(HessianOperator(model, X, y, WD))
    h = torch.zeros(native.n_params, dtype=torch.float64)
    with pytest.raises(ValueError, match="distinct"):
        native.lissa_step_(h, h, torch.arange(5), 0.1, 2.0)


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
