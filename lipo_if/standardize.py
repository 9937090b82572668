"""Molecule hygiene at parse time: RDKit standardization and the rules that reject a structure.

Every table the package reads — Lipophilicity, a pool, a held-out set — goes through
:func:`standardize` (from :func:`lipo_if.data.molecule_table`), so the features, the duplicate keys
and the overlap guard all see the *standardized* molecule, and a salt form of a test molecule is
the test molecule. The steps follow the field's convention (RDKit ``rdMolStandardize``, as
chemprop's and most QSAR pipelines' preprocessing does):

1. parse; reject an empty or unparsable SMILES (``invalid SMILES``);
2. reject more than ``max_heavy_atoms`` heavy atoms — checked right after parsing, *before*
   standardization and long before descriptors, whose cost grows steeply with size (RDKit's 2D
   descriptors: 0.04 s at 120 atoms, 0.3 s at 250, minutes at 5 000); the default
   :data:`PARSE_HEAVY_ATOM_LIMIT` is a safety bound for any file, the training set's own range
   bounds scoring more tightly (:mod:`lipo_if.domain`);
3. reject dummy atoms (``*``, attachment points: a fragment, not a molecule);
4. ``Cleanup`` (sanitize, remove explicit H, disconnect metals, normalize functional groups,
   reionize), keep the largest *organic* fragment (salts, counter-ions and solvents stripped),
   neutralize charges where a neutral form exists (``Uncharger``; quaternary ammonium and
   zwitterionic nitro stay charged), and, only when ``tautomer=True``, RDKit's canonical tautomer
   (off by default: it is slow, and it can merge molecules whose measured logD differ; it must be
   the same for every table of a run);
5. reject what is left if it has no carbon (``[H][H]``, ``[Na+].[Cl-]``, cisplatin's ammonia), has
   unpaired electrons, or is no valid molecule any more (ferrocene: its cyclopentadienyl rings, cut
   from the iron, do not kekulize — "standardization failed"). Organometallics whose metal stays
   bonded to carbon (``C[Hg]C``) pass here and are excluded by the run's element rule
   (:mod:`lipo_if.domain`).

Labels: a label outside :data:`LOGD_RANGE` is no logD a measurement gives (Lipophilicity spans
−1.5 … 4.5); such a row is rejected with its reason (:func:`label_reason`).

Every rejection is a reason string that ends up in the ``error`` column of the table and the
``excluded`` column of every output — never a crash, never a silent drop.
"""
from __future__ import annotations

import math
from functools import lru_cache

#: Heavy atoms above which a structure is rejected at parse time (any file): twice the largest
#: Lipophilicity molecule (115). Scoring against a run uses the tighter :mod:`lipo_if.domain` limit.
PARSE_HEAVY_ATOM_LIMIT = 230
#: Plausible logD range (log units) of a label; Lipophilicity's labels span −1.5 … 4.5.
LOGD_RANGE = (-6.0, 10.0)


def _rdkit():
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")  # invalid SMILES are reported by us, once, not by RDKit per row
    return Chem


@lru_cache(maxsize=1)
def _tools():
    from rdkit.Chem.MolStandardize import rdMolStandardize

    return (rdMolStandardize.LargestFragmentChooser(preferOrganic=True), rdMolStandardize.Uncharger(),
            rdMolStandardize.TautomerEnumerator(), rdMolStandardize.MetalDisconnector(), rdMolStandardize.Normalizer(),
            rdMolStandardize.Reionizer())


def cleanup(mol):
    """``rdMolStandardize.Cleanup(mol)`` — remove explicit H, disconnect metals, normalize functional
    groups, reionize, re-perceive stereo — with the metal disconnector, normalizer and reionizer
    built once per process: ``Cleanup`` builds all three (parsing every transformation's SMARTS)
    on every call, a third of its time (benchmarks/RESULTS.md). The same canonical SMILES as
    ``Cleanup`` on every Lipophilicity and course molecule, salts and metal complexes (a test)."""
    Chem = _rdkit()
    *_, metals, normalizer, reionizer = _tools()
    mol = Chem.RWMol(Chem.RemoveHs(mol))
    metals.DisconnectInPlace(mol)
    mol = reionizer.reionize(normalizer.normalize(mol))
    Chem.AssignStereochemistry(mol, cleanIt=True, force=True)
    return mol


def standardize_mol(mol, tautomer: bool = False):
    """The standardized form of an RDKit molecule (steps 4 of the module docstring); may raise."""
    chooser, uncharger, enumerator, *_ = _tools()
    mol = cleanup(mol)
    mol = chooser.choose(mol)
    mol = uncharger.uncharge(mol)
    if tautomer:
        mol = enumerator.Canonicalize(mol)
    return mol


def standardize(smiles: str, tautomer: bool = False, max_heavy_atoms: int = PARSE_HEAVY_ATOM_LIMIT) -> tuple[str, str, str]:
    """``(standardized isomeric canonical SMILES, stereo-insensitive key, reason)`` of one SMILES.

    ``reason`` is ``""`` for an accepted molecule; otherwise the SMILES and key are ``""`` and
    ``reason`` says why the structure was rejected. Idempotent: standardizing the output again
    gives the same SMILES.
    """
    Chem = _rdkit()
    if not isinstance(smiles, str) or not smiles.strip():
        return "", "", "invalid SMILES"
    mol = Chem.MolFromSmiles(smiles.strip())
    if mol is None:
        return "", "", "invalid SMILES"
    heavy = mol.GetNumHeavyAtoms()
    if heavy > max_heavy_atoms:
        return "", "", f"{heavy} heavy atoms, more than the limit of {max_heavy_atoms}"
    if any(atom.GetAtomicNum() == 0 for atom in mol.GetAtoms()):
        return "", "", "dummy atom (*): a fragment or attachment point, not a molecule"
    try:
        std = standardize_mol(mol, tautomer)
        canonical = Chem.MolToSmiles(std, isomericSmiles=True)
    except Exception as exc:  # noqa: BLE001 - RDKit raises many kinds; each becomes a reason
        return "", "", f"standardization failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
    if not any(atom.GetAtomicNum() == 6 for atom in std.GetAtoms()):
        return "", "", f"no carbon: inorganic ({canonical} after standardization)"
    if any(atom.GetNumRadicalElectrons() for atom in std.GetAtoms()):
        return "", "", f"unpaired electrons after standardization ({canonical}): a metal complex or radical"
    if Chem.MolFromSmiles(canonical) is None:
        return "", "", f"standardization failed (its SMILES {canonical} does not parse)"
    return canonical, Chem.MolToSmiles(std, isomericSmiles=False), ""


def label_reason(value: float, label_range: tuple[float, float] | None = LOGD_RANGE) -> str:
    """``""`` for a plausible label, else why not (``label_range=None``: any finite value)."""
    if not math.isfinite(value):
        return "label is not a finite number"
    if label_range is not None and not label_range[0] <= value <= label_range[1]:
        return f"label {value:g} outside the plausible logD range [{label_range[0]:g}, {label_range[1]:g}]"
    return ""
