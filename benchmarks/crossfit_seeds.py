"""benchmarks/crossfit_seeds.py SEED K — cross-fitted influence on the real data, one seed: K fold models → averaged z-scores → top-k
(residual-guarded) → the experiment's fine-tuning → val/test RMSE, next to the seed's own
results.json (same fine-tuning settings and seed: the baseline/influence rows are directly comparable).

Run from the repository root after the `lipo-if run` of benchmarks/RESULTS.md ("Selection and
retraining"), e.g. `OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/crossfit_seeds.py 0 5`;
writes runs/crossfit/seed_<SEED>/."""
import json, sys, time
from pathlib import Path
from lipo_if.data import load_dataset
from lipo_if.train import finetune_run, FinetuneConfig
from lipo_if.rundir import load_run
from lipo_if.crossfit import crossfit_scores
from lipo_if.influence import InfluenceConfig
from lipo_if.pool import Pool
from lipo_if.runcache import fitted_influence
from lipo_if.select import guarded_pool, top_k
seed, K = int(sys.argv[1]), int(sys.argv[2])
data = str(Path("../shared/data/lipophilicity.csv").resolve()); ext = str(Path("../shared/data/external.csv").resolve())
sd = Path(f"runs/real/seed_{seed}")
ds = load_dataset(data)
base = load_run(sd / "original", data_path=data); base._dataset = ds
t = time.perf_counter()
molecules = Pool.read(ext)
settings = InfluenceConfig(heldout="validation", solver="function-space", damping=1.0, progress=False)
base_table = fitted_influence(base, settings, sd / "influence_val").scores(molecules)
table, info = crossfit_scores(ds, data, base, base_table, molecules, Path(f"runs/crossfit/seed_{seed}"), K, settings)
info["seconds"] = time.perf_counter() - t
pool = guarded_pool(table, "residual", 3.5)
out = {"seed": seed, "folds": K, "info": info, "results": []}
for k in (25, 50, 100):
    rows = sorted(top_k(pool, k))
    new = finetune_run(base, molecules, FinetuneConfig(finetune_epochs=5, finetune_patience=5, seed=seed), progress=False, rows=rows)
    out["results"].append({"k": k, "rows": rows, "val_rmse": new.metrics["val_rmse"], "test_rmse": new.metrics["test_rmse"]})
    print(k, new.metrics["val_rmse"], new.metrics["test_rmse"], flush=True)
Path(f"runs/crossfit/seed_{seed}").mkdir(parents=True, exist_ok=True)
Path(f"runs/crossfit/seed_{seed}/crossfit_results.json").write_text(json.dumps(out, indent=1))
print(json.dumps(info))
