"""The experiment runner: one cell executor for a grid of method rows × tasks × seeds over one
implanted model.

A *task* is what every row of a column is asked and how it is scored: a forget scenario
(:class:`ScenarioTask`, one request per split, sequential scenarios evaluated after each step)
or a seed's counterfactual edits (:class:`EditTask`, editing mode). For each cell the runner
calls the method's ``apply`` on the shared implanted model (its weights are put back from the
checkpoint afterwards) or on a copy, timed, with peak RSS and peak CUDA memory; scores the
result with the task's evaluator; and writes ``cells/<cell>.json`` atomically, a
:class:`~unlearnbench.records.CellRecord`. A rerun skips cells whose file exists (and was scored
the same way), so an interrupted run resumes; ``retry_failed`` reruns failed cells only. A cell
that raises is recorded as failed with its error, and the grid goes on. Reference rows: the
implanted model (``none``) and, with an implant, the model before it (``base``; unlearning mode).
"""

from __future__ import annotations

import copy
import ctypes
import gc
import json
import logging
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
import yaml

import methods as methods_pkg
from methods import AsGiven, MethodResult
from pistol_data import PistolDataset, generate, scenarios
from pistol_data import load as load_data
from pistol_data.facts import pretrained_facts

from . import threads
from .config import RunConfig, Selection, edits_label
from .core import precision
from .core.cache import cache_dir, stable_hash
from .eta import recorded_seconds
from .evaluate import EVALUATOR_ARITHMETIC, EVALUATOR_VERSION, Evaluator, ModelEval
from .finetune import cache_key, finetune
from .models import LoadedModel, checkpoint_covers, load, restore_weights, save_checkpoint
from .records import REFERENCE_ROWS, SCHEMA_VERSION, CellRecord
from .results import (
    NUMERIC_PACKAGES,
    cell_id,
    comparability_key,
    describe_key,
    describe_version_mix,
    hardware,
    hardware_label,
    load_results,
    package_versions,
    version_counts,
    write_atomic,
)
from .tasks import EditTask, ScenarioTask, build_request, forgotten_edges  # noqa: F401  (build_request: re-exported)

log = logging.getLogger(__name__)

EXECUTORS = ("serial", "ray")  # where the cells run: here one after another, or as Ray tasks (executors.py)



class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]


def _canon(value) -> str:
    """A parameter's value as canonical JSON: how a kept cell's recorded params are compared."""
    return json.dumps(value, sort_keys=True)


def _glibc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


_LIBC = _glibc()  # malloc_trim (release_memory) and mallinfo2 (heap_in_use), loaded once
_MALLINFO2 = getattr(_LIBC, "mallinfo2", None)  # glibc >= 2.33
if _MALLINFO2 is not None:
    _MALLINFO2.restype = _MallInfo2


def heap_in_use() -> int | None:
    """Bytes the C allocator has handed out and not taken back (glibc ``mallinfo2``: in use in the
    heaps + mapped blocks): the live tensors and other allocations, without the free pages a
    fragmented heap keeps resident. None where the C library is not glibc."""
    if _MALLINFO2 is None:
        return None
    m = _MALLINFO2()
    return int(m.uordblks + m.hblkhd)


class PeakMemory:
    """Samples this process's RSS (and, on glibc, the C heap in use) in a thread; also records
    peak CUDA memory when on GPU."""

    def __init__(self, interval: float = 0.05, heap_every: int = 5):
        # mallinfo2 walks the heap's free lists under its lock (~5-20 ms with a training step's
        # heap): read every ``heap_every``-th sample only, so it costs the run ~2%, not ~12%
        self.interval, self.heap_every, self.peak_rss, self.peak_heap = interval, heap_every, 0, None
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _sample(self, heap: bool = True):
        self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)
        h = heap_in_use() if heap else None
        if h is not None:
            self.peak_heap = max(self.peak_heap or 0, h)

    def _run(self):
        i = 0
        while not self._stop.is_set():
            self._sample(heap=i % self.heap_every == 0)
            i += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak_rss, self.peak_heap = self._proc.memory_info().rss, heap_in_use()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self._sample()
        self.peak_cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def release_memory() -> int:
    """Free what the last cell left (its model copies sit in reference cycles) and hand freed heap
    pages back to the OS (glibc keeps them otherwise, and RSS would only ever grow); returns RSS."""
    gc.collect()
    if getattr(_LIBC, "malloc_trim", None) is not None:  # glibc
        _LIBC.malloc_trim(0)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return psutil.Process().memory_info().rss


@torch.no_grad()
def page_in(model: torch.nn.Module) -> None:
    """Read every weight once. A model loaded from safetensors maps the file and reads a page when it
    is first touched: without this, the first cell of a run whose reference rows were already scored
    (a resumed grid) counted the whole model's pages as its own memory (+1.9 GB at 0.5 B)."""
    for p in model.parameters():
        if p.device.type == "cpu":
            p.sum()


def set_seed(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_dataset(cfg: RunConfig) -> PistolDataset:
    if cfg.data.path:
        return load_data(cfg.data.path, names=cfg.data.names)
    return generate(cfg.data.preset, cfg.data.seed)


def _device(cfg: RunConfig) -> str:
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


@dataclass
class Context:
    cfg: RunConfig
    ds: PistolDataset
    model: LoadedModel
    finetune_info: dict
    evaluator: Evaluator
    device: str
    base_eval: ModelEval | None = None  # the model before the implant (reference row ``base``)
    # pretrained-facts scenarios: the facts dataset, its evaluator and the base model on it
    facts_ds: PistolDataset | None = None
    facts_evaluator: Evaluator | None = None
    facts_base_eval: ModelEval | None = None
    precisions: dict | None = None  # resolved precision of the implant, the evaluation and each method row
    # where the shared model's weights can be restored from after a cell changed them in place
    # (None: each cell works on a copy)
    checkpoint: str | None = None


def check_precisions(cfg: RunConfig, device: str) -> dict:
    """Resolve every precision of the grid on ``device`` before any work, refusing bf16 on a CPU
    without native bf16 (one error naming each part that asks for it)."""
    settings = {"weights": cfg.weights, "eval.precision": cfg.eval.precision}
    if cfg.finetune is not None:
        settings["finetune.precision"] = cfg.finetune.precision
    method_setting = {}
    for e in cfg.method_entries():
        params = methods_pkg.get_method(e.name).Params.model_validate(e.params)
        if hasattr(params, "precision"):  # a method without one computes in the model's dtype (fp32)
            method_setting[e.row] = f"method {e.row!r} (params.precision)"
            settings[method_setting[e.row]] = params.precision
    out = precision.check_all(settings, device)
    bf16_weights = out["weights"] == "bf16"  # a bf16 model computes in bf16 whatever the autocast setting
    return {"implant": out.get("finetune.precision"), "weights": out["weights"],
            "evaluation": "bf16" if bf16_weights else out["eval.precision"],
            "methods": {e.row: "bf16" if bf16_weights else out[method_setting[e.row]] if e.row in method_setting
                        else "fp32" for e in cfg.method_entries()}}


def _read_eval(path: Path) -> tuple[ModelEval, dict] | None:
    """A reference model's evaluation kept by an earlier part of a grid (see
    :meth:`Runner._reference_eval_path`), with the oracle's implant record; None when absent."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or unreadable: score the model again
        return None
    return ModelEval(qa=data["qa"], utility=data["utility"], seconds=data["seconds"], holdout=data["holdout"]), \
        ({**data["implant"], "cached": True} if data.get("implant") else {})


def _write_eval(path: Path, ev: ModelEval, info: dict | None = None) -> None:
    implant = {"key": info["key"], "seconds": info.get("seconds")} if info else None
    write_atomic(path, {"qa": ev.qa, "utility": ev.utility, "seconds": ev.seconds, "holdout": ev.holdout,
                        "implant": implant})


def _scored_as(ctx: Context) -> dict:
    """The device and evaluation precision a reference model is scored with (part of its kept
    evaluation's key)."""
    return {"device": ctx.device, "precision": ctx.precisions["evaluation"] if ctx.precisions else None}


class Runner:
    def __init__(self, cfg: RunConfig, out_dir: str | Path | None = None, progress: bool = True,
                 retry_failed: bool = False, executor: str = "serial", address: str | None = None,
                 cpus_per_cell: int | None = None, save_models: str | Path | None = None,
                 only: Selection | None = None):
        if executor not in EXECUTORS:
            raise ValueError(f"unknown executor {executor!r}: one of {', '.join(EXECUTORS)}")
        self.cfg = cfg
        # a part of the grid (--methods/--scenarios/--seeds): checked against the config before any work
        self.only = (only or Selection()).check(cfg)
        self.out = Path(out_dir or cfg.out_dir)
        self.progress = progress
        self.retry_failed = retry_failed
        self.executor, self.address, self.cpus_per_cell = executor, address, cpus_per_cell
        # every unlearned model written as a Hugging Face checkpoint, one folder per cell
        self.save_models = Path(save_models) if save_models else None
        self.expected_key: tuple | None = None  # set by prepare(): what a reusable finished cell was scored on
        self._kept_versions: dict[str, dict] = {}  # finished cell kept → the library versions it was written with
        self._kept_hardware: dict[str, str] = {}  # finished cell kept → what it was computed on (hardware_label)
        # per method row: its method and the parameters the config sets explicitly (canonical JSON), which a
        # kept cell must have run with; a stale cell is warned about once though consulted more than once
        self._asked = {e.row: (e.name, {k: _canon(v) for k, v in methods_pkg.get_method(e.name).Params
                                        .model_validate(e.params).model_dump(mode="json").items() if k in e.params})
                       for e in cfg.method_entries()}
        self._warned_params: set[str] = set()

    # ---- setup ---------------------------------------------------------------------------
    def prepare(self, evaluate_base: bool = True) -> Context:
        """Load the model and the data, implant (cached) and score the base model where a reference
        row still needs it (``evaluate_base``; a Ray worker never does: the driver wrote those rows)."""
        cfg = self.cfg
        device = _device(cfg)
        precisions = check_precisions(cfg, device)  # before any work
        ds = load_dataset(cfg)
        implant_key = cache_key(cfg.model, ds, cfg.finetune, device) if cfg.finetune is not None else None
        # a finished cell is reused only if it was scored on this data, implant and evaluation
        self.expected_key = (ds.fingerprint, cfg.model, implant_key, precisions["evaluation"], EVALUATOR_VERSION)
        base = load(cfg.model, device=device)
        wdtype = torch.bfloat16 if precisions["weights"] == "bf16" else torch.float32
        info: dict = {"key": None}
        model = base
        evaluator = Evaluator(ds, cfg.eval.model_copy(update={"progress": self.progress}))
        facts_specs = [s for s in self._specs() if s.on_facts()]
        facts_ds = pretrained_facts(ds.refusal) if facts_specs else None
        facts_evaluator = Evaluator(facts_ds, evaluator.params) if facts_specs else None
        base_eval = facts_base_eval = None
        if cfg.finetune is not None:
            # the implant leaves its input as it was: the base model can be scored before or after
            model, info = finetune(base, ds, cfg.finetune, progress=self.progress)
            model.model.to(device, wdtype)  # the implant trains and is cached in its own precision
            base.model.to(wdtype)  # the base row is scored as every cell is
            graph_labels = [s.label() for s in self._specs() if not s.on_facts()]
            scored = dict(device=device, precision=precisions["evaluation"])
            if evaluate_base and cfg.mode == "unlearn" and graph_labels and not self._all_done("base", graph_labels):
                heldout = self._heldout(ds)
                base_eval, _ = self._reference_eval(
                    self._reference_eval_path("base", f"base {cfg.model}", ds, heldout, **scored),
                    lambda: (evaluator.run(base.model, base.tokenizer, desc="evaluate base model",
                                           heldout_edges=heldout), None), "base model")
            if evaluate_base and facts_specs and not self._all_done("base", [s.label() for s in facts_specs]):
                heldout = self._heldout(facts_ds, facts=True)
                facts_base_eval, _ = self._reference_eval(
                    self._reference_eval_path("base", f"base {cfg.model}", facts_ds, heldout, **scored),
                    lambda: (facts_evaluator.run(base.model, base.tokenizer, desc="evaluate base model (facts)",
                                                 heldout_edges=heldout), None), "base model (facts)")
            del base
        else:
            model.model.to(wdtype)
        checkpoint = model.path if checkpoint_covers(model.model, model.path) else None
        page_in(model.model)
        return Context(cfg, ds, model, info, evaluator, device, base_eval, facts_ds, facts_evaluator,
                       facts_base_eval, precisions, checkpoint)

    # ---- records -------------------------------------------------------------------------
    def _record(self, ctx: Context, task, row: str, method: str, kind: str, params: dict, **fields) -> dict:
        rec = CellRecord(
            schema_version=SCHEMA_VERSION, experiment=ctx.cfg.name, mode=task.mode, method=method, row=row, kind=kind,
            params=params, seed=task.seed,
            scenario=task.scenario_record(),
            dataset={"preset": ctx.ds.preset, "seed": ctx.ds.seed, "fingerprint": ctx.ds.fingerprint,
                     "source": ctx.ds.source},
            model={"spec": ctx.cfg.model, "finetune_key": ctx.finetune_info.get("key"),
                   "finetune_seconds": ctx.finetune_info.get("seconds")},
            evaluator_version=EVALUATOR_VERSION,
            precision={"implant": ctx.precisions["implant"], "evaluation": ctx.precisions["evaluation"],
                       "method": ctx.precisions["methods"].get(row) if kind != "reference" else None,
                       "weights": ctx.precisions.get("weights")},
            versions=package_versions(), hardware=hardware(), created=time.strftime("%Y-%m-%dT%H:%M:%S"),
            **task.extra(), **fields)
        return rec.dump()

    def _specs(self) -> list:
        return list(self.cfg.scenarios) if self.cfg.mode == "unlearn" else []

    def _heldout(self, ds, facts: bool = False) -> list[str]:
        """Every edge (or pretrained fact, ``facts``) some scenario of the grid forgets: reference
        rows need held-out forms of these only."""
        return forgotten_edges(sp for s in self._specs() if s.on_facts() == facts for sp in scenarios.resolve(ds, s))

    def _all_done(self, row: str, labels: list[str]) -> bool:
        """Every cell of ``row`` in these columns that this run (its part of the grid) covers is done."""
        return all(self._done(cell_id(row, label, seed)) for label in labels for seed in self.cfg.seeds
                   if self.only.task(label, seed))

    def _path(self, cid: str) -> Path:
        return self.out / "cells" / f"{cid}.json"

    def _done(self, cid: str) -> bool:
        """A finished cell is kept: scored the same way, run with the method settings the config
        asks for, and ``ok`` when failed cells are retried."""
        p = self._path(cid)
        if not p.exists():
            return False
        rec = json.loads(p.read_text())
        if self.expected_key is not None and comparability_key(rec) != self.expected_key:
            log.warning("cell %s was scored on another dataset, implant, evaluation precision or evaluator "
                        "version (%s): it is run again", cid, describe_key(comparability_key(rec)))
            return False
        stale = self._other_params(rec)
        if stale:
            if cid not in self._warned_params:
                self._warned_params.add(cid)
                log.warning("cell %s ran with other method settings than the config asks for (%s): it is run again",
                            cid, "; ".join(stale))
            return False
        keep = rec.get("status") == "ok" if self.retry_failed else True
        if keep:
            self._kept_versions[cid] = rec.get("versions") or {}
            self._kept_hardware[cid] = hardware_label(rec.get("hardware") or {})
        return keep

    def _other_params(self, rec: dict) -> list[str]:
        """What a kept method cell ran with that the config now asks otherwise: its method, or a
        parameter the config sets explicitly (``kept → asked``). Parameters left to their defaults
        are not compared: a default changed by the library keeps the cell (its version is recorded)."""
        if rec.get("kind") == "reference" or rec.get("row") not in self._asked:
            return []
        name, asked = self._asked[rec["row"]]
        if rec.get("method") != name:
            return [f"method {rec.get('method')} → {name}"]
        kept = rec.get("params") or {}
        return [f"{k} {_canon(kept[k]) if k in kept else 'unset'} → {v}" for k, v in sorted(asked.items())
                if k not in kept or _canon(kept[k]) != v]

    # ---- the grid ------------------------------------------------------------------------
    def run(self) -> Path:
        cfg = self.cfg
        if self.executor == "ray":  # before any work or output
            from .executors import _import_ray

            _import_ray()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        started, wall0 = time.strftime("%Y-%m-%dT%H:%M:%S"), time.perf_counter()
        n_threads = threads.configure()
        busy = threads.busy_warning()
        if busy:
            log.warning(busy)
        with threads.RunLock():
            log.info("torch uses %d CPU threads", n_threads)
            self._ran, self._logged = 0, False
            try:
                return self._run(started, wall0)
            except Exception:
                raise
            except BaseException:  # stopped (Ctrl-C; SIGTERM, e.g. from `timeout`): its time still counts
                if not self._logged:
                    self._log_run(started, time.perf_counter() - wall0, self._ran, stopped=True)
                raise

    def tasks(self, ctx: Context) -> list:
        """Every column of the grid (scenario or edit set) at every seed, resolved before any work."""
        cfg = self.cfg
        if cfg.mode == "edit":
            return [EditTask(ctx, cfg.edits.n, cfg.edits.per_edge, seed, self.progress) for seed in cfg.seeds
                    if self.only.task(edits_label(cfg.edits.n), seed)]
        resolved = {s.label(): scenarios.resolve(ctx.ds, s) for s in cfg.scenarios}  # fail early on bad scenarios
        heldout = self._heldout(ctx.ds)
        facts_heldout = self._heldout(ctx.facts_ds, facts=True) if ctx.facts_ds is not None else []
        out = []
        for s in cfg.scenarios:
            for seed in cfg.seeds:
                if not self.only.task(s.label(), seed):  # another part of the grid
                    continue
                if s.on_facts():
                    out.append(ScenarioTask(s, resolved[s.label()], seed, facts_heldout, ds=ctx.facts_ds,
                                            evaluator=ctx.facts_evaluator, base_eval=ctx.facts_base_eval))
                else:
                    out.append(ScenarioTask(s, resolved[s.label()], seed, heldout, base_eval=ctx.base_eval))
        return out

    def _oracles(self, ctx: Context, tasks: list) -> None:
        """The retrained oracle (``reference: [retrain]``): per distinct forget set of the grid (a
        sequential scenario: the union of its requests), the implant run on the data without it —
        same hyper-parameters, seed, refusal and anchor rows; cached like every implant — scored by
        the same evaluator, and attached to each task with that forget set."""
        if "retrain" not in self.cfg.reference:
            return
        groups: dict[frozenset, list] = {}  # forget set -> the tasks that forget it
        for t in tasks:
            if t.ds is not None:  # pretrained facts: never implanted, so no implant to run without them
                log.info("%s: no retrained oracle (pretrained knowledge was not implanted)", t.label)
                continue
            groups.setdefault(frozenset(t.heldout), []).append(t)
        params = self.cfg.finetune
        if params.n_refusal is None:  # the full implant's refusal rows, not as many as the smaller set has
            params = params.model_copy(update={"n_refusal": len(ctx.ds.direct())})
        rows = ["retrain"] + [e.row for e in self.cfg.method_entries() if self.only.row(e.row)]
        base = None
        for edges, group in sorted(groups.items(), key=lambda kv: sorted(kv[0])):
            if all(self._done(cell_id(row, t.label, t.seed)) for row in rows for t in group):
                continue
            without = ctx.ds.without_edges(edges)
            oracle_key = cache_key(self.cfg.model, without, params, ctx.device)

            def retrain(edges=edges, without=without, task=group[0]):
                nonlocal base
                base = base or load(self.cfg.model, device=ctx.device)
                oracle, info = finetune(base, without, params, progress=self.progress)
                oracle.model.to(ctx.device, next(ctx.model.model.parameters()).dtype)  # scored as the cells are
                return task.evaluate(ctx, oracle.model, f"evaluate oracle without {sorted(edges)}",
                                     reference=True), info

            # a part run before scored this oracle on this evaluation: the same numbers, no implant run
            ev, info = self._reference_eval(self._reference_eval_path(oracle_key, oracle_key, ctx.ds,
                                                                      group[0].grid_heldout, **_scored_as(ctx)),
                                            retrain, f"oracle without {sorted(edges)}")
            log.info("oracle without %s: implant %s (%.0fs%s)", sorted(edges), info["key"], info.get("seconds") or 0,
                     ", cached" if info.get("cached") else "")
            for t in group:
                t.oracle, t.oracle_info = ev, {"implant_key": info["key"], "implant_seconds": info.get("seconds"),
                                               "cached": bool(info.get("cached")), "without": sorted(edges)}
        del base

    def _reference_eval_path(self, name: str, model_key: str, ds, heldout: list[str], device: str,
                             precision: str | None) -> Path:
        """Where a reference model's evaluation (the base model, the implanted model, a retrained
        oracle) is kept between the parts of a grid: keyed by the model (``model_key``: its implant's
        cache key, or the base model's spec) and everything that decides the evaluation's numbers
        (data, evaluator settings, version and arithmetic, the held-out forms scored, device, precision,
        torch),
        so a hit is what scoring again would give. Greedy decoding makes it deterministic."""
        what = {"implant": model_key, "dataset": ds.fingerprint, "eval": self.cfg.eval.model_dump(),
                "evaluator_version": EVALUATOR_VERSION, "arithmetic": EVALUATOR_ARITHMETIC,
                "heldout": sorted(heldout), "device": device,
                "precision": precision, "torch": torch.__version__}
        return cache_dir("reference_evals") / f"{name}-{stable_hash(what)}.json"

    @staticmethod
    def _reference_eval(path: Path, compute, what: str) -> tuple[ModelEval, dict]:
        """The evaluation kept at ``path`` if an earlier part wrote it, else ``compute()`` — the
        evaluation and the model's implant record (None: not implanted here) — kept; with the record
        (``{}`` when none)."""
        found = _read_eval(path)
        if found is not None:
            log.info("%s: evaluation loaded from %s", what, path)
            return found
        ev, info = compute()
        _write_eval(path, ev, info)
        return ev, info or {}

    def _reference_rows(self, ctx: Context, tasks: list) -> None:
        """Score the implanted model (``none``), the base model (``base``) and the retrained oracle
        (``retrain``, opt-in) once per evaluator and write their cells for every task."""
        evals: dict[tuple, object] = {}
        for task in tasks:
            for row in REFERENCE_ROWS:
                cid = cell_id(row, task.label, task.seed)
                if self._done(cid):
                    continue
                info = None
                if row == "retrain":
                    if getattr(task, "oracle", None) is None:
                        continue
                    ev, info = task.oracle, task.oracle_info
                elif row == "base":
                    if getattr(task, "base_eval", None) is None or task.mode != "unlearn":
                        continue
                    ev = task.base_eval
                else:
                    key = ("scenario", task.ds is not None) if task.mode == "unlearn" else ("edit", task.seed)
                    if key not in evals:
                        t0 = time.perf_counter()
                        run = lambda: task.evaluate(ctx, ctx.model.model, "evaluate implanted model",  # noqa: E731
                                                    reference=True)
                        if task.mode == "unlearn":  # kept between the parts of a grid, like the oracle's
                            model_key = ctx.finetune_info.get("key") or f"base {self.cfg.model}"
                            evals[key] = self._reference_eval(self._reference_eval_path(
                                "implanted", model_key, task.ds if task.ds is not None else ctx.ds, task.grid_heldout,
                                **_scored_as(ctx)), lambda: (run(), None), "implanted model")[0]
                        else:
                            evals[key] = run()
                        log.info("implanted model evaluated in %.1fs", time.perf_counter() - t0)
                    ev = evals[key]
                rec = self._record(ctx, task, row, row, "reference", {}, status="ok", metrics=task.score(ev),
                                   cost={"apply_seconds": 0.0, "peak_rss_mb": None, "peak_cuda_mb": None,
                                         "eval_seconds": ev.seconds},
                                   per_example=task.per_example(ev), **({"method_info": info} if info else {}))
                write_atomic(self._path(cid), rec)

    def _run(self, started: str, wall0: float) -> Path:
        cfg = self.cfg
        ctx = self.prepare()
        tasks = self.tasks(ctx)
        self._oracles(ctx, tasks)
        self._reference_rows(ctx, tasks)
        pending = []  # each finished cell is read (and judged reusable or not) once
        if not self.only.everything:
            log.warning("this run covers part of the grid (%s); the report lists the cells not run yet",
                        self.only.describe())
        for entry in cfg.method_entries():
            if not self.only.row(entry.row):
                continue
            for task in tasks:
                cid = cell_id(entry.row, task.label, task.seed)
                if self._done(cid):
                    log.info("skip finished cell %s", cid)
                else:
                    pending.append((entry, task, cid))
        now = package_versions()
        older = [v for v in self._kept_versions.values()
                 if any(v.get(p, "unrecorded") != now.get(p) for p in NUMERIC_PACKAGES)]
        if older:
            log.warning("%d finished cells kept in %s were written with other library versions (%s; this process: "
                        "%s): scores can differ at rounding level between versions; compare within one, or rerun "
                        "the older cells into a fresh folder", len(older), self.out,
                        describe_version_mix(version_counts(older, unlike=now)),
                        ", ".join(f"{p} {now.get(p)}" for p in NUMERIC_PACKAGES))
        here = hardware_label(hardware())
        elsewhere = Counter(h for h in self._kept_hardware.values() if h != here)
        if elsewhere:
            log.warning("%d finished cells kept in %s were computed on other hardware (%s; this process: %s): "
                        "kernels of another vector width can move a score at rounding level; compare within one "
                        "machine, or rerun those cells into a fresh folder", sum(elsewhere.values()), self.out,
                        describe_version_mix({"hardware": dict(sorted(elsewhere.items()))}), here)
        if self.executor == "ray" and pending:
            log.warning("%d cells to run", len(pending))
            from .executors import run_ray

            ran = run_ray(self, ctx, tasks, pending)
        else:
            ran = self._run_serial(ctx, pending)
        self._log_run(started, time.perf_counter() - wall0, ran)
        from .leaderboard import write_leaderboard

        write_leaderboard(self.out)
        return self.out

    def _run_serial(self, ctx: Context, pending: list) -> int:
        from tqdm.auto import tqdm

        from .eta import GridClock

        if not pending:
            return 0
        ids = [cid for _, _, cid in pending]
        clock = GridClock(self.cfg, ids, ctx.device, timed=self._timed_here())
        first = clock.remaining(ids)
        if first is not None:
            log.warning("%d cells to run: about %.0f min (%s)", len(ids), first / 60, clock.basis(ids))
        ran = 0
        bar = tqdm(pending, desc="grid", disable=not self.progress)
        for entry, task, cid in bar:
            t0 = time.perf_counter()
            self._run_cell(ctx, entry, task, cid)
            clock.finished(cid, time.perf_counter() - t0)
            ran += 1
            self._ran = ran
            left = clock.remaining(ids[ran:])
            if left is not None and ran < len(ids):
                bar.set_postfix_str(f"about {left / 60:.0f} min left", refresh=False)
                if ran == 1:
                    log.warning("first cell took %.0fs; the other %d cells: about %.0f min (%s)",
                                time.perf_counter() - t0, len(ids) - 1, left / 60, clock.basis(ids[ran:]))
        return ran

    def _timed_here(self) -> dict[str, float]:
        """Wall seconds of every finished cell in this folder computed on this kind of machine (hardware
        of this label), whichever part of the grid wrote it: a pending cell's other seeds predict it."""
        here, timed = hardware_label(hardware()), {}
        for rec in load_results(self.out, skip_malformed=True):
            if rec.get("status") == "ok" and hardware_label(rec.get("hardware") or {}) == here:
                seconds = recorded_seconds(rec)
                if seconds:
                    timed[Path(rec["_file"]).stem] = seconds
        return timed

    def _log_run(self, started: str, seconds: float, cells_run: int, stopped: bool = False) -> None:
        """Append this invocation's wall time to ``run_log.jsonl`` (a resumed run adds a line; one
        stopped before its end says so, with the cells it finished)."""
        hw = hardware()
        line = {"started": started, "seconds": round(seconds, 1), "cells_run": cells_run,
                "hardware": f"{hardware_label(hw)}, {hw['cpu_count']} CPU cores"
                            + ("" if hw.get("cuda_device") else ", no GPU")}
        if stopped:
            line["stopped"] = True
        with open(self.out / "run_log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        self._logged = True

    def _run_cell(self, ctx: Context, entry, task, cid: str) -> dict:
        rec = self.cell_record(ctx, entry, task, cid)
        write_atomic(self._path(cid), rec)
        return rec  # what the cell left is released before the next one measures its baseline

    def failed_record(self, ctx: Context, entry, task, error: str, tb: str | None = None) -> dict:
        cls = methods_pkg.get_method(entry.name)
        params = cls.Params.model_validate(entry.params)
        return self._record(ctx, task, entry.row, entry.name, cls.kind, params.model_dump(), status="failed",
                            error=error, traceback=tb)

    def cell_record(self, ctx: Context, entry, task, cid: str) -> dict:
        """Run one cell (apply, evaluate, attacks) and return its record; nothing is written here
        but the saved model (``save_models``)."""
        cls = methods_pkg.get_method(entry.name)
        params = cls.Params.model_validate(entry.params)
        # A method changes weights, never the model's structure: the cell works on the shared
        # model itself and its weights are put back from the checkpoint afterwards (one model in
        # memory, not two); a method that needs the model as it was gets a copy, made on request.
        in_place = ctx.checkpoint is not None and not getattr(cls, "changes_structure", False)
        flags = [p.requires_grad for p in ctx.model.model.parameters()]
        kept = []  # adapters a method kept on the model (LoRA, merge: false): unloaded after the cell
        t_cell = time.perf_counter()
        try:
            set_seed(task.seed)
            rss0 = release_memory()  # the cell's memory is what it adds to this
            heap0 = heap_in_use()
            cuda0 = torch.cuda.memory_allocated() if torch.cuda.is_available() else None
            model = ctx.model.model if in_place else copy.deepcopy(ctx.model.model)
            apply_s, peak_rss, peak_heap, peak_cuda, steps = 0.0, 0, None, None, []
            method = cls()
            state = {"before": model}

            def reference_for(i: int):
                # made when asked and held by the method only, so it can let the copy go early
                def reference(first_step=(i == 0)):
                    before = state["before"]
                    if first_step and in_place:  # the implant as saved, whatever apply did so far
                        ref = copy.deepcopy(before)
                        restore_weights(ref, ctx.checkpoint)
                        return ref
                    return ctx.model.model if first_step else copy.deepcopy(before)
                # the reference is the model apply receives: memo methods read it before their first
                # update and never call this (no copy, at any model size); RMU calls it
                return AsGiven(reference)

            n_steps = len(task.splits)
            for i, (name, request) in enumerate(task.requests(ctx, reference_for, self.progress)):
                state["before"] = model
                with PeakMemory() as mem:
                    t = time.perf_counter()
                    result = MethodResult.of(method.apply(model, ctx.model.tokenizer, request, params))
                    apply_s += time.perf_counter() - t
                model = result.model
                if result.adapter is not None:
                    kept.append(result.adapter)
                peak_rss = max(peak_rss, mem.peak_rss)
                if mem.peak_heap is not None:
                    peak_heap = max(peak_heap or 0, mem.peak_heap)
                if mem.peak_cuda is not None:
                    peak_cuda = max(peak_cuda or 0, mem.peak_cuda)
                if n_steps > 1:
                    ev = task.evaluate(ctx, model, f"evaluate {cid} step {i + 1}")
                    steps.append({"split": name, "metrics": task.score(ev, i)})
            if n_steps == 1:
                ev = task.evaluate(ctx, model, f"evaluate {cid}")
            cost = {"apply_seconds": apply_s, "peak_rss_mb": peak_rss / 2**20, "cell_peak_mb": (peak_rss - rss0) / 2**20,
                    "cell_heap_mb": (peak_heap - heap0) / 2**20 if peak_heap is not None and heap0 is not None else None,
                    "peak_cuda_mb": peak_cuda / 2**20 if peak_cuda else None, "eval_seconds": ev.seconds}
            if cuda0 is not None:  # allocated above the shared model, apply and evaluation (since apply began)
                cost["cell_cuda_mb"] = (max(peak_cuda or 0, torch.cuda.max_memory_allocated()) - cuda0) / 2**20
            if task.mode == "edit":
                cost["seconds_per_edit"] = apply_s / len(task.cases)
            info = result.info
            if self.save_models is not None:
                info = {**(info or {}), "saved_model": save_checkpoint(
                    model, ctx.model.tokenizer, self.save_models / cid, getattr(cls, "changes_structure", False),
                    adapter=kept[-1] if kept else None)}
            attacks = task.attacks(ctx, model, result, ev)
            cost["cell_seconds"] = time.perf_counter() - t_cell  # apply, every evaluation, the attacks
            rec = self._record(ctx, task, entry.row, entry.name, cls.kind, params.model_dump(), status="ok",
                               metrics=task.score(ev), steps=steps or None, attacks=attacks,
                               method_info=info, cost=cost, per_example=task.per_example(ev))
            del model, result
        except Exception as e:  # a failing cell is a result, not the end of the grid
            log.error("cell %s failed: %s", cid, e)
            rec = self.failed_record(ctx, entry, task, f"{type(e).__name__}: {e}", traceback.format_exc())
        finally:
            for adapter in kept:  # the adapter modules out again (the base weights were never changed)
                adapter.unload()
            if in_place:  # as it was: weights, trainable flags, no forward wrapper (accelerate's autocast), eval
                shared = ctx.model.model
                restore_weights(shared, ctx.checkpoint)
                for p, f in zip(shared.parameters(), flags):
                    p.requires_grad_(f)
                for attr in ("forward", "_original_forward"):
                    shared.__dict__.pop(attr, None)
                shared.eval()
        return rec
