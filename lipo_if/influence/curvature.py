"""The interface the solvers and spectrum estimates call: a curvature operator of the training objective.

Two implementations: :class:`~lipo_if.influence.hvp.HessianOperator` (autograd products, any model
and parameter block — the reference) and :class:`~lipo_if.influence.native_hvp.NativeHessian`
(explicit-matmul products of the package's MLP, fused LiSSA step). A solver never asks which one
it holds; it uses:

- the facts ``reference`` (the autograd operator: model, parameter block, training rows), ``kind``, ``weight_decay`` (λ), ``dtype``, ``n_params`` (p), ``n_train`` (n), ``theta``;
- ``matvec(vec, batch=None)``: ``H_B·vec`` (λ·vec included) in the standard parameter layout,
  on the training set (``batch=None``) or a batch ``(X, y)`` — for spectrum estimates and checks;
- ``sample_indices`` / ``sample_batch``: training minibatches, drawn from a generator;
- the *solver layout*: ``to_solver_layout`` / ``from_solver_layout`` (an orthogonal permutation,
  so norms, dot products and the recursions are unchanged) and ``solver_product(vec, idx, out)``
  — ``H_B·vec`` in that layout on the training rows ``idx`` (None = all), **without** the
  ``folded_weight_decay`` part of λ, which the caller adds (LiSSA folds it into its damping);
- ``fused_lissa_step(h, v, idx, damping, scale)``: one LiSSA step in place, product and update
  fused, returning ``(‖h_new − h‖, ‖h_new‖)`` — or None when the operator has no fused step (the
  solver then takes ``solver_product`` + :func:`lipo_if.ops.lissa_step`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

Batch = tuple[torch.Tensor, torch.Tensor]


class CurvatureOperator(ABC):
    """Curvature ``H`` (Gauss–Newton or exact, λI included) of ``R(θ) = (1/n)Σℓ + (λ/2)‖θ‖²`` at θ̂."""

    kind: str
    weight_decay: float
    dtype: torch.dtype
    theta: torch.Tensor
    #: Name of the product implementation ("autograd" or "native"), reported by the solvers.
    backend: str = "autograd"
    #: The part of λ that :meth:`solver_product` leaves out for the caller to add.
    folded_weight_decay: float = 0.0

    @property
    @abstractmethod
    def reference(self):
        """The :class:`~lipo_if.influence.hvp.HessianOperator` with the model, parameter block and
        training rows this operator represents (itself for the autograd operator)."""

    @property
    @abstractmethod
    def n_params(self) -> int:
        """p, the length of every vector this operator acts on."""

    @property
    @abstractmethod
    def n_train(self) -> int:
        """n, the number of training rows."""

    @abstractmethod
    def check_vec(self, vec: torch.Tensor) -> torch.Tensor:
        """``vec`` as a ``[p]`` vector of the operator's dtype (ValueError for another shape)."""

    @abstractmethod
    def matvec(self, vec: torch.Tensor, batch: Batch | None = None) -> torch.Tensor:
        """``H_B · vec`` (λ·vec included), standard layout ``[p]``."""

    @abstractmethod
    def sample_indices(self, batch_size: int, generator: torch.Generator) -> torch.Tensor | None:
        """Row indices of a training minibatch (without replacement), None (= all rows) if ``batch_size ≥ n``."""

    @abstractmethod
    def sample_batch(self, batch_size: int, generator: torch.Generator) -> Batch | None:
        """A training minibatch ``(X, y)`` drawn like :meth:`sample_indices`, None for the full set."""

    def to_solver_layout(self, vec: torch.Tensor) -> torch.Tensor:
        """Standard ``[p]`` → the layout of :meth:`solver_product` (identity unless overridden)."""
        return vec

    def from_solver_layout(self, vec: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_solver_layout`."""
        return vec

    @abstractmethod
    def solver_product(self, vec: torch.Tensor, idx: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        """``H_B · vec`` in the solver layout on training rows ``idx`` (None = all), without
        ``folded_weight_decay·vec``; written into ``out`` when the implementation can."""

    def fused_lissa_step(self, h: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, damping: float,
                         scale: float) -> tuple[float, float] | None:
        """One in-place LiSSA step ``h ← v + (1 − damping)h − H_B h/scale`` (solver layout, without the
        folded λ) returning ``(‖h_new − h‖, ‖h_new‖)``, or None: no fused step (the default)."""
        return None


class WrappedCurvature(CurvatureOperator):
    """An operator built over another one, ``self.op``: the facts, the sampling and the vector checks
    are the wrapped operator's (the rows are the same rows). Subclasses give the products."""

    op: CurvatureOperator

    @property
    def reference(self):
        return self.op.reference

    @property
    def n_params(self) -> int:
        return self.op.n_params

    @property
    def n_train(self) -> int:
        return self.op.n_train

    def check_vec(self, vec: torch.Tensor) -> torch.Tensor:
        return self.op.check_vec(vec)

    def sample_indices(self, batch_size: int, generator: torch.Generator) -> torch.Tensor | None:
        return self.op.sample_indices(batch_size, generator)

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> Batch | None:
        return self.op.sample_batch(batch_size, generator)
