"""Math of lipo_if.influence on tiny float64 problems: HVPs, solvers, per-sample gradient dots.

No RDKit: every test builds its own small MLP and random data.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch

from lipo_if import ops, ops_reference
from lipo_if.influence.hvp import HessianOperator, ParamBlock, dense_hessian, flatten_tensors, unflatten_vector
from lipo_if.influence.scores import (
    grad_dot_fast,
    grad_dot_reference,
    influence_scores,
    per_sample_grads,
    renormalization_offset,
)
from lipo_if.influence.solvers import (
    AUTO_DAMPING_FRACTION,
    LissaDivergenceError,
    NegativeCurvatureError,
    SolverConfig,
    solve,
)
from lipo_if.influence.spectrum import estimate_spectrum
from lipo_if.model import ModelConfig, build_model, objective

# torch.func jvp registers its decompositions through the deprecated torch.jit.script (torch-internal).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

WD = 0.01
D_IN = 5


def make_problem(n: int = 64, hidden: tuple[int, ...] = (8, 6), steps: int = 300, seed: int = 0):
    """A small MLP fitted (roughly) to a smooth target, and its training data."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, D_IN, generator=gen)
    y = torch.sin(X[:, 0]) + 0.5 * X[:, 1] - 0.3 * X[:, 2] ** 2 + 0.1 * torch.randn(n, generator=gen)
    model = build_model(ModelConfig(D_IN, hidden), seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        objective(model, X, y, WD).backward()
        opt.step()
    return model.eval(), X, y


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead (and contend on a shared 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def problem():
    return make_problem()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def quiet(**kw) -> SolverConfig:
    return SolverConfig(progress=False, **kw)


# --------------------------------------------------------------------------- flattening and HVPs


def test_flatten_roundtrip():
    tensors = [torch.randn(3, 4), torch.randn(2), torch.randn(1, 1, 5)]
    flat = flatten_tensors(tensors)
    assert flat.shape == (19,)
    for a, b in zip(unflatten_vector(flat, [t.shape for t in tensors]), tensors):
        assert torch.equal(a, b)
    block = ParamBlock(("a", "b"), (torch.Size([2, 2]), torch.Size([3])))
    assert block.n_params == 7
    assert torch.equal(block.flatten(block.unflatten(torch.arange(7.0))), torch.arange(7.0))
    with pytest.raises(ValueError, match="vector of 19"):
        unflatten_vector(torch.zeros(18), [t.shape for t in tensors])


@pytest.mark.parametrize("kind", ["exact", "gauss-newton"])
@pytest.mark.parametrize("params", [None, ["layers.1.bias", "layers.2.weight", "layers.2.bias"]])
def test_hvp_matches_dense_matrix(problem, kind, params):
    model, X, y = problem
    op = HessianOperator(model, X, y, WD, kind=kind, params=params, chunk_size=24)  # 3 uneven chunks
    H = dense_hessian(op)
    gen = torch.Generator().manual_seed(1)
    vec = torch.randn(op.n_params, generator=gen, dtype=torch.float64)
    assert op.theta.dtype == torch.float64 and H.shape == (op.n_params, op.n_params)
    assert rel_err(op.matvec(vec), H @ vec) < 1e-12
    batch = (X[:10], y[:10])
    assert rel_err(op.matvec(vec, batch), dense_hessian(op, batch) @ vec) < 1e-12
    assert torch.allclose(H, H.T, atol=1e-12)


def test_hessian_kinds_differ_and_gauss_newton_is_psd(problem):
    model, X, y = problem
    H = dense_hessian(HessianOperator(model, X, y, WD, kind="exact"))
    G = dense_hessian(HessianOperator(model, X, y, WD, kind="gauss-newton"))
    assert rel_err(H, G) > 1e-3  # residual-weighted ∇²f terms of a ReLU net
    assert float(torch.linalg.eigvalsh(G)[0]) >= WD * (1 - 1e-9)  # PSD data term + λI


def test_exact_equals_gauss_newton_for_a_linear_model(problem):
    _, X, y = problem
    linear = build_model(ModelConfig(D_IN, ()), seed=0)  # hidden=() is a linear model: ∇²f = 0
    H = dense_hessian(HessianOperator(linear, X, y, WD, kind="exact"))
    G = dense_hessian(HessianOperator(linear, X, y, WD, kind="gauss-newton"))
    Xa = torch.cat([X, torch.ones(len(X), 1)], 1).double()
    assert torch.allclose(H, G, atol=1e-12)
    assert torch.allclose(G, 2 / len(X) * Xa.T @ Xa + WD * torch.eye(D_IN + 1, dtype=torch.float64), atol=1e-12)


def test_gradient_is_mean_loss_gradient(problem):
    model, X, y = problem
    op = HessianOperator(model, X, y, WD, chunk_size=20)
    model64 = op.materialize()
    loss = torch.mean((model64(X[:30].double()) - y[:30].double()) ** 2)  # no L2 term
    expected = flatten_tensors(torch.autograd.grad(loss, list(model64.parameters())))
    assert rel_err(op.gradient(X[:30], y[:30]), expected) < 1e-12


def test_operator_rejects_bad_input(problem):
    model, X, y = problem
    with pytest.raises(ValueError, match="unknown Hessian kind"):
        HessianOperator(model, X, y, WD, kind="fisher")
    with pytest.raises(ValueError, match="available: layers.0.weight"):
        HessianOperator(model, X, y, WD, params=["layers.9.weight"])
    with pytest.raises(ValueError, match="expected X"):
        HessianOperator(model, X, y[:-1], WD)
    op = HessianOperator(model, X, y, WD)
    with pytest.raises(ValueError, match="refusing to form a dense"):
        dense_hessian(op, max_params=50)
    with pytest.raises(ValueError, match="expected"):
        op.matvec(torch.zeros(3, dtype=torch.float64))


def test_power_iteration_matches_eigvalsh(problem):
    model, X, y = problem
    for kind in ("gauss-newton", "exact"):
        op = HessianOperator(model, X, y, WD, kind=kind)
        eig = torch.linalg.eigvalsh(dense_hessian(op))
        est = estimate_spectrum(op, iters=300, tol=1e-8)
        assert est.lambda_max == pytest.approx(float(eig[-1]), rel=1e-3)
        if kind == "exact":  # Lanczos (60 steps < p = 109) finds the bottom too, bounded from inside
            assert est.lambda_min == pytest.approx(float(eig[0]), rel=1e-3)
            assert est.lambda_min >= float(eig[0]) - 1e-12 and est.lambda_max <= float(eig[-1]) + 1e-12


# --------------------------------------------------------------------------- solvers


def damping_for(op: HessianOperator) -> float:
    """A damping that makes H + μI positive definite with a moderate condition number."""
    eig = torch.linalg.eigvalsh(dense_hessian(op))
    return max(0.0, -float(eig[0])) + 0.05 * float(eig[-1])


@pytest.mark.parametrize("kind", ["gauss-newton", "exact"])
def test_lissa_and_cg_match_direct_solve(problem, kind):
    model, X, y = problem
    op = HessianOperator(model, X, y, WD, kind=kind)
    v = op.gradient(X[:16] + 0.3, y[:16])
    mu = damping_for(op)
    cfg = quiet(damping=mu, depth=5000, batch_size=len(X), tol=1e-11)
    direct = solve(op, v, "direct", cfg)
    A = dense_hessian(op) + mu * torch.eye(op.n_params, dtype=torch.float64)
    assert rel_err(A @ direct.s, v) < 1e-10  # every solver solves (H + μI) s = v
    lissa = solve(op, v, "lissa", cfg)
    cg = solve(op, v, "cg", cfg)
    assert lissa.converged and cg.converged
    assert rel_err(lissa.s, direct.s) <= 1e-3
    assert rel_err(cg.s, direct.s) <= 1e-3
    assert lissa.info["relative_residual"] < 1e-6
    assert lissa.iterations < 5000  # early stop at tol
    steps = [t["step_norm"] for t in lissa.trace]
    assert len(steps) == lissa.iterations and steps[-1] < steps[0]


def test_lissa_answer_does_not_depend_on_scale(problem):
    """The damping convention: `damping` is absolute, so scale changes speed, not the solution."""
    model, X, y = problem
    op = HessianOperator(model, X, y, WD)
    v = op.gradient(X[:16] + 0.3, y[:16])
    lam = float(torch.linalg.eigvalsh(dense_hessian(op))[-1])
    runs = [solve(op, v, "lissa", quiet(damping=0.1 * lam, scale=s * lam, depth=5000, batch_size=10**6, tol=1e-11))
            for s in (1.2, 3.0)]
    assert runs[0].info["lissa_recursion_damping"] == pytest.approx(0.1 / 1.2)
    assert rel_err(runs[0].s, runs[1].s) < 1e-6
    assert runs[1].iterations > runs[0].iterations


def test_minibatch_lissa_is_close_and_reports_residual(problem):
    model, X, y = problem
    op = HessianOperator(model, X, y, WD)
    v = op.gradient(X[:16] + 0.3, y[:16])
    mu = damping_for(op)
    direct = solve(op, v, "direct", quiet(damping=mu))
    result = solve(op, v, "lissa", quiet(damping=mu, depth=400, repeats=3, batch_size=32, seed=3))
    assert not result.converged  # minibatch noise floor, honestly reported
    assert rel_err(result.s, direct.s) < 0.2
    assert 0 < result.info["relative_residual"] < 0.2
    assert {t["chain"] for t in result.trace} == {0, 1, 2}
    again = solve(op, v, "lissa", quiet(damping=mu, depth=400, repeats=3, batch_size=32, seed=3))
    assert torch.equal(result.s, again.s)  # seeded


def test_auto_scale_and_damping(problem):
    model, X, y = problem
    op = HessianOperator(model, X, y, WD)
    lam = float(torch.linalg.eigvalsh(dense_hessian(op))[-1])
    v = op.gradient(X[:16] + 0.3, y[:16])
    result = solve(op, v, "lissa", quiet(depth=50, batch_size=16))
    assert result.info["damping"] == pytest.approx(AUTO_DAMPING_FRACTION * lam, rel=1e-2)
    assert result.info["lambda_max"] == pytest.approx(lam, rel=1e-2)
    assert result.info["scale"] > lam + result.info["damping"]
    assert result.info["batch_lambda_max"] > 0


def test_lissa_divergence_is_detected(problem):
    model, X, y = problem
    op = HessianOperator(model, X, y, WD)
    v = op.gradient(X[:16] + 0.3, y[:16])
    lam = float(torch.linalg.eigvalsh(dense_hessian(op))[-1])
    with pytest.raises(LissaDivergenceError, match="Increase scale"):
        solve(op, v, "lissa", quiet(damping=0.01 * lam, scale=0.3 * lam, depth=500, batch_size=10**6))


def test_lissa_refuses_indefinite_exact_hessian(problem):
    model, X, y = problem
    op = HessianOperator(model, X, y, WD, kind="exact")
    assert float(torch.linalg.eigvalsh(dense_hessian(op))[0]) < 0  # a ReLU net away from a perfect fit
    v = op.gradient(X[:16] + 0.3, y[:16])
    with pytest.raises(LissaDivergenceError, match="gauss-newton"):
        solve(op, v, "lissa", quiet(damping=0.0))
    with pytest.raises(LissaDivergenceError, match="raise damping above"):  # checked even with a given scale
        solve(op, v, "lissa", quiet(damping=0.0, scale=100.0))
    # check_definite=False skips the up-front check (the recursion's own divergence guard remains)
    result = solve(op, v, "lissa", quiet(damping=0.0, scale=100.0, depth=5, tol=0.0, check_definite=False))
    assert result.iterations == 5 and result.info["lambda_min"] is None


def test_lissa_never_returns_nan(problem):
    model, X, y = problem
    op = HessianOperator(model, X, y, WD)
    v = op.gradient(X[:16], y[:16])
    v[3] = float("nan")
    with pytest.raises(LissaDivergenceError, match="diverged at step 1"):
        solve(op, v, "lissa", quiet(damping=0.1, scale=100.0))


def test_cg_detects_negative_curvature(problem):
    model, X, y = problem
    op = HessianOperator(model, X, y, WD, kind="exact")
    v = op.gradient(X[:16] + 0.3, y[:16])
    with pytest.raises(NegativeCurvatureError, match="Increase damping or use hessian='gauss-newton'"):
        solve(op, v, "cg", quiet(damping=0.0, max_iter=500))


def test_direct_refuses_large_blocks_and_zero_rhs(problem):
    model, X, y = problem
    op = HessianOperator(model, X, y, WD)
    with pytest.raises(ValueError, match="max_params=10"):
        solve(op, torch.ones(op.n_params, dtype=torch.float64), "direct", quiet(damping=0.1, max_params=10))
    zero = solve(op, torch.zeros(op.n_params, dtype=torch.float64), "lissa", quiet(damping=0.1, scale=10.0))
    assert zero.converged and not zero.s.any()
    with pytest.raises(ValueError, match="unknown solver"):
        solve(op, torch.ones(op.n_params, dtype=torch.float64), "newton", quiet(damping=0.1))


def test_solver_config_validation():
    cfg = SolverConfig(damping="0.5", scale="AUTO")
    assert cfg.damping == 0.5 and cfg.scale == "auto"
    for kwargs, message in [({"damping": -1.0}, "damping must be"), ({"scale": "big"}, "scale must be a number"),
                            ({"scale": 0.0}, "scale must be"), ({"depth": 0}, "depth must be a positive integer"),
                            ({"tol": float("nan")}, "tol must be"), ({"batch_size": 2.5}, "batch_size")]:
        with pytest.raises(ValueError, match=message):
            SolverConfig(**kwargs)


def test_lissa_step_fallback_and_ops_agree():
    """The twin (ops_reference.lissa_step) and ops.lissa_step (the compiled kernel when built, else
    the twin) each against the recursion written out element by element in Python floats — not
    against each other, so the test means something without the extension too."""
    gen = torch.Generator().manual_seed(0)
    h, v, hv = (torch.randn(51, generator=gen, dtype=torch.float64) for _ in range(3))
    expected = [vi + (1.0 - 0.1) * hi - gi / 4.0 for hi, vi, gi in zip(h.tolist(), v.tolist(), hv.tolist())]
    expected_step = sum((e - hi) ** 2 for e, hi in zip(expected, h.tolist())) ** 0.5
    for lissa_step in (ops_reference.lissa_step, ops.lissa_step):
        new, step = lissa_step(h, v, hv, 0.1, 4.0)
        assert new.dtype == torch.float64 and new.shape == h.shape and step.shape == ()
        assert new.tolist() == pytest.approx(expected, rel=1e-13, abs=1e-13)
        assert float(step) == pytest.approx(expected_step, rel=1e-12)


# --------------------------------------------------------------------------- scores


@pytest.mark.parametrize("params", [None, ["layers.0.bias", "layers.2.weight"], ["layers.0.weight"]])
def test_fast_and_reference_grad_dots_agree_with_brute_force(problem, params):
    model, X, y = problem
    op = HessianOperator(model, X, y, WD, params=params)
    gen = torch.Generator().manual_seed(2)
    vecs = torch.randn(3, op.n_params, generator=gen, dtype=torch.float64)
    Z, t = torch.randn(23, D_IN, generator=gen), torch.randn(23, generator=gen)
    sparse_Z = Z * (torch.rand(23, D_IN, generator=gen) < 0.08)  # fingerprint-like, two dense columns
    sparse_Z[:, :2] = Z[:, :2]
    sparse_fast = grad_dot_fast(op, vecs, sparse_Z, t, chunk_size=40)
    assert torch.allclose(sparse_fast, grad_dot_reference(op, vecs, sparse_Z, t), rtol=1e-10, atol=1e-12)
    fast = grad_dot_fast(op, vecs, Z, t, chunk_size=8)
    reference = grad_dot_reference(op, vecs, Z, t, chunk_size=5)
    brute = []
    for i in range(len(Z)):
        theta = op.theta.clone().requires_grad_(True)
        loss = ((op.predict(theta, Z[i:i + 1].double()) - t[i].double()) ** 2).sum()
        brute.append(torch.autograd.grad(loss, theta)[0])
    brute = torch.stack(brute) @ vecs.T
    assert fast.shape == (23, 3)
    assert torch.allclose(fast, brute, rtol=1e-10, atol=1e-12)
    assert torch.allclose(reference, brute, rtol=1e-10, atol=1e-12)
    assert torch.allclose(per_sample_grads(op, Z[:4], t[:4]) @ vecs.T, brute[:4], rtol=1e-10, atol=1e-12)


def test_linear_grad_dot_fallback_and_ops_agree():
    gen = torch.Generator().manual_seed(0)
    act, out_grad = torch.randn(7, 4, generator=gen), torch.randn(7, 3, generator=gen)
    W, b = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 3, generator=gen)
    expected = torch.stack([torch.stack([(torch.outer(out_grad[i], act[i]) * W[k]).sum() + out_grad[i] @ b[k]
                                         for k in range(2)]) for i in range(7)])
    assert torch.allclose(ops_reference.linear_grad_dot(act, out_grad, W, b), expected, atol=1e-5)
    assert torch.allclose(ops.linear_grad_dot(act, out_grad, W, b), expected, atol=1e-4)


def ridge_fit(Xa: np.ndarray, y: np.ndarray, lam: float, weights: np.ndarray, norm: float) -> np.ndarray:
    """argmin (1/norm) Σ wᵢ (xᵢ·θ − yᵢ)² + (λ/2)‖θ‖² in closed form (Xa has the bias column)."""
    A = (2 / norm) * (Xa.T * weights) @ Xa + lam * np.eye(Xa.shape[1])
    return np.linalg.solve(A, (2 / norm) * (Xa.T * weights) @ y)


def test_scores_predict_refit_for_ridge_regression():
    """Convex case: score(z) vs the actual held-out change after refitting with z added."""
    rng = np.random.default_rng(0)
    n, d, lam = 100, 4, 0.05
    theta_true = rng.normal(size=d + 1)
    def data(m, noise):
        X = rng.normal(size=(m, d))
        return X, np.c_[X, np.ones(m)] @ theta_true + noise * rng.normal(size=m)
    X, y = data(n, 0.3)
    Xh, yh = data(40, 0.3)
    # A held-out set the model is biased on (labels shifted), as when selecting data for a target
    # region: then the first-order term dominates. With an unbiased held-out set v ≈ 0 and the
    # O(1/n²) terms that no first-order method sees decide the ranking.
    yh = yh + 0.4
    Xc, yc = data(30, 1.0)  # candidates: noisy labels, so some help and some hurt
    aug = lambda A: np.c_[A, np.ones(len(A))]  # noqa: E731
    theta = ridge_fit(aug(X), y, lam, np.ones(n), n)

    model = build_model(ModelConfig(d, ()), seed=0)  # hidden=() → one Linear layer = ridge
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.tensor(theta[:d]).view(1, d))
        model.layers[0].bias.fill_(float(theta[d]))
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    op = HessianOperator(model, t(X), t(y), lam)
    op.theta = t(theta)  # keep θ̂ exact in float64 (the float32 module copy rounds it)
    assert float(torch.linalg.vector_norm(op.gradient() + lam * op.theta)) < 1e-10  # θ̂ is the minimum
    s = solve(op, op.gradient(t(Xh), t(yh)), "direct", quiet(damping=0.0)).s
    scores = influence_scores(op, s, t(Xc), t(yc)).numpy()
    assert np.allclose(scores, influence_scores(op, s, t(Xc), t(yc), method="reference").numpy(), atol=1e-14)

    heldout = lambda th: np.mean((aug(Xh) @ th - yh) ** 2)  # noqa: E731
    base = heldout(theta)
    upweight, added = [], []
    for xc, ycand in zip(Xc, yc):
        Xa, ya = aug(np.vstack([X, xc])), np.r_[y, ycand]
        upweight.append(heldout(ridge_fit(Xa, ya, lam, np.ones(n + 1), n)) - base)  # weight 1/n on z: ε = 1/n
        added.append(heldout(ridge_fit(Xa, ya, lam, np.ones(n + 1), n + 1)) - base)  # plain refit on n+1 points
    upweight, added = np.array(upweight), np.array(added)
    assert np.corrcoef(scores, added)[0, 1] >= 0.99
    assert np.corrcoef(scores, upweight)[0, 1] >= 0.99
    # Units and sign: actual ≈ 1·score (the 1/n factor), up to the O(1/n²) leverage/curvature terms.
    assert 0.85 <= np.dot(scores, upweight) / np.dot(scores, scores) <= 1.15
    assert np.median(np.abs(scores - upweight) / np.abs(upweight)) <= 0.1
    # Refitting on n+1 points adds the same shift to every candidate: the renormalization offset.
    assert np.mean(added - upweight) == pytest.approx(renormalization_offset(op, s), rel=0.1)
    assert (scores < 0).any() and (scores > 0).any()
