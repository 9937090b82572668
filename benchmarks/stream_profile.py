"""Where a streamed pool row's time goes: each stage of ``lipo-if influence`` timed alone, one process.

    python benchmarks/stream_profile.py --data-dir ../shared/data --run runs/stream_scale_fast/run \\
        --pool runs/stream_scale_fast/pool_100000.csv --rows 2000 [--json OUT]

On the first ``--rows`` rows of a pool CSV (e.g. the synthetic analog pool of
``benchmarks/stream_scale.py``) and a trained run, one thread each: reading and standardizing
(``molecule_table``: parse, rdMolStandardize, the hygiene rules), the run's featurizer (``raw`` part by
part: Morgan counts, the RDKit descriptors), the applicability domain (nearest-neighbour Tanimoto to
the training set), and the scores given a solved ``s`` (the function-space solve, not timed: once per
run). Milliseconds a row, and each stage's share of their sum.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import timed  # noqa: E402  (a sibling benchmark module, not a package)

from lipo_if.data import molecule_table  # noqa: E402
from lipo_if.influence.api import Influence  # noqa: E402
from lipo_if.influence.scores import influence_scores  # noqa: E402
from lipo_if.rundir import load_run  # noqa: E402



def _domain_by_bulk_loop(domain):
    """The domain stage as it was before :class:`lipo_if.domain.FingerprintSet` (a function of the
    SMILES): parse, the element and size rules, fingerprint, RDKit's bulk Tanimoto against every
    training molecule, one query at a time."""
    from rdkit import Chem, DataStructs

    from lipo_if.domain import fingerprint_generator

    generator = fingerprint_generator()
    references = [DataStructs.CreateFromBitString("".join("1" if b else "0" for b in column))
                  for column in domain.fingerprints._bits_t.T.astype(bool)]

    def assess(smiles: list[str]) -> None:
        for s in smiles:
            mol = Chem.MolFromSmiles(s)
            domain._reason(mol)
            sims = np.asarray(DataStructs.BulkTanimotoSimilarity(generator.GetFingerprint(mol), references))
            sims.max(), (sims >= domain.neighbor_similarity).sum()
    return assess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--run", required=True)
    parser.add_argument("--pool", required=True)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = load_run(args.run, data_path=str(Path(args.data_dir) / "lipophilicity.csv") if args.data_dir else None)
    frame = pd.read_csv(args.pool, nrows=args.rows, dtype=str, keep_default_na=False)
    load = Path("/proc/loadavg").read_text().split()[:3]
    table, t_table = timed(lambda: molecule_table(frame, Path(args.pool), "smiles", "label"))
    smiles = table.loc[table["error"] == "", "smiles"].tolist()
    stages = {"parse + standardize + rules": t_table}
    featurizer = run.featurizer
    for part in featurizer._parts:
        _, t = timed(lambda: part(smiles))
        stages[f"featurize: {part.name}"] = t
    inf = Influence(run, solver="function-space", damping=0.001, progress=False).fit()
    inf.domain  # built once per run (the training fingerprints), not per row
    _, stages["applicability domain"] = timed(lambda: inf.domain.assess(smiles))
    by_bulk_loop = _domain_by_bulk_loop(inf.domain)
    _, bulk_loop = timed(lambda: by_bulk_loop(smiles))  # the same values, as before FingerprintSet
    x = featurizer.tensor(smiles)
    y = torch.tensor(table.loc[table["error"] == "", "label"].to_numpy(dtype=float))
    op = inf.operator
    _, stages["scores (predictions and s·∇ℓ)"] = timed(lambda: (op.predict(op.theta, x.to(op.dtype)),
                                                             influence_scores(op, inf.s, x, y, "fast", inf.config.chunk_size)))
    total = sum(stages.values())
    n = len(frame)
    rows = {name: {"ms_per_row": round(1000 * t / n, 3), "share": round(t / total, 3)} for name, t in stages.items()}
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": n, "valid": len(smiles), "run": args.run,
              "featurizer": featurizer.config.name, "descriptors": getattr(featurizer.config, "descriptors", None),
              "loadavg_before": load, "stages": rows, "total_ms_per_row": round(1000 * total / n, 3),
              "applicability domain by RDKit's BulkTanimotoSimilarity loop (not in the sum)": {"ms_per_row": round(1000 * bulk_loop / n, 3)}}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
