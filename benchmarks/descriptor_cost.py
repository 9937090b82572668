"""What each RDKit 2D descriptor costs per molecule, and what the featurizer's parts cost.

    python benchmarks/descriptor_cost.py --data-dir ../shared/data [--molecules 500] [--json OUT]

Times every function of ``Descriptors._descList`` (the featurizer's ``rdkit2d`` block) on the same
sample of Lipophilicity molecules (seed 0), parsed once beforehand, in one process, one after the
other in interleaved rounds (so a burst of load on this shared machine falls on all of them),
and — for scale — parsing, Morgan counts and the whole descriptor block. Prints the descriptors by
cost, the cumulative share, and how many of them make up 90 % / 99 % of the block's time; then
the package's descriptor block (``RDKitDescriptorFeaturizer``, EState computed once) against
RDKit's own ``Descriptors.CalcMolDescriptors`` on the same molecules, interleaved rounds, and the
ratio of the two.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    from rdkit import Chem, RDLogger
    from rdkit.Chem import Descriptors, rdFingerprintGenerator

    RDLogger.DisableLog("rdApp.*")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("LIPO_IF_DATA"))
    parser.add_argument("--molecules", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    frame = pd.read_csv(Path(args.data_dir) / "lipophilicity.csv")
    smiles = frame["smiles"].sample(args.molecules, random_state=0).tolist()
    start = time.perf_counter()
    mols = [Chem.MolFromSmiles(s) for s in smiles]
    parse_ms = 1000 * (time.perf_counter() - start) / len(mols)
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    start = time.perf_counter()
    for m in mols:
        generator.GetCountFingerprintAsNumPy(m)
    morgan_ms = 1000 * (time.perf_counter() - start) / len(mols)
    cost = {name: 0.0 for name, _ in Descriptors._descList}
    for _ in range(args.rounds):
        for name, fn in Descriptors._descList:
            start = time.perf_counter()
            for m in mols:
                try:
                    fn(m)
                except Exception:  # noqa: BLE001 - a failing descriptor costs what it costs
                    pass
            cost[name] += time.perf_counter() - start
    per_mol = {name: 1000 * c / (args.rounds * len(mols)) for name, c in cost.items()}
    ordered = sorted(per_mol.items(), key=lambda kv: -kv[1])
    total = sum(per_mol.values())
    share = np.cumsum([c for _, c in ordered]) / total
    print(f"{len(mols)} molecules, {args.rounds} rounds; parse {parse_ms:.3f} ms, Morgan counts {morgan_ms:.3f} ms, "
          f"all {len(ordered)} descriptors {total:.3f} ms per molecule (load {os.getloadavg()[0]:.1f})")
    print(f"descriptors making 90 % of the time: {int(np.searchsorted(share, 0.90)) + 1}; 99 %: {int(np.searchsorted(share, 0.99)) + 1}")
    for (name, c), s in zip(ordered[:25], share[:25]):
        print(f"  {name:28s} {c:8.4f} ms  cumulative {s:6.1%}")
    from lipo_if.featurize import RDKitDescriptorFeaturizer

    ours_fn, fast_fn = RDKitDescriptorFeaturizer(), RDKitDescriptorFeaturizer("fast")
    ours, fast, theirs = [], [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        ours_fn(smiles)  # parses too (as the featurizer does)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        fast_fn(smiles)
        fast.append(time.perf_counter() - start)
        start = time.perf_counter()
        for s in smiles:
            Descriptors.CalcMolDescriptors(Chem.MolFromSmiles(s))
        theirs.append(time.perf_counter() - start)
    ours_ms, fast_ms, theirs_ms = (1000 * min(t) / len(smiles) for t in (ours, fast, theirs))
    print(f"descriptor block incl. parsing: ours {ours_ms:.3f} ms, RDKit CalcMolDescriptors {theirs_ms:.3f} ms per molecule "
          f"(best of {args.rounds} interleaved rounds): RDKit / ours = {theirs_ms / ours_ms:.2f}; the 'fast' set "
          f"({fast_fn.dim} descriptors) {fast_ms:.3f} ms = {ours_ms / fast_ms:.2f}× faster than all {ours_fn.dim}")
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "molecules": len(mols),
                                               "parse_ms": parse_ms, "morgan_count_ms": morgan_ms, "descriptors_ms": total,
                                               "ours_block_ms": ours_ms, "fast_block_ms": fast_ms, "rdkit_calcmoldescriptors_ms": theirs_ms,
                                               "per_descriptor_ms": dict(ordered), "load": os.getloadavg()[0]}, indent=1))


if __name__ == "__main__":
    main()
