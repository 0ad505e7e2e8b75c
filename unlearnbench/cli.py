"""The ``unlearnbench`` command line. Every command fails with one clear message and exit 2 on bad input."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

log = logging.getLogger("unlearnbench")


class CLIError(Exception):
    pass


def _cmd_generate(a):
    from pistol_data import generate, save

    ds = generate(a.preset, a.seed)
    out = save(ds, a.out, overwrite=a.overwrite)
    m = ds.manifest()
    print(f"wrote {out}: {m['n_entities']} entities, {m['n_edges']} edges, {m['n_qa_direct']} direct QA "
          f"({m['n_qa']} in all), fingerprint {m['fingerprint'][:16]}")


def _cmd_inspect(a):
    from pistol_data import load
    from pistol_data.scenarios import hubs, independent_edges

    ds = load(a.path)
    info = {**ds.manifest(), "degree": ds.degree(), "edges": ds.edge_types, "hubs": hubs(ds),
            "independent_edges": independent_edges(ds)}
    if a.plot:
        from pistol_data.plot import draw_graph

        info["plot"] = str(draw_graph(ds, a.plot))
    if a.json:
        print(json.dumps(info, indent=1))
    else:
        for k in ("preset", "seed", "fingerprint", "n_entities", "n_edges", "n_qa_direct", "n_qa", "hubs",
                  "independent_edges", "plot"):
            if k in info:
                print(f"{k:>18}: {info[k]}")
        print(f"{'degree':>18}: " + ", ".join(f"{n}={d}" for n, d in sorted(info["degree"].items(), key=lambda x: -x[1])))


def _cmd_methods(a):
    from methods import list_methods

    ms = list_methods()
    if a.json:
        print(json.dumps(ms, indent=1, default=str))
    else:
        for m in ms:
            ps = ", ".join(f"{k}={v['default']}" for k, v in m["params"].items())
            print(f"{m['name']:<10} {m['kind']:<8} {m['doc']}\n{'':19}{ps}")


def _cmd_finetune(a):
    from pistol_data import load as load_data

    from .finetune import FinetuneParams, finetune
    from .models import load

    ds = load_data(a.data)
    params = FinetuneParams(mode=a.mode, **({"epochs": a.epochs} if a.epochs else {}), **({"lr": a.lr} if a.lr else {}))
    _, info = finetune(load(a.model), ds, params, out_dir=a.out)
    print(json.dumps({k: info[k] for k in ("key", "path", "seconds", "cached", "train_loss") if k in info}, indent=1))


def _cmd_evaluate(a):
    from pistol_data import load as load_data
    from pistol_data.scenarios import ScenarioSpec, resolve

    from .evaluate import EvalParams, Evaluator, metric_directions, score
    from .models import load

    ds = load_data(a.data)
    spec = ScenarioSpec(type="edges", edges=a.forget_edge) if a.forget_edge else ScenarioSpec(type="max_degree")
    split = resolve(ds, spec)[-1]
    lm = load(a.model)
    ev = Evaluator(ds, EvalParams(utility_limit=a.utility_limit)).run(lm.model, lm.tokenizer)
    vals = score(ev, split)
    dirs = metric_directions()
    if a.out:
        from .results import write_atomic

        write_atomic(Path(a.out), {"model": a.model, "scenario": split.to_dict(), "metrics": {
            k: {"value": v, "higher_is_better": dirs[k]} for k, v in vals.items()}, "per_example": ev.qa})
    print(f"forget edges: {split.forget_edges}")
    for k, v in vals.items():
        print(f"{k:<26} {v:8.4f}  {'↑' if dirs[k] else '↓'}")


def _selection(a):
    """``--methods/--scenarios/--seeds`` (comma-separated, repeatable) as a part of the grid."""
    from .config import ConfigError, Selection

    def items(values):
        return None if values is None else tuple(x.strip() for v in values for x in v.split(",") if x.strip())

    seeds = items(a.seeds)
    try:
        seeds = None if seeds is None else tuple(int(x) for x in seeds)
    except ValueError:
        raise ConfigError(f"--seeds: integers expected, got {', '.join(seeds)}") from None
    return Selection(methods=items(a.methods), scenarios=items(a.scenarios), seeds=seeds)


def _cmd_run(a):
    from .config import load_config
    from .runner import Runner

    cfg = load_config(a.config)
    out = Runner(cfg, out_dir=a.out, retry_failed=a.retry_failed, executor=a.executor, address=a.address,
                 cpus_per_cell=a.cpus_per_cell, save_models=a.save_models, only=_selection(a)).run()
    print(f"results in {out}; leaderboard: {out / 'leaderboard.md'}")
    print((out / "leaderboard.md").read_text())


def _cmd_plan(a):
    from .config import load_config
    from .plan import plan, render

    cfg = load_config(a.config)
    if cfg.mode != "unlearn":
        raise ValueError("plan covers unlearning grids (mode: unlearn)")
    p = plan(cfg, device=a.device, memory_gb=a.memory_gb)
    print(json.dumps(p, indent=1) if a.json else render(p))


def _cmd_edit(a):
    from .config import load_config
    from .runner import Runner

    cfg = load_config(a.config)
    cfg = cfg.model_validate({**cfg.model_dump(), "mode": "edit", **({"edits": {"n": a.n}} if a.n else {})})
    out = Runner(cfg, out_dir=a.out, retry_failed=a.retry_failed).run()
    print(f"results in {out}; leaderboard: {out / 'leaderboard.md'}")
    print((out / "leaderboard.md").read_text())


def _cmd_leaderboard(a):
    from .leaderboard import write_leaderboard

    paths = write_leaderboard(a.results_dir, out_dir=a.out, plots=not a.no_plots)
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def _cmd_report(a):
    from .report import write_report

    out = write_report(a.results_dir, plots=not a.no_plots)
    print(out.read_text())
    print(f"wrote {out}")


def _cmd_validate(a):
    from .schema import validate_dir

    bad = 0
    for d in a.results_dir:
        problems = validate_dir(d)
        for p in problems:
            print(p, file=sys.stderr)
        bad += len(problems)
        if not problems:
            print(f"{d}: valid")
    if bad:
        raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearnbench", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("generate", help="generate a PISTOL-style dataset")
    s.add_argument("--preset", default="pistol-1")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=_cmd_generate)

    s = sub.add_parser("inspect-data", help="summarise a dataset directory or an original PISTOL .json")
    s.add_argument("path")
    s.add_argument("--json", action="store_true")
    s.add_argument("--plot", metavar="PNG")
    s.set_defaults(fn=_cmd_inspect)

    s = sub.add_parser("methods", help="list registered methods and their parameters")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_cmd_methods)

    s = sub.add_parser("finetune", help="implant a dataset's knowledge into a model (cached)")
    s.add_argument("--model", default="smollm2-135m-instruct")
    s.add_argument("--data", required=True)
    s.add_argument("--out")
    s.add_argument("--mode", choices=["full", "lora"], default="full")
    s.add_argument("--epochs", type=int)
    s.add_argument("--lr", type=float)
    s.set_defaults(fn=_cmd_finetune)

    s = sub.add_parser("evaluate", help="score a model on a dataset")
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--forget-edge", action="append", help="edge to treat as forgotten (repeatable)")
    s.add_argument("--utility-limit", type=int)
    s.add_argument("--out", help="write metrics and per-example values as JSON")
    s.set_defaults(fn=_cmd_evaluate)

    s = sub.add_parser("run", help="run an experiment grid from a YAML config")
    s.add_argument("config")
    s.add_argument("--out")
    s.add_argument("--retry-failed", action="store_true", help="rerun cells recorded as failed")
    s.add_argument("--executor", choices=["serial", "ray"], default="serial",
                   help="where the cells run: one after another here (default), or as Ray tasks "
                        "(pip install 'unlearnbench[ray]')")
    s.add_argument("--address", help="with --executor ray: the Ray cluster to join ('auto', 'ray://host:10001'; "
                                     "default: start a local instance on this machine's cores)")
    s.add_argument("--cpus-per-cell", type=int, help="with --executor ray on CPU: CPUs (torch threads) per cell "
                                                     "(default 1)")
    s.add_argument("--save-models", metavar="DIR", help="write every unlearned model to DIR/<cell>/ as a Hugging Face "
                                                        "checkpoint (GRACE/WISE, which add modules: model.pt)")
    part = s.add_argument_group("a part of the grid", "run only these cells now (comma-separated or repeated); the "
                                "results folder keeps the whole grid, a later part resumes it, and `unlearnbench "
                                "report` lists the cells not run yet")
    part.add_argument("--methods", action="append", metavar="ROWS", help="method rows (a method's label where the "
                                                                        "config gives one), e.g. gd,rome")
    part.add_argument("--scenarios", action="append", metavar="LABELS", help="scenario labels, e.g. hub_edge")
    part.add_argument("--seeds", action="append", metavar="SEEDS", help="seeds, e.g. 0")
    s.set_defaults(fn=_cmd_run)

    s = sub.add_parser("plan", help="predict each cell's peak memory and FLOPs from the model's configuration "
                       "(no weights loaded), and which cells will not fit")
    s.add_argument("config")
    s.add_argument("--device", choices=["cpu", "cuda"], help="the device to plan for (default: the config's)")
    s.add_argument("--memory-gb", type=float, help="memory of that device (default: this machine's GPU, or its "
                                                   "available RAM)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_cmd_plan)

    s = sub.add_parser("edit", help="write counterfactual attribute values with the editing methods "
                       "(a config's model, data and implant; its methods must be editing methods or 'all')")
    s.add_argument("config")
    s.add_argument("--n", type=int, help="number of edits (default: the config's edits.n, 10)")
    s.add_argument("--out")
    s.add_argument("--retry-failed", action="store_true")
    s.set_defaults(fn=_cmd_edit)

    s = sub.add_parser("leaderboard", help="rank results folders: Markdown, CSV, HTML and plots")
    s.add_argument("results_dir", nargs="+", help="one or more results folders (merged)")
    s.add_argument("--out", help="where to write (default: the first results folder)")
    s.add_argument("--no-plots", action="store_true")
    s.set_defaults(fn=_cmd_leaderboard)

    s = sub.add_parser("report", help="the structural-study report of a results folder: report.md with tables, "
                       "findings and plots")
    s.add_argument("results_dir")
    s.add_argument("--no-plots", action="store_true")
    s.set_defaults(fn=_cmd_report)

    s = sub.add_parser("validate", help="check results folders against the results schema")
    s.add_argument("results_dir", nargs="+")
    s.set_defaults(fn=_cmd_validate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("transformers", "accelerate", "datasets"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    old = _stop_on_sigterm()
    try:
        args.fn(args)
    except KeyboardInterrupt as e:
        print(f"unlearnbench {args.cmd}: {'stopped by SIGTERM' if isinstance(e, Terminated) else 'interrupted'}; "
              "finished cells are kept, the same command resumes", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(e, Terminated) else 130
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, RuntimeError, OSError) as e:
        if args.verbose:
            raise
        msg = str(e) if not isinstance(e, KeyError) else e.args[0]
        print(f"unlearnbench {args.cmd}: error: {msg}", file=sys.stderr)
        return 2
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, a batch scheduler, ``kill``) taken as Ctrl-C: the run stops between
    Python steps, logs its wall time and the cells it finished, and leaves no half-written cell."""


def _terminate(signum, frame):
    raise Terminated(signum)


def _stop_on_sigterm():
    """Install the SIGTERM handler (main thread only); return the one it replaces."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _terminate)


if __name__ == "__main__":
    sys.exit(main())
