"""How many rows each molecule-hygiene rule touches, on Lipophilicity and the course's external set.

    python tools/hygiene_counts.py --data-dir ../shared/data [--json OUT.json]

Parse-time rules (lipo_if.standardize) on every row of both files; what standardization changed
(salts / solvents stripped, charges neutralized, other normalizations: the standardized SMILES
differs from RDKit's plain canonical SMILES of the input); the label range; and the domain rules
(lipo_if.domain) of the Task-1 random split, seed 0 (the run `lipo-if train` makes by default):
foreign elements, the heavy-atom limit, and the nearest-neighbour similarity (below 0.3 = out of
domain) of the external rows and of that split's own validation and test molecules.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from lipo_if.data import load_dataset, make_split, read_molecule_csv, resolve_lipophilicity_path
from lipo_if.domain import Domain
from lipo_if.io import atomic_write_json
from lipo_if.standardize import _rdkit


def rule_of(reason: str) -> str:
    """The rule behind a reason (reasons carry values; counts are per rule)."""
    for rule in ("invalid SMILES", "heavy atoms", "dummy atom", "standardization failed", "no carbon", "unpaired electrons",
                 "outside the plausible logD range", "not in the training set"):
        if rule in reason:
            return rule
    return reason


def standardization_changes(table) -> dict:
    Chem = _rdkit()
    counts = Counter()
    for given, std in zip(table["smiles_input"], table["smiles"]):
        mol = Chem.MolFromSmiles(given) if isinstance(given, str) else None
        if mol is None or not std:
            continue
        if Chem.MolToSmiles(mol) == std:
            continue
        counts["changed"] += 1
        if len(Chem.GetMolFrags(mol)) > 1:
            counts["fragments stripped (salt / solvent)"] += 1
        elif sum(abs(a.GetFormalCharge()) for a in mol.GetAtoms()) != sum(abs(a.GetFormalCharge()) for a in Chem.MolFromSmiles(std).GetAtoms()):
            counts["charges neutralized"] += 1
        else:
            counts["other normalization"] += 1
    return dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir")
    parser.add_argument("--json")
    parser.add_argument("--min-similarity", type=float, default=0.3)
    args = parser.parse_args()
    lipo_path = resolve_lipophilicity_path(data_dir=args.data_dir)
    external_path = Path(lipo_path).parent / "external.csv"
    out: dict = {}
    tables = {"lipophilicity": read_molecule_csv(lipo_path), "external": read_molecule_csv(external_path)}
    for name, table in tables.items():
        out[name] = {"rows": len(table), "rejected_by_rule": dict(Counter(rule_of(e) for e in table["error"] if e)),
                     "standardization": standardization_changes(table)}
    dataset = load_dataset(lipo_path)
    split = make_split(dataset, "random", seed=0)
    train = [dataset.smiles[i] for i in split.train]
    domain = Domain.from_smiles(train)
    out["domain"] = {"split": "random, seed 0", "n_train": len(train), "elements": sorted(domain.elements),
                     "max_heavy_atoms": domain.max_heavy_atoms, "min_similarity": args.min_similarity}
    external = tables["external"]
    ok = external["error"] == ""
    reasons = domain.reasons(external.loc[ok, "smiles"].tolist())
    out["external"]["domain_rules"] = dict(Counter(rule_of(r) if "heavy atoms" not in r else "heavy atoms (run limit)" for r in reasons if r))
    for part, smiles in (("external", external.loc[ok, "smiles"].tolist()),
                         ("val", [dataset.smiles[i] for i in split.val]), ("test", [dataset.smiles[i] for i in split.test])):
        nn, neighbors = domain.similarity(smiles)
        out.setdefault("similarity", {})[part] = {
            "n": len(smiles), "below_threshold": int((nn < args.min_similarity).sum()),
            "nn_quartiles": [round(float(q), 3) for q in np.percentile(nn, [25, 50, 75])],
            "median_neighbors_at_0.5": float(np.median(neighbors))}
    print(json.dumps(out, indent=1))
    if args.json:
        atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
