"""Pools with something to give, built from Lipophilicity itself (seeded; never written as files).

Every scenario starts from the seed's random 80/10/10 split of the cleaned dataset: validation and
test stay as they are, and the *training* part is cut into the base model's training set and the
pool — so the pool never overlaps the scenario's validation or test molecules, and its clean
labels are real measurements from the same distribution. A fraction of the pool's labels is then
corrupted, known by construction (``Scenario.corrupted``):

- ``shift``: label + s·U(2, 3) log units, s = ±1 at random (a wrong sign, a unit slip, a typo);
- ``swap``: the label of another corrupted-by-swap pool molecule (a row mix-up) — realistic and
  hard, since the wrong label is a plausible logD value.

Scenarios (``build_scenario(name, dataset, seed)``):

- ``noisy``: the pool is 30 % of the training part, 30 % of its labels corrupted (half shifted,
  half swapped); the base model trains on the other 70 %;
- ``lowdata``: the base model trains on 30 % of the training part, the pool is the other 70 %,
  30 % of it corrupted the same way — where added data is worth most;
- ``shift``: the seed's *scaffold* split (validation and test hold Bemis–Murcko scaffolds absent
  from training); the training molecules most similar to validation ∪ test (the top 30 % by their
  nearest-neighbour Tanimoto similarity, Morgan radius 2, 2048 bits) are *near-target*: two thirds
  of them go to the pool, one third stays in training (the target region is under-represented),
  and as many random off-target training molecules join the pool; 30 % of the pool corrupted as above.

(The course's external set is reported by ``lipo-if run``: a real pool, no known corruptions.)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .data import MoleculeDataset, Split, make_split
from .pool import Pool

#: name → (pool fraction of the training part, corrupted fraction of the pool)
SCENARIOS: dict[str, tuple[float, float]] = {"noisy": (0.3, 0.3), "lowdata": (0.7, 0.3), "shift": (0.0, 0.3)}
#: shift: the fraction of training molecules that are near-target, and the part of them moved to the pool
NEAR_TARGET_FRACTION, NEAR_TARGET_TO_POOL = 0.3, 2 / 3
#: shift corruptions: |Δ| drawn uniformly from this range (log units)
SHIFT_RANGE = (2.0, 3.0)


@dataclass
class Scenario:
    """A base split and a pool. ``pool`` rows are 0…m−1; ``indices[i]`` is row i's dataset index,
    ``true_labels[i]`` its measured label, ``corrupted[i]`` whether ``pool``'s label is wrong and
    ``kind[i]`` how ("", "shift" or "swap")."""

    name: str
    seed: int
    split: Split
    pool: Pool
    indices: np.ndarray
    true_labels: np.ndarray
    corrupted: np.ndarray
    kind: list[str] = field(default_factory=list)

    @property
    def clean_rows(self) -> list[int]:
        """The pool rows whose label is the measured one (the clean-pool oracle adds exactly these)."""
        return [int(i) for i in np.flatnonzero(~self.corrupted)]


def corrupt(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(new labels, corrupted mask, kinds)``: ``fraction`` of the rows corrupted, half by a shift of
    ±U(2, 3), half by a derangement of their labels among themselves (every swapped row gets
    another row's label; a swap that happens to land within 0.5 log units is still counted)."""
    n = len(labels)
    chosen = rng.permutation(n)[: int(round(fraction * n))]
    n_swap = len(chosen) // 2
    swap, shift = chosen[:n_swap], chosen[n_swap:]
    out = labels.astype(float).copy()
    kinds = [""] * n
    sign = rng.choice([-1.0, 1.0], size=len(shift))
    out[shift] = labels[shift] + sign * rng.uniform(*SHIFT_RANGE, size=len(shift))
    if n_swap >= 2:
        perm = (np.arange(n_swap) + 1 + rng.integers(0, n_swap - 1)) % n_swap  # a rotation: no fixed point
        out[swap] = labels[swap[perm]]
    for i in shift:
        kinds[int(i)] = "shift"
    for i in (swap if n_swap >= 2 else []):
        kinds[int(i)] = "swap"
    corrupted = np.array([k != "" for k in kinds])
    return out, corrupted, kinds


def build_scenario(name: str, dataset: MoleculeDataset, seed: int) -> Scenario:
    """The scenario ``name`` (see the module docstring) for split seed ``seed``."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    pool_fraction, corrupt_fraction = SCENARIOS[name]
    rng = np.random.default_rng(7919 * (seed + 1) + len(name))
    if name == "shift":
        split = make_split(dataset, "scaffold", seed)
        pool_idx, base_idx = _shift_pool(dataset, split, rng)
    else:
        split = make_split(dataset, "random", seed)
        train = np.array(split.train)
        order = rng.permutation(len(train))
        n_pool = int(round(pool_fraction * len(train)))
        pool_idx, base_idx = np.sort(train[order[:n_pool]]), np.sort(train[order[n_pool:]])
    true = dataset.labels[pool_idx].astype(float)
    labels, corrupted, kinds = corrupt(true, corrupt_fraction, rng)
    pool = Pool.from_smiles([dataset.smiles[i] for i in pool_idx], labels)
    pool.source = f"<scenario {name}, seed {seed}>"
    base = replace(split, train=[int(i) for i in base_idx], method=f"{split.method}+{name}")
    return Scenario(name, seed, base, pool, pool_idx, true, corrupted, kinds)


def target_similarity(dataset: MoleculeDataset, rows: list[int], targets: list[int]) -> np.ndarray:
    """Nearest-neighbour Tanimoto similarity ``[len(rows)]`` of each row to the ``targets``
    (Morgan radius 2, 2048 bits, RDKit's bulk similarity)."""
    from rdkit import Chem, DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    fps = {i: gen.GetFingerprint(Chem.MolFromSmiles(dataset.smiles[i])) for i in set(rows) | set(targets)}
    target_fps = [fps[i] for i in targets]
    return np.array([max(DataStructs.BulkTanimotoSimilarity(fps[i], target_fps)) for i in rows])


def _shift_pool(dataset: MoleculeDataset, split: Split, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(pool indices, base training indices)`` of the ``shift`` scenario (module docstring)."""
    train = np.array(split.train)
    similarity = target_similarity(dataset, list(train), list(split.val) + list(split.test))
    near = train[np.argsort(-similarity, kind="stable")[: int(round(NEAR_TARGET_FRACTION * len(train)))]]
    near = near[rng.permutation(len(near))]
    to_pool = near[: int(round(NEAR_TARGET_TO_POOL * len(near)))]
    off = np.setdiff1d(train, near)
    off_pool = off[rng.permutation(len(off))[: len(to_pool)]]
    pool = np.sort(np.concatenate([to_pool, off_pool]))
    return pool, np.sort(np.setdiff1d(train, pool))
