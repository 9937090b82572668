"""FastIF's prefilter, two ways of finding a held-out molecule's nearest pool molecules, raced.

    python benchmarks/prefilter_race.py --data-dir ../shared/data --run runs/stream_scale_lean/run \\
        --pool runs/stream_scale_lean/pool_100000.csv --rows 10000 --k 5 20 [--json OUT]

The first pass of ``--prefilter K`` decides which pool molecules are featurized and scored. Two
candidates: Tanimoto similarity of Morgan-2 bit fingerprints (what ``lipo_if.prefilter`` does: one
fingerprint per molecule, one sparse matrix product), and Euclidean distance in the model's own
input space (count fingerprint + standardized RDKit descriptors; scikit-learn's brute-force
``NearestNeighbors``, exact — FAISS is not installed here and would be an approximation of the same
search). Both start from the same standardized molecule table of the pool's first ``--rows`` rows
(its cost is common to both and reported apart). For each: the first pass's time a molecule (one
thread, interleaved rounds, best of ``--rounds``), and for each K the rows kept and how many of the
full ranking's 100 most helpful eligible molecules (``Influence.scores`` on every molecule, the
function-space solve) are among them. The prefilter pays only if its first pass is much cheaper than
featurizing every molecule — which the feature-space search must do.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.neighbors import NearestNeighbors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pool_sample import add_pool_sample_args, load_pool_sample  # noqa: E402  (sibling benchmark modules, not a package)
from _timing import timed  # noqa: E402

from lipo_if.data import molecule_table  # noqa: E402
from lipo_if.influence.api import Influence  # noqa: E402
from lipo_if.pool import Pool  # noqa: E402
from lipo_if.prefilter import NearestPool  # noqa: E402


def kept_rows(neighbours: np.ndarray, rows: np.ndarray) -> set[int]:
    """The union over held-out molecules of their nearest pool rows (``neighbours`` ``[H, K]`` positions)."""
    return set(rows[neighbours.ravel()].tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pool_sample_args(parser, rows=10_000)
    parser.add_argument("--k", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    run, frame = load_pool_sample(args)
    table, standardize_s = timed(lambda: molecule_table(frame, Path(args.pool), "smiles", "label"))
    valid = table[table["error"] == ""]
    smiles, rows = valid["smiles"].tolist(), valid["row"].to_numpy()
    heldout = run.smiles("val")
    featurizer = run.featurizer
    heldout_x = featurizer.transform(heldout)
    k_max = max(args.k)

    def tanimoto() -> np.ndarray:
        nearest = NearestPool(heldout, k_max)
        nearest.update(np.arange(len(smiles)), nearest.similarities(smiles))
        return nearest.rows  # [H, k_max] positions in `smiles`, best first

    def feature_space() -> np.ndarray:
        x = featurizer.model_input(featurizer.raw_uncached(smiles))  # (not the disk cache: a fresh pool's cost)
        search = NearestNeighbors(n_neighbors=k_max, algorithm="brute").fit(x)
        return search.kneighbors(heldout_x, return_distance=False)

    best = {"tanimoto": float("inf"), "feature_space": float("inf")}
    found = {}
    for _ in range(args.rounds):
        for name, fn in (("tanimoto", tanimoto), ("feature_space", feature_space)):
            found[name], seconds = timed(fn)
            best[name] = min(best[name], seconds)
    inf = Influence(run, solver="function-space", damping=0.001, progress=False).fit()
    scores = inf.scores(Pool(table, args.pool))
    eligible = scores[(scores["excluded"] == "") & scores["in_domain"]]
    top = set(eligible.nsmallest(100, "score")["row"].tolist())
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": len(frame), "valid": len(smiles),
              "heldout": len(heldout), "descriptors": featurizer.config.descriptors, "rounds": args.rounds,
              "standardize_ms_per_row": round(1000 * standardize_s / len(frame), 3),
              "first_pass_ms_per_row": {name: round(1000 * s / len(smiles), 3) for name, s in best.items()},
              "per_k": {}}
    for k in args.k:
        kept = {name: kept_rows(neighbours[:, :k], rows) for name, neighbours in found.items()}
        result["per_k"][k] = {name: {"kept": len(k_rows), "full_top100_kept": len(k_rows & top)} for name, k_rows in kept.items()}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
