"""Where a streamed pool row's time goes: each stage of ``lipo-if influence`` timed alone, one process.

    python benchmarks/stream_profile.py --data-dir ../shared/data --run runs/stream_scale_fast/run \\
        --pool runs/stream_scale_fast/pool_100000.csv --rows 2000 [--json OUT]

On the first ``--rows`` rows of a pool CSV (e.g. the synthetic analog pool of
``benchmarks/stream_scale.py``) and a trained run, one thread each: reading and standardizing
(``molecule_table``: parse, rdMolStandardize, the hygiene rules), the run's featurizer (``raw`` part by
part: Morgan counts, the RDKit descriptors), the applicability domain (nearest-neighbour Tanimoto to
the training set), and the scores given a solved ``s`` (the function-space solve, not timed: once per
run). Milliseconds a row, and each stage's share of their sum — each stage as the stream runs it now
and as it ran before three changes (``ms_per_row_before``): rdMolStandardize.Cleanup building its
tools per call (now ``lipo_if.standardize.cleanup``), every feature block parsing the SMILES again
(now one parse), and the domain's RDKit BulkTanimotoSimilarity loop (now
``lipo_if.domain.FingerprintSet``) — timed interleaved in the same process, best of ``--rounds``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pool_sample import add_pool_sample_args, load_pool_sample  # noqa: E402  (sibling benchmark modules, not a package)
from _timing import timed  # noqa: E402

from lipo_if.data import molecule_table  # noqa: E402
from lipo_if.influence.api import Influence  # noqa: E402
from lipo_if.influence.scores import influence_scores  # noqa: E402



def _with_rdkit_cleanup(fn):
    """``fn()`` with rdMolStandardize.Cleanup (its tools built per call) in place of lipo_if's cleanup."""
    from rdkit.Chem.MolStandardize import rdMolStandardize

    from lipo_if import standardize

    cached, standardize.cleanup = standardize.cleanup, rdMolStandardize.Cleanup
    try:
        return fn()
    finally:
        standardize.cleanup = cached


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
    add_pool_sample_args(parser, rows=2000)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every stage, now and before; the best of each")
    args = parser.parse_args()
    run, frame = load_pool_sample(args)
    load = Path("/proc/loadavg").read_text().split()[:3]
    featurizer = run.featurizer
    inf = Influence(run, solver="function-space", damping=0.001, progress=False).fit()
    inf.domain  # built once per run (the training fingerprints), not per row
    by_bulk_loop = _domain_by_bulk_loop(inf.domain)
    table = molecule_table(frame, Path(args.pool), "smiles", "label")
    smiles = table.loc[table["error"] == "", "smiles"].tolist()
    fresh: list = []  # molecules parsed for the stage about to be timed (the worker's single parse, timed on its own)

    def fresh_mols() -> list:
        return fresh
    x = featurizer.tensor(smiles)
    y = torch.tensor(table.loc[table["error"] == "", "label"].to_numpy(dtype=float))
    op = inf.operator
    # each stage as the stream's worker and main process run it now, and (not in the sum) as before
    # FingerprintSet, the cached cleanup and the single parse: interleaved, best of --rounds
    now = {"parse + standardize + rules": lambda: molecule_table(frame, Path(args.pool), "smiles", "label"),
           "parse the standardized SMILES (once, for every block)": lambda: [Chem.MolFromSmiles(s) for s in smiles],
           **{f"featurize: {part.name}": (lambda part=part: part(fresh_mols())) for part in featurizer._parts},
           "applicability domain": lambda: inf.domain.assess(smiles),
           "scores (predictions and s·∇ℓ)": lambda: (op.predict(op.theta, x.to(op.dtype)),
                                                     influence_scores(op, inf.s, x, y, "fast", inf.config.chunk_size))}
    before = {"parse + standardize + rules": lambda: _with_rdkit_cleanup(lambda: molecule_table(frame, Path(args.pool), "smiles", "label")),
              "parse the standardized SMILES (once, for every block)": lambda: None,
              **{f"featurize: {part.name}": (lambda part=part: part(smiles)) for part in featurizer._parts},  # each block parses
              "applicability domain": lambda: by_bulk_loop(smiles),
              "scores (predictions and s·∇ℓ)": now["scores (predictions and s·∇ℓ)"]}
    best_now, best_before = {}, {}
    for _ in range(args.rounds):
        for name in now:
            fresh.clear()
            fresh.extend(Chem.MolFromSmiles(s) for s in smiles)  # (RDKit caches descriptor parts on a molecule: new ones each time)
            best_now[name] = min(best_now.get(name, float("inf")), timed(now[name])[1])
            best_before[name] = min(best_before.get(name, float("inf")), timed(before[name])[1])
    total, total_before = sum(best_now.values()), sum(best_before.values())
    n = len(frame)
    rows = {name: {"ms_per_row": round(1000 * t / n, 3), "share": round(t / total, 3),
                   "ms_per_row_before": round(1000 * best_before[name] / n, 3)} for name, t in best_now.items()}
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": n, "valid": len(smiles), "run": args.run,
              "featurizer": featurizer.config.name, "descriptors": getattr(featurizer.config, "descriptors", None),
              "rounds": args.rounds, "loadavg_before": load, "stages": rows, "total_ms_per_row": round(1000 * total / n, 3),
              "total_ms_per_row_before": round(1000 * total_before / n, 3), "speedup": round(total_before / total, 3)}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
