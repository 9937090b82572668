"""Which of RDKit's 2D descriptors the featurizer's ``rdkit2d`` block computes.

A descriptor set is named by a spec: a named set, optionally minus families, joined by ``-``::

    all                       RDKit's 217 (``Descriptors._descList``)
    fast                      all without the costliest families (:data:`COSTLY_DESCRIPTORS`)
    lean                      fast without five families that carry little on validation, at
                              half its time (:data:`LEAN_DROPPED_FAMILIES`; benchmarks/RESULTS.md)
    fast-fragments-bcut       fast without the fragment counts and the BCUT2D family

The columns keep RDKit's order whatever the spec. The families (:data:`DESCRIPTOR_FAMILIES`)
partition the 217 descriptors by what they compute and so by the intermediate RDKit caches on the
molecule (Crippen contributions, Gasteiger charges, EState indices) — dropping a whole family is
what saves its time; dropping half of one often saves nothing.
"""
from __future__ import annotations

from typing import Callable

#: The four EState descriptors, each of which has RDKit recompute every atom's EState index
#: (``EStateIndices(mol, force=1)``, ≈ 0.27 ms a molecule each): computed once per molecule by
#: the featurizer and reduced the way RDKit reduces them (rdkit.Chem.EState.EState) — the same
#: values, bit for bit.
ESTATE_REDUCTIONS: dict[str, Callable] = {
    "MaxEStateIndex": max,
    "MinEStateIndex": min,
    "MaxAbsEStateIndex": lambda values: max(abs(x) for x in values),
    "MinAbsEStateIndex": lambda values: min(abs(x) for x in values),
}

#: The descriptors that cost most per molecule (``benchmarks/descriptor_cost.py``, 300
#: Lipophilicity molecules, 2026-12-02): qed 1.1 ms; BertzCT 0.33; Ipc + AvgIpc 0.40; SPS 0.22; the
#: BCUT2D family 0.19 (its first member computes all eight); Chi3/Chi4 n/v 0.55; BalabanJ 0.10; the
#: four EState extremes 0.42 (computed once here) — together ≈ 3.4 of ≈ 5.6 ms. The ``fast`` set
#: leaves them out (MolLogP, 0.13 ms, stays: Crippen's logP is the closest descriptor to the target).
COSTLY_DESCRIPTORS = frozenset({
    "qed", "BertzCT", "Ipc", "AvgIpc", "SPS", "Chi3n", "Chi3v", "Chi4n", "Chi4v", "BalabanJ", *ESTATE_REDUCTIONS,
    *(f"BCUT2D_{suffix}" for suffix in ("MWHI", "MWLOW", "CHGHI", "CHGLO", "LOGPHI", "LOGPLOW", "MRHI", "MRLOW")),
})

_CONNECTIVITY = ("Chi0", "Chi0n", "Chi0v", "Chi1", "Chi1n", "Chi1v", "Chi2n", "Chi2v", "Chi3n", "Chi3v", "Chi4n", "Chi4v",
                 "HallKierAlpha", "Kappa1", "Kappa2", "Kappa3", "Phi")

#: Family name → does RDKit descriptor ``name`` belong to it. Every descriptor of RDKit's list
#: is in exactly one family (tested).
DESCRIPTOR_FAMILIES: dict[str, Callable[[str], bool]] = {
    "fragments": lambda name: name.startswith("fr_"),                            # 85 SMARTS counts
    "estate_vsa": lambda name: name.startswith(("EState_VSA", "VSA_EState")),    # EState indices binned by VSA
    "estate": lambda name: name in ESTATE_REDUCTIONS,                            # EState extremes
    "peoe_vsa": lambda name: name.startswith("PEOE_VSA"),                        # Gasteiger charge bins
    "charges": lambda name: name.endswith("PartialCharge"),                      # Gasteiger extremes
    "smr_vsa": lambda name: name.startswith("SMR_VSA"),                          # Crippen MR bins
    "slogp_vsa": lambda name: name.startswith("SlogP_VSA"),                      # Crippen logP bins
    "crippen": lambda name: name in ("MolLogP", "MolMR"),
    "bcut": lambda name: name.startswith("BCUT2D"),
    "connectivity": lambda name: name in _CONNECTIVITY,                          # Kier–Hall χ, κ, φ
    "complexity": lambda name: name in ("BertzCT", "Ipc", "AvgIpc", "BalabanJ", "SPS"),
    "fp_density": lambda name: name.startswith("FpDensityMorgan"),
    "qed": lambda name: name == "qed",
    "surface": lambda name: name in ("TPSA", "LabuteASA"),
    "weights": lambda name: name in ("MolWt", "HeavyAtomMolWt", "ExactMolWt", "NumValenceElectrons", "NumRadicalElectrons"),
    "counts": lambda name: (name.startswith("Num") and name not in ("NumValenceElectrons", "NumRadicalElectrons"))
    or name in ("FractionCSP3", "HeavyAtomCount", "NHOHCount", "NOCount", "RingCount"),
}

#: The families the ``lean`` set leaves out of ``fast`` (benchmarks/RESULTS.md, "Which descriptors
#: earn their time"; ``benchmarks/tune_model.py --grid descriptors=…``, 5 split seeds × 2
#: initializations, validation only). On the random splits each of them, dropped alone, left the mean
#: validation RMSE within 0.0005 of ``fast``'s or lowered it, and dropping the five together moved it
#: by +0.002 while halving the block's time (2.18 → 1.14 ms a molecule); the fragment counts (+0.024
#: when dropped), the SMR bins, the Morgan densities and the counts stay. On the scaffold splits the
#: five together cost +0.009 (worse on all five), so ``fast`` stays the default and ``lean`` is the
#: set for pools of millions, where the descriptors are most of a molecule's time.
LEAN_DROPPED_FAMILIES: tuple[str, ...] = ("estate_vsa", "connectivity", "weights", "charges", "peoe_vsa")

#: Named set → (descriptors it leaves out by name, families it leaves out); ``lean`` is ``fast``
#: minus :data:`LEAN_DROPPED_FAMILIES`.
NAMED_SETS: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "all": (frozenset(), ()),
    "fast": (COSTLY_DESCRIPTORS, ()),
    "lean": (COSTLY_DESCRIPTORS, LEAN_DROPPED_FAMILIES),
}


def family_of(name: str) -> str:
    """The family of RDKit descriptor ``name`` (:data:`DESCRIPTOR_FAMILIES`)."""
    for family, member in DESCRIPTOR_FAMILIES.items():
        if member(name):
            return family
    raise ValueError(f"RDKit descriptor {name!r} belongs to no family of lipo_if.descriptors")


def check_descriptor_spec(spec: str) -> tuple[str, tuple[str, ...]]:
    """``spec`` → ``(named set, families dropped)``, or ValueError naming the bad part."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"descriptors must be a named set ({', '.join(NAMED_SETS)}) optionally minus families, got {spec!r}")
    base, *dropped = [part.strip() for part in spec.split("-")]
    if base not in NAMED_SETS:
        raise ValueError(f"descriptors must be one of {', '.join(NAMED_SETS)} (optionally minus families, e.g. fast-fragments), "
                         f"got {base!r} in {spec!r}")
    unknown = [family for family in dropped if family not in DESCRIPTOR_FAMILIES]
    if unknown:
        raise ValueError(f"unknown descriptor famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))} in "
                         f"{spec!r}; choose from {', '.join(DESCRIPTOR_FAMILIES)}")
    return base, tuple(dropped)


def descriptor_names(spec: str, available: list[str]) -> list[str]:
    """The names of ``available`` (RDKit's descriptor list, in its order) that ``spec`` keeps."""
    base, dropped = check_descriptor_spec(spec)
    excluded, base_dropped = NAMED_SETS[base]
    dropped = (*base_dropped, *dropped)
    kept = [name for name in available if name not in excluded and family_of(name) not in dropped]
    if not kept:
        raise ValueError(f"descriptors {spec!r} leaves no descriptor")
    return kept
