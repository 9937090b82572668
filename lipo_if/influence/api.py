"""Influence scores of molecules in memory: ``Influence(run, …).fit().scores(molecules)``.

::

    import lipo_if
    run = lipo_if.load_run("runs/baseline")
    inf = lipo_if.Influence(run, heldout="validation", hessian="gauss-newton", solver="lissa").fit()
    table = inf.scores("external.csv")          # or a DataFrame, (smiles, labels) lists, or a Pool
    inf.save("runs/baseline/influence")          # s and its settings; Influence.load(dir, run) reuses them

:meth:`Influence.fit` computes ``s = (H + μI)⁻¹ ∇L_heldout`` once (every solver of
:func:`~lipo_if.influence.solvers.solve` is an option: ``lissa``, ``cg``, ``direct`` and the
function-space Woodbury solve ``function-space``; ``scorer="tracin"`` replaces the solve by TracIn-CP
over the run's training checkpoints); :meth:`Influence.scores` returns one row per
input molecule with the columns ``row, smiles, label, prediction, residual, score, excluded``:
``score(z) = −(1/n) s·∇ℓ(z)`` — the first-order change of the held-out MSE (logD²) when z is added
to the ``n`` training molecules; **negative = helpful**. Rows are excluded (never scored) for an
invalid SMILES, a molecule already in the run's training / validation / test split (stereo-
insensitive; ``exclude_overlap``) or a repeat of an earlier row. Predictions and residuals are
given for every valid row.

Every stage of the package — ``lipo-if influence``, the experiment of ``lipo-if run``,
cross-fitting, ``lipo-if validate`` and the greedy guard (:meth:`Influence.group_model`) — goes
through this object.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from lipo_if.distributed import World, alone, current
from lipo_if.domain import Domain
from lipo_if.ensemble import Ensemble
from lipo_if.io import atomic_write_bytes, atomic_write_json
from lipo_if.pool import Molecules, Pool
from lipo_if.select import GroupModel, eligible
from lipo_if.train import Run

from .function_space import FunctionSpaceSolver
from .hvp import HESSIAN_KINDS, HessianOperator
from .mlp import MLP
from .scores import SCORE_METHODS, influence_scores, renormalization_offset
from .solvers import SOLVER_METHODS, SolveResult, SolverConfig, solve
from .tracin import checkpoint_operators, tracin_scores

log = logging.getLogger(__name__)

#: ``heldout`` names → the run's split part names.
HELDOUT_PARTS = {"validation": "val", "test": "test"}
OUTPUT_COLUMNS = ["row", "smiles", "smiles_standardized", "label", "prediction", "residual", "score", "nn_similarity",
                  "n_neighbors", "in_domain", "excluded"]
#: ``precision`` choices (torch dtype names).
PRECISIONS = ("float64", "float32")
#: ``scorer`` choices.
SCORERS = ("influence", "tracin")
#: What :meth:`Influence.save` writes: the solved vector and the settings it belongs to.
SAVED_VECTOR, SAVED_SETTINGS = "s.pt", "influence.json"
#: One-sided normal quantile of the ensemble's confidence bound ``score_ucb = mean + z·SE`` (95 %).
UCB_Z = 1.645


@dataclass
class InfluenceConfig(SolverConfig):
    """Settings of an influence computation (``lipo-if influence`` options; the solver's are inherited)."""

    heldout: str = field(
        default="validation",
        metadata={"help": "held-out set whose loss the selection should lower; 'test' makes later test "
                          "metrics optimistic", "choices": tuple(HELDOUT_PARTS)},
    )
    hessian: str = field(
        default="gauss-newton",
        metadata={"help": "curvature: gauss-newton (PSD) or exact (indefinite for a ReLU net; needs damping "
                          "above −λmin)", "choices": HESSIAN_KINDS},
    )
    solver: str = field(
        default="lissa", metadata={"help": "inverse-HVP solver: lissa, cg, direct (small --params blocks only) or "
                                           "function-space (Gauss–Newton in closed form by the NTK/Woodbury identity: "
                                           "exact, one n×n Cholesky)", "choices": SOLVER_METHODS},
    )
    exclude_overlap: bool = field(
        default=True,
        metadata={"help": "leave unscored the molecules already in the run's train/validation/test splits "
                          "(stereo-insensitive match)"},
    )
    params: str = field(
        default="",
        metadata={"help": "comma-separated parameter names to restrict the influence to, e.g. "
                          "'layers.2.weight,layers.2.bias' (empty = all parameters)"},
    )
    score_method: str = field(
        default="fast", metadata={"help": "per-sample gradient dots: fast (per-layer identity) or reference (vmap)",
                                  "choices": SCORE_METHODS},
    )
    chunk_size: int = field(default=2048, metadata={"help": "rows per chunk in full-set products and scoring"})
    scorer: str = field(
        default="influence",
        metadata={"help": "influence: −(1/n) s·∇ℓ(z) with s = (H + μI)⁻¹∇L_heldout; tracin: TracIn-CP, −Σ_k η_k ∇ℓ(z; θ_k)·∇L_heldout(θ_k) "
                          "over the training checkpoints (train with --checkpoint-every; no solve)", "choices": SCORERS},
    )
    precision: str = field(
        default="float64",
        metadata={"help": "working precision of the curvature products, the solve and the scores: float32 moves "
                          "half the bytes (LiSSA ≈1.4× faster on the dev box) at ≈1e-7 relative rounding, far below "
                          "LiSSA's minibatch noise; float64 for fidelity studies", "choices": PRECISIONS},
    )
    min_similarity: float = field(
        default=0.3,
        metadata={"help": "applicability domain: a molecule whose nearest-neighbour Tanimoto similarity to the training set "
                          "(Morgan r2, 2048 bits) is below this is scored but not selected (in_domain false; 0 = off)"},
    )
    neighbor_similarity: float = field(default=0.5, metadata={"help": "Tanimoto at or above which a training molecule counts in n_neighbors"})
    max_heavy_atoms: int = field(default=0, metadata={"help": "molecules with more heavy atoms are not scored (0 = 1.5 × the largest training molecule)"})
    smiles_col: str | None = field(default=None, metadata={"help": "SMILES column of the external CSV (auto if unset)"})
    label_col: str | None = field(default=None, metadata={"help": "label column of the external CSV (auto if unset)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, allowed in (("heldout", tuple(HELDOUT_PARTS)), ("hessian", HESSIAN_KINDS),
                              ("solver", SOLVER_METHODS), ("score_method", SCORE_METHODS), ("precision", PRECISIONS),
                              ("scorer", SCORERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {self.chunk_size}")
        for name in ("min_similarity", "neighbor_similarity"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_heavy_atoms < 0:
            raise ValueError(f"max_heavy_atoms must be ≥ 0 (0 = from the training set), got {self.max_heavy_atoms}")

    @property
    def param_names(self) -> list[str] | None:
        """``params`` as a list, or None for all parameters."""
        names = [p.strip() for p in self.params.split(",") if p.strip()]
        return names or None

    def identity(self) -> dict:
        """The settings that determine ``s`` and the scores (``progress`` left out)."""
        return {k: v for k, v in json.loads(json.dumps(asdict(self))).items() if k != "progress"}


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's parameters (lets a saved ``s`` check it belongs to this model)."""
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class Influence:
    """Influence of molecules on a run's held-out loss (see the module docstring).

    Given an :class:`~lipo_if.ensemble.Ensemble`, every member is fitted and scores the molecules;
    the table's ``score`` is then the members' mean, with ``score_se`` (its standard error across
    members), ``score_ucb = score + 1.645·score_se`` (a one-sided 95 % upper bound: a molecule is
    *confidently* helpful when ``score_ucb < 0``), ``score_m<i>`` per member, ``prediction`` the
    ensemble's mean and ``prediction_spread`` the members' standard deviation.

    Args:
        run: a trained :class:`~lipo_if.train.Run` or :class:`~lipo_if.ensemble.Ensemble` (``lipo_if.load_run``).
        heldout, hessian, solver: the held-out set ("validation" or "test"), the curvature
            ("gauss-newton" or "exact") and the solver ("lissa", "cg", "direct", "function-space").
        config: a whole :class:`InfluenceConfig` instead (then give no other settings).
        **settings: any other :class:`InfluenceConfig` field (damping, depth, batch_size, …).
    """

    def __init__(self, run: Run | Ensemble, heldout: str = "validation", hessian: str = "gauss-newton", solver: str = "lissa",
                 *, config: InfluenceConfig | None = None, **settings: Any) -> None:
        if config is None:
            config = InfluenceConfig(heldout=heldout, hessian=hessian, solver=solver, **settings)
        elif settings or (heldout, hessian, solver) != ("validation", "gauss-newton", "lissa"):
            raise ValueError("give either config= or individual settings, not both")
        self.run, self.config = run, config
        #: per-member Influence objects of an ensemble (None for a single run)
        self.members = [Influence(m, config=config) for m in run.members] if isinstance(run, Ensemble) else None
        self.result: SolveResult | None = None
        #: ``s = (H + μI)⁻¹ v`` ``[p]`` in the working precision, None before :meth:`fit`.
        self.s: torch.Tensor | None = None
        #: What the fit found: sizes, ‖v‖, the renormalization offset, the solver's digest, warnings, timings.
        self.info: dict = {}
        self._op: HessianOperator | None = None
        #: TracIn: the checkpoints' operators with η_k, and their held-out gradients (the scorer's "s")
        self._tracin: list | None = None
        self.heldout_grads: list[torch.Tensor] | None = None
        self._function_space: tuple[MLP, FunctionSpaceSolver] | None = None
        self._domain: Domain | None = None

    @property
    def domain(self) -> Domain:
        """The run's applicability domain (:mod:`lipo_if.domain`), from its training molecules."""
        if self._domain is None:
            run = self.run.members[0] if isinstance(self.run, Ensemble) else self.run  # (members share the split)
            self._domain = Domain.from_smiles(run.smiles("train"), self.config.max_heavy_atoms, self.config.neighbor_similarity)
        return self._domain

    def __repr__(self) -> str:
        state = "fitted" if self.fitted else "not fitted"
        return f"Influence(heldout={self.config.heldout!r}, hessian={self.config.hessian!r}, solver={self.config.solver!r}, {state})"

    # ------------------------------------------------------------------ the solve

    @property
    def operator(self) -> HessianOperator:
        """The curvature operator of the run's training objective (autograd reference; the solvers
        swap in the native products where supported)."""
        if self._op is None:
            X_train, y_train = self.run.tensors("train")
            self._op = HessianOperator(self.run.model, X_train, y_train, float(self.run.config.weight_decay),
                                       kind=self.config.hessian, params=self.config.param_names,
                                       chunk_size=self.config.chunk_size, dtype=getattr(torch, self.config.precision))
        return self._op

    def heldout_gradient(self) -> torch.Tensor:
        """``v = ∇θ L_heldout(θ̂)`` ``[p]``: gradient of the held-out mean squared error (no L2 term)."""
        return self.operator.gradient(*self.run.tensors(HELDOUT_PARTS[self.config.heldout]))

    def fit(self) -> "Influence":
        """Solve ``s = (H + μI)⁻¹ ∇L_heldout`` once; returns self.

        Raises the solver errors of :func:`~lipo_if.influence.solvers.solve` (their messages say
        which setting to change)."""
        if self.members is not None:
            world = current()
            on_ranks = world.active and len(self.members) >= world.size
            if on_ranks:
                self._fit_members_on_ranks(world)
            else:  # one after another (under torchrun each member's solve is data-parallel over the ranks)
                for member in self.members:
                    member.fit()
            self.info = self._ensemble_info()
            if world.active:
                self.info["placement"] = f"members on {world.size} ranks" if on_ranks else f"each member data-parallel over {world.size} ranks"
            return self
        if self.config.scorer == "tracin":
            return self._fit_tracin()
        clock = time.perf_counter()
        op = self.operator
        v = self.heldout_gradient()
        gradient_seconds = time.perf_counter() - clock
        result = solve(op, v, self.config.solver, self.config)
        self.result, self.s = result, result.s
        n_heldout = len(self.run.tensors(HELDOUT_PARTS[self.config.heldout])[0])
        self.info = {
            "heldout": self.config.heldout, "selection_saw_test_set": self.config.heldout == "test",
            "n_train": op.n_train, "n_heldout": n_heldout, "n_params": op.n_params, "weight_decay": op.weight_decay,
            "v_norm": float(torch.linalg.vector_norm(v)), "renormalization_offset": renormalization_offset(op, result.s),
            "solver": result.summary(), "warnings": _warnings(self.config, result),
            "timings": {"gradient_seconds": round(gradient_seconds, 4), "solve_seconds": round(time.perf_counter() - clock - gradient_seconds, 4)},
        }
        for warning in self.info["warnings"]:
            log.warning(warning)
        return self

    def _fit_members_on_ranks(self, world: World) -> None:
        """Member ``i`` solved by rank ``i mod size`` by itself, then its fitted state broadcast from
        there: every rank ends with every member's ``s``, each computed once."""
        for i, member in enumerate(self.members):
            if world.owns(i):
                with alone():
                    member.fit()
        for i, member in enumerate(self.members):
            owner = i % world.size
            state = world.broadcast_object(member._fitted_state() if world.rank == owner else None, src=owner)
            if world.rank != owner:
                member._restore_fitted_state(state)
            member.info["solved_on_rank"] = owner

    def _fitted_state(self) -> tuple:
        """What :meth:`fit` leaves on a single run's object (to hand it to another rank)."""
        return self.s, self.heldout_grads, self.result, self.info

    def _restore_fitted_state(self, state: tuple) -> None:
        self.s, self.heldout_grads, self.result, self.info = state

    def _ensemble_info(self) -> dict:
        infos = [m.info for m in self.members]
        return {"members": infos, "n_train": infos[0]["n_train"], "n_heldout": infos[0]["n_heldout"],
                "heldout": self.config.heldout, "selection_saw_test_set": self.config.heldout == "test",
                "renormalization_offset": float(np.mean([i["renormalization_offset"] for i in infos])),
                "solver": {"method": self.config.solver, "info": {"damping": float(np.mean([m.damping for m in self.members]))}},
                "warnings": sorted({w for i in infos for w in i["warnings"]}),
                "timings": {"solve_seconds": round(sum(i["timings"].get("solve_seconds", 0.0) for i in infos), 4)}}

    @property
    def fitted(self) -> bool:
        if self.members is not None:
            return all(m.fitted for m in self.members)
        return self.s is not None or self.heldout_grads is not None

    def _checkpoints(self) -> list:
        if self._tracin is None:
            self._tracin = checkpoint_operators(self.run, getattr(torch, self.config.precision), self.config.chunk_size)
        return self._tracin

    def _fit_tracin(self) -> "Influence":
        clock = time.perf_counter()
        X_ho, y_ho = self.run.tensors(HELDOUT_PARTS[self.config.heldout])
        self.heldout_grads = [op.gradient(X_ho, y_ho) for op, _ in self._checkpoints()]
        self.info = {"heldout": self.config.heldout, "selection_saw_test_set": self.config.heldout == "test",
                     "n_train": self.operator.n_train, "n_heldout": len(X_ho), "scorer": "tracin",
                     "checkpoints": [{"epoch": c.epoch, "lr": c.lr} for c in self.run.checkpoints],
                     "renormalization_offset": 0.0, "solver": {"method": "tracin", "info": {"damping": None}}, "warnings": [],
                     "timings": {"gradient_seconds": round(time.perf_counter() - clock, 4)}}
        return self

    def _require_fit(self) -> torch.Tensor | None:
        if not self.fitted:
            raise RuntimeError("call fit() (or Influence.load) before scoring")
        return self.s

    @property
    def damping(self) -> float:
        """μ the solve used ("auto" resolved; an ensemble's: the members' mean)."""
        self._require_fit()
        return float(self.info["solver"]["info"]["damping"])

    # ------------------------------------------------------------------ scores

    def scores(self, molecules: Molecules) -> pd.DataFrame:
        """One row per input molecule: ``row, smiles, label, prediction, residual, score, excluded``.

        ``molecules``: a CSV path, a DataFrame (SMILES and label columns), ``(smiles, labels)`` or a
        :class:`~lipo_if.pool.Pool`; its molecules are featurized once per run. ``score`` is NaN
        where ``excluded`` says why; ``residual`` = prediction − label."""
        s = self._require_fit()
        pool = Pool.coerce(molecules, self.config.smiles_col, self.config.label_col)
        if self.members is not None:
            return self._ensemble_scores(pool)
        op = self.operator
        table = pool.table
        if pool.valid.any():
            X = pool.features(self.run.featurizer)  # first: its time guard may exclude a molecule
        outside, nn, neighbors = self.domain.assess(table["smiles"].tolist())
        reasons = pool.exclusions(self.run.split_keys() if self.config.exclude_overlap else None, outside)
        scored = np.array([r == "" for r in reasons], dtype=bool)
        out = pd.DataFrame({"row": table["row"], "smiles": table["smiles_input"], "smiles_standardized": table["smiles"],
                            "label": table["label"], "prediction": np.nan, "residual": np.nan, "score": np.nan,
                            "nn_similarity": nn, "n_neighbors": neighbors,
                            "in_domain": scored & (np.nan_to_num(nn, nan=-1.0) >= self.config.min_similarity), "excluded": reasons})
        valid = pool.valid
        if valid.any():
            y = torch.tensor(table.loc[valid, "label"].to_numpy(dtype=float), dtype=op.dtype)
            with torch.no_grad():
                pred = torch.cat([op.predict(op.theta, X[i:i + self.config.chunk_size].to(op.dtype))
                                  for i in range(0, len(X), self.config.chunk_size)])
            out.loc[valid, "prediction"] = pred.numpy()
            out.loc[valid, "residual"] = (pred - y).numpy()  # prediction − label, the (f − y) of ℓ
            keep = np.array([r == "" for r, ok in zip(reasons, valid) if ok])
            if keep.any() and self.heldout_grads is not None:
                values = tracin_scores(self._checkpoints(), self.heldout_grads, X[keep], y[keep], self.config.chunk_size)
                out.loc[out["excluded"] == "", "score"] = values.numpy()
            elif keep.any():
                values = influence_scores(op, s, X[keep], y[keep], self.config.score_method, self.config.chunk_size)
                out.loc[out["excluded"] == "", "score"] = values.numpy()
        return out

    def _ensemble_scores(self, pool: Pool) -> pd.DataFrame:
        tables = [m.scores(pool) for m in self.members]
        out = tables[0].copy()
        scores = np.stack([t["score"].to_numpy(dtype=float) for t in tables])  # [M, rows]
        preds = np.stack([t["prediction"].to_numpy(dtype=float) for t in tables])
        out["prediction"] = preds.mean(0)
        out["residual"] = out["prediction"] - out["label"]
        out["score"] = scores.mean(0)
        out["score_se"] = scores.std(0, ddof=1) / np.sqrt(len(tables))
        out["score_ucb"] = out["score"] + UCB_Z * out["score_se"]
        out["prediction_spread"] = preds.std(0, ddof=1)
        for i, values in enumerate(scores):
            out[f"score_m{i}"] = values
        return out

    def summary(self, table: pd.DataFrame, source: str = "<memory>") -> dict:
        """The JSON digest of a fit and one scores table (what ``lipo-if influence`` writes beside the CSV)."""
        scored = table.loc[table["excluded"] == "", "score"].to_numpy(dtype=float)
        helpful = table[table["excluded"] == ""].nsmallest(10, "score")[["row", "smiles", "score"]]
        return self.digest(source, score_counts(table["excluded"].tolist(), scored), helpful.to_dict(orient="records"))

    def digest(self, source: str, counts: dict, most_helpful: list[dict]) -> dict:
        """The JSON digest of a fit with the ``counts`` (:func:`score_counts`) and ``most_helpful``
        rows of what it scored — from one table (:meth:`summary`) or tallied chunk by chunk."""
        self._require_fit()
        return {"external": source, "settings": asdict(self.config), **{k: v for k, v in self.info.items() if k != "timings"},
                "counts": counts, "most_helpful": most_helpful, "timings": dict(self.info.get("timings", {}))}

    def function_space(self) -> tuple[MLP, FunctionSpaceSolver]:
        """``(mlp, solver)``: the model in float64 and ``(H + μI)⁻¹`` in function space at this fit's
        damping (Gauss–Newton), factorized once per fit and shared by :meth:`group_model` and the
        leverage / self-influence of :mod:`lipo_if.suspicion`."""
        if self._function_space is None:
            mlp = MLP.from_model(self.run.model)
            solver = FunctionSpaceSolver(mlp, self.run.tensors("train")[0], float(self.run.config.weight_decay), self.damping)
            self._function_space = (mlp, solver)
        return self._function_space

    # ------------------------------------------------------------------ the greedy guard's model

    def group_model(self, table: pd.DataFrame, molecules: Molecules) -> GroupModel:
        """The second-order group model of the eligible rows of ``table`` (this object's scores of
        ``molecules``, validation held out) for the greedy guard of :mod:`lipo_if.select`.

        ``M_ij = d_iᵀ G d_j`` with ``d_j = −(1/n)(H + μI)⁻¹∇ℓ(z_j)`` and ``G`` the held-out
        Gauss–Newton curvature, from the function-space response ``J_ho (H + μI)⁻¹ J_candᵀ`` at this
        fit's damping μ (Gauss–Newton curvature always; see :mod:`lipo_if.select`). ``info``
        records the agreement of the function-space first-order scores with the table's
        (``first_order_pearson``, ``first_order_max_rel_diff``: 1 and ≈ 0 for an accurate solve).
        """
        pool = Pool.coerce(molecules, self.config.smiles_col, self.config.label_col)
        if self.members is not None:  # the members' second-order models, averaged
            groups = [m.group_model(m.scores(pool), pool) for m in self.members]
            rows = groups[0].rows
            return GroupModel(rows, eligible(table).set_index("row").loc[rows, "score"].to_numpy(dtype=float),
                              np.mean([g.interactions for g in groups], axis=0),
                              {"members": [g.info for g in groups], "damping": self.damping, "n": int(rows.size)})
        damping = self.damping
        candidates = eligible(table)
        rows = candidates["row"].to_numpy(dtype=int)
        if rows.size == 0:
            return GroupModel(rows, np.zeros(0), np.zeros((0, 0)), {"damping": damping, "n": 0})
        mlp, fs = self.function_space()
        X_ho, y_ho = self.run.tensors(HELDOUT_PARTS[self.config.heldout])
        X_c, _ = pool.rows_features(self.run.featurizer, rows)
        y_c = torch.from_numpy(pool.labels_of(rows))  # float64, as the scores' residuals
        with torch.no_grad():
            pred_ho, f_ho = mlp.tangent_factors(X_ho.to(torch.float64))
            pred_c, f_c = mlp.tangent_factors(X_c.to(torch.float64))
            P = fs.response(f_ho, f_c)  # J_ho (H + μI)⁻¹ J_candᵀ [m, N]
            n, m = fs.n, X_ho.shape[0]
            A = -(2.0 / n) * P * (pred_c - y_c.to(torch.float64)).unsqueeze(0)  # J_ho d_j, column j [m, N]
            e_ho = pred_ho - y_ho.to(torch.float64)
            kernel_scores = ((2.0 / m) * (e_ho @ A)).numpy()
            M = ((2.0 / m) * (A.T @ A)).numpy()
        table_scores = candidates["score"].to_numpy(dtype=float)
        agree = (float(np.corrcoef(kernel_scores, table_scores)[0, 1]) if rows.size > 2 and np.std(table_scores) > 0
                 else float("nan"))
        info = {
            "damping": damping, "n": int(rows.size), "n_train": int(n), "n_val": int(m), "first_order_pearson": agree,
            "first_order_max_rel_diff": float(np.max(np.abs(kernel_scores - table_scores))
                                              / max(np.max(np.abs(table_scores)), 1e-300)),
            "self_term_median": float(np.median(0.5 * np.diag(M))),
            "score_median_abs": float(np.median(np.abs(table_scores))),
        }
        return GroupModel(rows, table_scores, M, info)

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> Path:
        """Write ``s`` (``s.pt``) and its settings, the model's fingerprint and the fit's digest
        (``influence.json``) into ``directory``, atomically; returns the directory."""
        s = self._require_fit()
        directory = Path(directory)
        if self.members is not None:
            for i, member in enumerate(self.members):
                member.save(directory / f"member_{i}")
            atomic_write_json(directory / SAVED_SETTINGS, {"settings": self.config.identity(), "members": len(self.members),
                                                           "info": self.info})
            return directory
        buffer = io.BytesIO()
        torch.save(s.detach().cpu() if s is not None else [v.detach().cpu() for v in self.heldout_grads], buffer)
        atomic_write_bytes(directory / SAVED_VECTOR, buffer.getvalue())
        atomic_write_json(directory / SAVED_SETTINGS, {"settings": self.config.identity(), "model": model_fingerprint(self.run.model),
                                                       "info": self.info})
        return directory

    @classmethod
    def load(cls, directory: str | Path, run: Run | Ensemble, config: InfluenceConfig | None = None) -> "Influence":
        """A fitted Influence from :meth:`save`'s files, without solving again.

        Raises ValueError when the files belong to another model, or — when ``config`` is given —
        to other settings; FileNotFoundError when there is nothing saved."""
        directory = Path(directory)
        saved = json.loads((directory / SAVED_SETTINGS).read_text())
        if isinstance(run, Ensemble):
            if saved.get("members") != len(run.members):
                raise ValueError(f"{directory}: the saved influence belongs to another ensemble than this run")
            inf = cls(run, config=config or InfluenceConfig(**{**saved["settings"], "progress": False}))
            inf.members = [cls.load(directory / f"member_{i}", m, inf.config) for i, m in enumerate(run.members)]
            inf.info = inf._ensemble_info()
            return inf
        if saved.get("model") != model_fingerprint(run.model):
            raise ValueError(f"{directory}: the saved influence belongs to another model than this run's")
        stored = InfluenceConfig(**{**saved["settings"], "progress": False})
        if config is not None and config.identity() != stored.identity():
            raise ValueError(f"{directory}: the saved influence was computed with other settings")
        inf = cls(run, config=config or stored)
        vector = torch.load(directory / SAVED_VECTOR, weights_only=True)
        dtype = getattr(torch, inf.config.precision)
        if inf.config.scorer == "tracin":
            inf.heldout_grads = [v.to(dtype) for v in vector]
        else:
            inf.s = vector.to(dtype)
        inf.info = saved["info"]
        return inf


def score_counts(reasons: Sequence[str] | Counter, scores: np.ndarray) -> dict:
    """Rows, scored, excluded (by reason), helpful (< 0) and harmful (> 0) counts of a scores table;
    ``reasons``: every row's ``excluded`` (``""`` = scored), or their counts."""
    reasons = reasons if isinstance(reasons, Counter) else Counter(reasons)
    kinds: Counter = Counter()
    for reason, n in reasons.items():
        if reason:
            kinds["duplicate row" if reason.startswith("duplicate row") else reason] += n
    return {"rows": int(sum(reasons.values())), "scored": int(scores.size), "excluded": int(sum(kinds.values())),
            "excluded_by_reason": dict(kinds), "helpful": int((scores < 0).sum()), "harmful": int((scores > 0).sum())}


def _warnings(config: InfluenceConfig, result: SolveResult) -> list[str]:
    out = []
    if config.heldout == "test":
        out.append("the selection saw the test set (heldout=test): test metrics after adding the selected "
                   "molecules are optimistic; use heldout=validation for an honest test estimate")
    if not result.converged:
        out.append(f"{result.method} did not reach tol={config.tol:g} (expected for minibatch LiSSA; "
                   f"see relative_residual)")
    residual = result.info.get("relative_residual")
    if residual is not None and math.isfinite(residual) and residual > 0.1:
        out.append(f"relative residual ‖(H+μI)s − v‖/‖v‖ = {residual:.3g} > 0.1: scores are rough — raise depth, "
                   f"repeats or batch_size, or use solver=cg")
    return out
