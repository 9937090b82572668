"""A directed message-passing neural network (D-MPNN, Yang et al. 2019, J. Chem. Inf. Model. 59, 3370).

Messages live on directed bonds. For bond ``u→v`` with atom features ``x_u`` and bond features
``e_uv`` (:mod:`lipo_if.graph`), and ``τ`` = ReLU::

    h⁰_uv   = τ(W_i [x_u ‖ e_uv])
    m^t_uv  = Σ_{k→u, k ≠ v} h^{t−1}_ku            (= incoming(u) − h^{t−1}_vu)
    h^t_uv  = τ(s_uv + W_h m^t_uv)                   t = 1 … depth − 1
    a_v     = τ(W_o [x_v ‖ Σ_{u→v} h_uv])            per atom
    z       = agg_v a_v  ‖  mol_x                    per molecule (mol_x: e.g. RDKit descriptors)
    f       = FFN(z)                                  Linear–ReLU–…–Linear, one output

The skip term ``s_uv`` is ``h⁰_uv`` (``message_skip="relu"``) or the pre-activation ``W_i [x_u ‖ e_uv]``
(``"linear"``, as Yang et al. write it and chemprop computes it); ``agg`` is the atoms' mean
(``aggregation="mean"``), their sum, or their sum / 100 (``"norm"``, chemprop 2's default readout:
a sum keeps the molecule's size, which a mean throws away, and the constant keeps it in the range of
the other features).

Like the MLP (:mod:`lipo_if.model`) it has no dropout and no normalization layers, so the loss is
a deterministic function of θ with a well-defined gradient and Hessian at θ̂; the training objective
is the same ``mean (f − y)² + (λ/2)‖θ‖²`` (:func:`lipo_if.model.objective`).

``W_i`` and ``W_h`` are applied to every directed bond, ``W_o`` to every atom: a molecule's gradient
of them is a sum over its rows, the segment-summed form of the fused influence op.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

from .graph import ATOM_DIM, BOND_DIM, MolGraphs
from .model import seeded_init

#: Readouts from atoms to the molecule: mean, sum, or sum / ``NORM_AGGREGATION_SCALE`` ("norm").
AGGREGATIONS = ("mean", "sum", "norm")
#: chemprop 2's ``NormAggregation`` default divisor.
NORM_AGGREGATION_SCALE = 100.0
#: The skip term of the message update: the activated (``relu``) or raw (``linear``) W_i output.
MESSAGE_SKIPS = ("relu", "linear")


@dataclass
class DMPNNConfig:
    """Shape of the D-MPNN: ``hidden`` message width, ``depth`` message-passing steps (counting the
    initial one, as chemprop does), ``ffn_hidden`` widths of the feed-forward head, ``mol_dim`` width
    of the molecule-level features."""

    mol_dim: int = 0
    hidden: int = 300
    depth: int = 3
    ffn_hidden: tuple[int, ...] = (300,)
    atom_dim: int = ATOM_DIM
    bond_dim: int = BOND_DIM
    # The two defaults below are what runs saved before these fields existed computed; a checkpoint
    # without them loads as it was trained.
    aggregation: str = "mean"
    message_skip: str = "relu"

    def __post_init__(self) -> None:
        self.ffn_hidden = tuple(int(h) for h in self.ffn_hidden)
        checks = [
            (self.aggregation in AGGREGATIONS, f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}"),
            (self.message_skip in MESSAGE_SKIPS, f"message_skip must be one of {', '.join(MESSAGE_SKIPS)}, got {self.message_skip!r}"),
            (self.mol_dim >= 0, f"mol_dim must be ≥ 0, got {self.mol_dim}"),
            (self.hidden > 0, f"hidden must be positive, got {self.hidden}"),
            (self.depth >= 1, f"depth must be ≥ 1, got {self.depth}"),
            (all(h > 0 for h in self.ffn_hidden), f"ffn_hidden widths must be positive, got {self.ffn_hidden}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ffn_hidden"] = list(self.ffn_hidden)
        return d


class Tap(NamedTuple):
    """One application of a Linear layer in a forward pass: ``layer`` its module name (``W_h``,
    ``ffn.0``, …), ``input`` ``[rows, in]`` and ``output`` ``[rows, out]`` (pre-activation, in the
    autograd graph), ``rows`` what a row is: ``"bonds"``, ``"atoms"`` or ``"molecules"``.

    A molecule's gradient of the layer is the sum over its rows of ``∂ℓ/∂output[r] ⊗ input[r]``
    (and of ``∂ℓ/∂output[r]`` for a bias), summed again over every application of the layer."""

    layer: str
    input: torch.Tensor
    output: torch.Tensor
    rows: str


class DMPNN(nn.Module):
    """``forward(graphs: MolGraphs)`` → predictions ``[M]`` (logD units).

    Parameters: ``W_i`` (bond input, no bias), ``W_h`` (message update, no bias), ``W_o`` (atom
    readout) and ``ffn`` (an ``nn.ModuleList`` of Linear layers, ReLU between them).
    """

    def __init__(self, config: DMPNNConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.W_i = nn.Linear(c.atom_dim + c.bond_dim, c.hidden, bias=False)
        self.W_h = nn.Linear(c.hidden, c.hidden, bias=False)
        self.W_o = nn.Linear(c.atom_dim + c.hidden, c.hidden)
        widths = [c.hidden + c.mol_dim, *c.ffn_hidden, 1]
        self.ffn = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    @staticmethod
    def _linear(layer: nn.Linear, name: str, x: torch.Tensor, rows: str, taps: list | None) -> torch.Tensor:
        out = layer(x)
        if taps is not None:
            taps.append(Tap(name, x, out, rows))
        return out

    def encode(self, g: MolGraphs, taps: list | None = None) -> torch.Tensor:
        """Molecule embeddings ``[M, hidden + mol_dim]`` (the FFN's input); ``taps``: a list that
        receives a :class:`Tap` per Linear application (the influence scores' per-row factors)."""
        pre = self._linear(self.W_i, "W_i", torch.cat([g.atom_x[g.bond_src], g.bond_x], dim=1), "bonds", taps)
        h0 = torch.relu(pre)
        skip = pre if self.config.message_skip == "linear" else h0
        h = h0
        n_atoms = g.atom_x.shape[0]
        for _ in range(self.config.depth - 1):
            incoming = h.new_zeros(n_atoms, h.shape[1]).index_add(0, g.bond_dst, h)
            h = torch.relu(skip + self._linear(self.W_h, "W_h", incoming[g.bond_src] - h[g.bond_rev], "bonds", taps))
        incoming = h.new_zeros(n_atoms, h.shape[1]).index_add(0, g.bond_dst, h)
        atoms = torch.relu(self._linear(self.W_o, "W_o", torch.cat([g.atom_x, incoming], dim=1), "atoms", taps))
        mols = atoms.new_zeros(len(g), atoms.shape[1]).index_add(0, g.atom_mol, atoms)
        if self.config.aggregation == "mean":
            mols = mols / g.n_atoms.clamp(min=1).to(atoms.dtype).unsqueeze(1)
        elif self.config.aggregation == "norm":
            mols = mols / NORM_AGGREGATION_SCALE
        return torch.cat([mols, g.mol_x.to(mols.dtype)], dim=1)

    def forward(self, g: MolGraphs, taps: list | None = None) -> torch.Tensor:
        z = self.encode(g, taps)
        last = len(self.ffn) - 1
        for i, layer in enumerate(self.ffn):
            z = self._linear(layer, f"ffn.{i}", z, "molecules", taps)
            if i < last:
                z = torch.relu(z)
        return z.squeeze(-1)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_dmpnn(config: DMPNNConfig, seed: int | None = None, init_bias: float | None = None) -> DMPNN:
    """A D-MPNN with a seeded initialization; ``init_bias`` sets the output bias (the label mean)."""
    return seeded_init(lambda: DMPNN(config), seed, init_bias, lambda model: model.ffn[-1])
