"""What each RDKit 2D descriptor costs per molecule, and what the featurizer's parts cost.

    python benchmarks/descriptor_cost.py --data-dir ../shared/data [--molecules 500] [--sets fast-fragments lean] [--json OUT]

Times every function of ``Descriptors._descList`` (the featurizer's ``rdkit2d`` block) on the same
sample of Lipophilicity molecules (seed 0), parsed once beforehand, in one process, one after the
other in interleaved rounds (so a burst of load on this shared machine falls on all of them),
and — for scale — parsing, Morgan counts and the whole descriptor block. Prints the descriptors by
cost, the cumulative share, and how many of them make up 90 % / 99 % of the block's time; then
the package's descriptor block (``RDKitDescriptorFeaturizer``, EState computed once) against
RDKit's own ``Descriptors.CalcMolDescriptors`` on the same molecules, interleaved rounds, and the
ratio of the two; with ``--sets`` the blocks of those descriptor sets too (a family's cost on the
block is what dropping it saves: families share RDKit's cached intermediates, so the sum of
single descriptors' times does not tell it).
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
    parser.add_argument("--sets", nargs="*", default=[], metavar="SPEC",
                        help="descriptor sets (lipo_if.descriptors specs, e.g. fast-fragments lean) whose block to time beside all and fast")
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

    # the package's blocks (each parses too, as the featurizer does) and RDKit's own
    # CalcMolDescriptors, in interleaved rounds
    blocks = {spec: RDKitDescriptorFeaturizer(spec) for spec in dict.fromkeys(["all", "fast", *args.sets])}
    times: dict[str, list[float]] = {spec: [] for spec in [*blocks, "rdkit"]}
    for _ in range(args.rounds):
        for spec, block in blocks.items():
            start = time.perf_counter()
            block(smiles)
            times[spec].append(time.perf_counter() - start)
        start = time.perf_counter()
        for s in smiles:
            Descriptors.CalcMolDescriptors(Chem.MolFromSmiles(s))
        times["rdkit"].append(time.perf_counter() - start)
    block_ms = {spec: 1000 * min(t) / len(smiles) for spec, t in times.items()}
    print(f"descriptor block incl. parsing, ms a molecule (best of {args.rounds} interleaved rounds): RDKit CalcMolDescriptors "
          f"{block_ms['rdkit']:.3f}; ours, all {blocks['all'].dim}: {block_ms['all']:.3f} (RDKit / ours = "
          f"{block_ms['rdkit'] / block_ms['all']:.2f})")
    for spec, block in blocks.items():
        print(f"  {spec:40s} {block.dim:4d} descriptors {block_ms[spec]:7.3f} ms  {block_ms['all'] / block_ms[spec]:5.2f}× faster "
              f"than all, saves {block_ms['fast'] - block_ms[spec]:+.3f} ms against fast")
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "molecules": len(mols),
                                               "parse_ms": parse_ms, "morgan_count_ms": morgan_ms, "descriptors_ms": total,
                                               "ours_block_ms": block_ms["all"], "fast_block_ms": block_ms["fast"],
                                               "rdkit_calcmoldescriptors_ms": block_ms["rdkit"], "block_ms": block_ms,
                                               "dims": {spec: b.dim for spec, b in blocks.items()},
                                               "per_descriptor_ms": dict(ordered), "load": os.getloadavg()[0]}, indent=1))


if __name__ == "__main__":
    main()
