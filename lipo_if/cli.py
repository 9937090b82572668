"""The ``lipo-if`` command line.

Subcommands build their options from the config dataclasses (each field's ``metadata["help"]``
is its help text), so the CLI and the Python API cannot drift apart. Every user error
(:class:`~lipo_if.data.DataError`, bad option values) ends in one clear line on stderr and exit
status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __version__, backend
from .benchmark import BenchmarkConfig, run_benchmark
from .data import DataError, load_dataset, molecule_table, read_molecule_csv, resolve_lipophilicity_path
from .distributed import init_from_env, shutdown
from .ensemble import finetune, train_ensemble
from .demo import run_demo
from .experiment import ExperimentConfig, run_experiment
from .featurize import FeaturizerConfig
from .influence import InfluenceConfig, InfluenceSolverError
from .influence.outputs import output_paths
from .io import atomic_write_text
from .pool import Pool
from .rundir import load_run
from .runcache import fitted_influence
from .stream import StreamConfig, read_chunks, score_file
from .suspicion import CLEAN_WEIGHT_POWER, DEFAULT_DETECTOR, DETECTORS, INSPECT_COLUMNS, WEIGHT_COLUMNS, check_weight_power, inspect, weigh_pool
from .train import FinetuneConfig, TrainConfig, train_run
from .validate import ValidateConfig, run_validation

log = logging.getLogger("lipo_if")


# --------------------------------------------------------------------------- dataclass ⇄ argparse


def _option_name(name: str, prefix: str = "") -> str:
    return "--" + (prefix + name).replace("_", "-")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "", skip: Sequence[str] = (), group: str | None = None) -> None:
    """Add one ``--option`` per dataclass field (type, default and help taken from the field)."""
    target = parser.add_argument_group(group) if group else parser
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name.startswith("_"):
            continue
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        hint = hints[f.name]
        dest = prefix + f.name
        kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": f"{help_text} (default: {default})"}
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is tuple:
            kwargs.update(type=args[0] if args else str, nargs="*", metavar=f.name.upper())
        elif origin is typing.Union or (origin is not None and type(None) in args) or str(origin) == "<class 'types.UnionType'>":
            given = [a for a in args if a is not type(None)]
            if len(given) == 1 and given[0] in (int, float, str):  # X | None (unset = a default resolved later)
                kwargs["type"] = given[0]
            else:  # e.g. float | str (scale="auto"): parse as float when possible
                kwargs["type"] = _float_or_str if float in args else str
        elif hint in (int, float, str):
            kwargs["type"] = hint
        else:
            kwargs["type"] = str
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        target.add_argument(_option_name(f.name), **kwargs)


def _float_or_str(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def dataclass_from_args(cls: type, args: argparse.Namespace, prefix: str = "", **overrides: Any):
    """Build ``cls`` from the options the user gave (defaults stay the dataclass's own)."""
    values = {}
    for f in dataclasses.fields(cls):
        if hasattr(args, prefix + f.name):
            values[f.name] = getattr(args, prefix + f.name)
    values.update(overrides)
    return cls(**values)


# --------------------------------------------------------------------------- subcommands


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="directory holding lipophilicity.csv (default: $LIPO_IF_DATA, then the download cache)")
    parser.add_argument("--data", help="explicit path of the Lipophilicity CSV (overrides --data-dir)")
    _add_strict_argument(parser, "a rejected row (invalid SMILES, a structure rule of lipo_if.standardize, a label "
                         "outside the plausible logD range)")


def _add_strict_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--strict", action="store_true", help=f"fail on {what} instead of excluding it")


def _cmd_train(args: argparse.Namespace) -> int:
    config = dataclass_from_args(TrainConfig, args)
    featurizer_config = dataclass_from_args(FeaturizerConfig, args, prefix="fp_")
    path = resolve_lipophilicity_path(path=args.data, data_dir=args.data_dir)
    dataset = load_dataset(path, strict=args.strict)
    if args.ensemble > 1:
        ensemble = train_ensemble(dataset, str(Path(path).resolve()), config, args.ensemble, featurizer_config, progress=not args.quiet)
        out = ensemble.save(args.out)
        for member, name in zip(ensemble.members, range(len(ensemble.members))):
            _write_history(out / f"member_{name}", member)
        m = ensemble.metrics
        members = ", ".join(f"{x:.3f}" for x in m["member_test_rmse"])
        print(f"{m['split']} split, seed {config.seed}, ensemble of {m['members']}: test RMSE {m['test_rmse']:.3f}  MAE {m['test_mae']:.3f}  "
              f"R² {m['test_r2']:.3f}  (validation RMSE {m['val_rmse']:.3f}; members' test RMSE {members})")
        print(f"ensemble written to {out}")
        return 0
    run = train_run(dataset, str(Path(path).resolve()), config, featurizer_config, progress=not args.quiet)
    out = run.save(args.out)
    _write_history(out, run)
    m = run.metrics
    print(
        f"{m['split']} split, seed {m['seed']}: test RMSE {m['test_rmse']:.3f}  MAE {m['test_mae']:.3f}  "
        f"R² {m['test_r2']:.3f}  (validation RMSE {m['val_rmse']:.3f}; {m['n_train']}/{m['n_val']}/{m['n_test']} molecules; "
        f"best epoch {m['best_epoch']}; ‖∇R‖ {m['final_objective_grad_norm']:.3g})"
    )
    print(f"run written to {out}")
    return 0


def _write_history(out: Path, run) -> None:
    history = getattr(run, "_history", None)
    if history:
        atomic_write_text(out / "history.json", json.dumps(history))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    run = load_run(args.run, data_path=args.data)
    metrics = run.evaluate()
    print(json.dumps(metrics, indent=1))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    run = load_run(args.run)
    table = read_molecule_csv(args.input, smiles_col=args.smiles_col, require_label=False)
    valid = table["error"] == ""
    table["prediction"] = float("nan")
    if valid.any():
        table.loc[valid, "prediction"] = run.predict(table.loc[valid, "smiles"].tolist())
    out = table[["row", "smiles_input", "smiles", "prediction", "error"]]
    if args.out:
        atomic_write_text(args.out, out.to_csv(index=False))
        print(f"predictions for {int(valid.sum())} of {len(table)} rows written to {args.out}")
    else:
        print(out.to_csv(index=False), end="")
    return 0


def _cmd_influence(args: argparse.Namespace) -> int:
    world = init_from_env()  # under torchrun: join the ranks (one process otherwise)
    try:
        config = dataclass_from_args(InfluenceConfig, args, progress=not args.quiet and world.is_main)
        stream = dataclass_from_args(StreamConfig, args)
        first = next(read_chunks(args.external, 100))  # a bad file fails before the solve: columns, first rows
        molecule_table(first[1], Path(args.external), config.smiles_col, config.label_col, strict=args.strict)
        run = load_run(args.run, data_path=args.data)
        solved = output_paths(args.out)["csv"]
        inf = fitted_influence(run, config, solved.with_name(solved.stem + "_influence"))  # saved once, reused on resume
        summary = score_file(inf, args.external, args.out, stream, strict=args.strict, progress=not args.quiet, world=world)
    except BaseException:
        shutdown(graceful=False)
        raise
    shutdown()
    if not world.is_main:
        return 0
    counts = summary.get("counts", {})
    ranks = f" ({world.size} ranks)" if world.active else ""
    print(f"influence of {counts.get('scored', '?')} of {counts.get('rows', '?')} external rows on the {config.heldout} loss "
          f"written to {args.out}{ranks}")
    for key in ("histogram", "summary"):
        if key in summary.get("outputs", {}):
            print(f"  {key}: {summary['outputs'][key]}")
    if config.heldout == "test":
        print("  note: the held-out set is the TEST set, so test metrics of a selection made from these scores are optimistic")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    pool = Pool.read(args.external, strict=args.strict)
    run = load_run(args.run, data_path=args.data)
    table = inspect(run, pool, damping=args.damping, detector=args.detector, progress=not args.quiet)
    atomic_write_text(args.out, table[INSPECT_COLUMNS].to_csv(index=False, float_format="%.6g"))
    scored = table["suspicion"].notna()
    top = table[scored].nlargest(5, "suspicion")
    print(f"suspicion ({args.detector}) of {int(scored.sum())} of {len(table)} rows written to {args.out}; most suspicious rows: "
          + ", ".join(f"{int(r)} ({z:.1f})" for r, z in zip(top["row"], top["suspicion"])))
    if args.training_out:
        train_table = inspect(run, None, damping=args.damping, detector=args.detector, progress=not args.quiet)
        atomic_write_text(args.training_out, train_table[INSPECT_COLUMNS].to_csv(index=False, float_format="%.6g"))
        print(f"training molecules' suspicion written to {args.training_out}")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    path = resolve_lipophilicity_path(path=args.data, data_dir=args.data_dir)
    report = run_benchmark(str(Path(path).resolve()), args.out, dataclass_from_args(BenchmarkConfig, args),
                           dataclass_from_args(TrainConfig, args), dataclass_from_args(FinetuneConfig, args),
                           progress=not args.quiet)
    for name, summary in report["scenarios"].items():
        parts = [f"{method} Δ test RMSE {e['delta']:+.4f} [{e['delta_ci95'][0]:+.4f}, {e['delta_ci95'][1]:+.4f}], recovery {e['recovery']:.0%}"
                 for method in ("weighted", "filter") if (e := summary["strategies"].get(method))]
        print(f"{name}: {'; '.join(parts)}; all {summary['strategies']['all']['delta']:+.4f}")
    print(f"report written to {Path(args.out) / 'report.md'} (and benchmark.json)")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import torch


    print(f"lipo_if {__version__}; torch {torch.__version__}; kernels backend: {backend()}; CUDA available: {torch.cuda.is_available()}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job end to end on the real data (see README)."""
    return run_demo(args)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lipo-if",
        description="Pick the external molecules whose addition improves a lipophilicity (logD7.4) model, "
        "by influence functions with the LiSSA inverse-Hessian estimator.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train and evaluate the Task-1 baseline", description="Split, featurize, train the MLP baseline and write RUN_DIR/{model.pt,split.json,metrics.json}.")
    _add_data_arguments(p)
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--ensemble", type=int, default=1, metavar="M",
                   help="train an ensemble of M models on the same split (initialization seeds SEED + 1000·i); predicts their mean")
    add_dataclass_arguments(p, TrainConfig, group="training")
    g = p.add_argument_group("featurizer")
    for f in dataclasses.fields(FeaturizerConfig):
        option = "--featurizer" if f.name == "name" else _option_name(f.name)
        g.add_argument(option, dest="fp_" + f.name, type=type(f.default), default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {f.default})")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="recompute a run's validation and test metrics")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--data", help="Lipophilicity CSV if it moved since training")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="predict logD7.4 for the SMILES of a CSV")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--input", required=True, help="CSV with a SMILES column")
    p.add_argument("--smiles-col", help="name of the SMILES column (default: detected)")
    p.add_argument("--out", help="CSV to write (default: stdout)")
    p.set_defaults(func=_cmd_predict)


    p = sub.add_parser(
        "influence",
        help="score every external molecule by its influence on held-out loss (LiSSA)",
        description="score(z) = −(1/n)·s·∇ℓ(z), s = (H + damping·I)⁻¹ ∇L_heldout: the predicted change of the "
        "held-out MSE when z is added to the n training molecules (negative = helpful). Writes SCORES.csv, a "
        "histogram PNG and a JSON summary beside it.",
    )
    p.add_argument("--run", required=True, help="run directory from 'lipo-if train'")
    p.add_argument("--external", required=True, help="CSV of candidate molecules (SMILES and label columns)")
    p.add_argument("--out", required=True, help="scores CSV to write")
    p.add_argument("--data", help="Lipophilicity CSV if it moved since training")
    _add_strict_argument(p, "an external label outside the plausible logD range (lipo_if.standardize.LOGD_RANGE)")
    add_dataclass_arguments(p, InfluenceConfig, skip=("progress",), group="influence and LiSSA settings")
    add_dataclass_arguments(p, StreamConfig, group="pools of any size (lipo_if.stream)")
    p.set_defaults(func=_cmd_influence)

    p = sub.add_parser("inspect", help="which labels look wrong: suspicion of every external (and training) molecule",
                       description="Per input row: row, smiles, label, suspicion (higher = more likely a wrong label; empty where "
                       "excluded) and the evidence (residual, its z in validation spreads, leverage, self-influence).")
    p.add_argument("--run", required=True, help="run directory from 'lipo-if train'")
    p.add_argument("--external", required=True, help="CSV of molecules (SMILES and label columns)")
    p.add_argument("--out", required=True, help="CSV to write")
    p.add_argument("--training-out", help="also inspect the run's training molecules and write their table here")
    _add_strict_argument(p, "an external label outside the plausible logD range (lipo_if.standardize.LOGD_RANGE)")
    p.add_argument("--damping", type=_float_or_str, default="auto", help="damping μ of the curvature (default: auto = 0.02·λmax)")
    p.add_argument("--detector", default=DEFAULT_DETECTOR, choices=DETECTORS, help=f"detector behind suspicion (default: {DEFAULT_DETECTOR})")
    p.add_argument("--data", help="Lipophilicity CSV if it moved since training")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("benchmark", help="does selection pay on pools with value? scenarios built from Lipophilicity, over seeds",
                       description="Noisy and low-data pools built from Lipophilicity (known wrong labels): every strategy retrained "
                       "and compared with nothing added, all of the pool, random picks and the clean-pool oracle; OUT/report.md.")
    _add_data_arguments(p)
    p.add_argument("--out", required=True, help="output directory")
    add_dataclass_arguments(p, BenchmarkConfig, group="benchmark")
    add_dataclass_arguments(p, TrainConfig, skip=("seed",), group="base training")
    add_dataclass_arguments(p, FinetuneConfig, skip=("seed", "from_scratch"), group="retraining (--retrain finetune/scratch)")
    p.set_defaults(func=_cmd_benchmark)

    p = sub.add_parser("info", help="versions and which kernel backend is in use")
    p.set_defaults(func=_cmd_info)

    for register in _EXTRA_SUBCOMMANDS:
        register(sub)

    p = sub.add_parser("demo", help="the main job end to end on the real data (what `make demo` runs)")
    p.add_argument("--data-dir", help="directory with lipophilicity.csv and external.csv (default: $LIPO_IF_DATA)")
    p.add_argument("--out", default="runs/demo", help="output directory")
    p.add_argument("--seed", type=int, default=0, help="first seed (seeds are SEED, SEED+1, …)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the demo's 3)")
    p.add_argument("--ensemble", type=int, default=1, help="models per seed (> 1: an ensemble of initializations; ≈ M× the time)")
    p.set_defaults(func=_cmd_demo)
    return parser


#: Other modules add subcommands here (a function taking the subparsers object).
_EXTRA_SUBCOMMANDS: list[Callable[[Any], None]] = []


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "change the input or the settings" — shown as one line, exit 2."""
    return (DataError, ValueError, FileNotFoundError, FloatingPointError, InfluenceSolverError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except _user_errors() as exc:
        if args.verbose:
            raise
        print(f"lipo-if {args.command}: error: {exc}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------- retraining, the experiment, fidelity


def _add_featurizer_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("featurizer")
    for f in dataclasses.fields(FeaturizerConfig):
        option = "--featurizer" if f.name == "name" else _option_name(f.name)
        g.add_argument(option, dest="fp_" + f.name, type=type(f.default), default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {f.default})")


def _cmd_finetune(args: argparse.Namespace) -> int:
    config = dataclass_from_args(FinetuneConfig, args)
    check_weight_power(args.weight_power)  # before the run is loaded and the pool read
    run = load_run(args.run, data_path=args.data)
    pool = Pool.read(args.extra)
    table = None
    if args.weighted:  # every eligible molecule, weighted by its probability of a clean label
        table = weigh_pool(run, pool, config, folds=args.weight_folds, progress=not args.quiet, power=args.weight_power)
        chosen = table[table["weight"] > 0]
        new = finetune(run, pool, config, progress=not args.quiet, rows=chosen["row"].tolist(), weights=chosen["weight"].tolist())
    else:
        new = finetune(run, pool, config, progress=not args.quiet)
    out = new.save(args.out)
    _write_history(out, new)
    if table is not None:
        atomic_write_text(out / "weights.csv", table[WEIGHT_COLUMNS].to_csv(index=False, float_format="%.6g"))
        mixture = table.attrs.get("mixture") or {}
        print(f"weights written to {out / 'weights.csv'}: {int((table['weight'] > 0).sum())} molecules, total weight "
              f"{table['weight'].sum():.1f}; estimated fraction of wrong labels {mixture.get('wrong_fraction', float('nan')):.2f}")
    m = new.metrics
    print(f"{m['mode']} with {m['n_added']} of {m['n_extra_given']} extra molecules added "
          f"({len(m['extra_dropped'])} left out: invalid, repeated, or already in train/validation/test): "
          f"test RMSE {m['test_rmse']:.3f}  MAE {m['test_mae']:.3f}  R² {m['test_r2']:.3f}  (validation RMSE {m['val_rmse']:.3f})")
    print(f"run written to {out}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    config = dataclass_from_args(ExperimentConfig, args)
    path = resolve_lipophilicity_path(path=args.data, data_dir=args.data_dir)
    report = run_experiment(
        path, args.external, args.out, config, dataclass_from_args(TrainConfig, args),
        dataclass_from_args(FinetuneConfig, args), dataclass_from_args(FeaturizerConfig, args, prefix="fp_"),
        progress=not args.quiet, strict=args.strict,
    )
    print(report["conclusion"])
    print(f"report written to {Path(args.out) / 'report.md'} (and report.json, plots)")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    run = load_run(args.run, data_path=args.data)
    result = run_validation(run, args.external, args.out, dataclass_from_args(ValidateConfig, args),
                            dataclass_from_args(FinetuneConfig, args), scores_csv=args.scores, progress=not args.quiet)
    s, g = result["singles"], result["group"]
    print(f"{result['config']['retrain']} retraining, {s['n']} single molecules: Pearson {s['pearson']:.3f}, Spearman {s['spearman']:.3f} "
          f"(predicted vs actual Δ validation MSE); top-{g['k']} group: predicted {g['predicted']:+.3g}, actual {g['actual']:+.3g}")
    print(f"written to {Path(args.out) / 'validate.json'} and validate.png")
    return 0


def _register_retraining_commands(sub: Any) -> None:
    p = sub.add_parser("finetune", help="retrain a run with extra molecules added (fine-tune or from scratch)",
                       description="Retrain RUN_DIR's model on its training split plus the molecules of CSV (validation/test "
                       "molecules and repeats are never added) and write NEW_RUN_DIR with the same metrics.json as train.")
    p.add_argument("--run", required=True, help="run directory from 'lipo-if train'")
    p.add_argument("--extra", required=True, help="CSV of molecules to add (SMILES and label columns, like the external file)")
    p.add_argument("--out", required=True, help="new run directory to write")
    p.add_argument("--data", help="Lipophilicity CSV if it moved since training")
    p.add_argument("--weighted", action="store_true",
                   help="add every eligible molecule weighted by its probability of a clean label (the selection that won "
                        "'lipo-if benchmark'; lipo_if.suspicion.weigh_pool); writes NEW_RUN_DIR/weights.csv")
    p.add_argument("--weight-folds", type=int, default=2,
                   help="with --weighted: folds of the cross-fitted second look (0 = the base model's residuals alone)")
    p.add_argument("--weight-power", type=float, default=CLEAN_WEIGHT_POWER,
                   help=f"with --weighted: each molecule's weight is P(clean) to this power (0 < τ ≤ 1; default {CLEAN_WEIGHT_POWER})")
    add_dataclass_arguments(p, FinetuneConfig, group="retraining")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("run", help="the whole experiment: baseline → influence → selection → retraining → report, over seeds",
                       description="For each seed: train, score the external molecules by validation influence, select "
                       "(influence, random, all external, test-influence oracle as a diagnostic), retrain each selection and the "
                       "nothing-added baseline the same way, evaluate; write OUT/report.json, OUT/report.md and plots.")
    _add_data_arguments(p)
    p.add_argument("--external", required=True, help="CSV of candidate molecules (SMILES and label columns)")
    p.add_argument("--out", required=True, help="output directory")
    add_dataclass_arguments(p, ExperimentConfig, group="experiment")
    add_dataclass_arguments(p, TrainConfig, skip=("seed",), group="baseline training")
    add_dataclass_arguments(p, FinetuneConfig, skip=("seed",), group="retraining")
    _add_featurizer_arguments(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("validate", help="fidelity check: actual vs predicted change of validation loss when molecules are added",
                       description="Add single external molecules (spread across the score range) and the top-k group, retrain, "
                       "and compare the actual change of validation MSE with the influence prediction (Pearson, Spearman).")
    p.add_argument("--run", required=True, help="run directory from 'lipo-if train'")
    p.add_argument("--external", required=True, help="CSV of candidate molecules (SMILES and label columns)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--scores", help="scores CSV from 'lipo-if influence' on this run (default: computed with default settings)")
    p.add_argument("--data", help="Lipophilicity CSV if it moved since training")
    add_dataclass_arguments(p, ValidateConfig, group="validation")
    add_dataclass_arguments(p, FinetuneConfig, skip=("from_scratch",), group="retraining (retrain=finetune/scratch)")
    p.set_defaults(func=_cmd_validate)


_EXTRA_SUBCOMMANDS.append(_register_retraining_commands)


if __name__ == "__main__":
    sys.exit(main())
