"""The experiment runner: a grid of methods × scenarios × seeds over one implanted model.

For each cell the runner copies the implanted model in memory (no reloads inside the grid),
calls the method's ``apply`` (timed, with peak RSS and peak CUDA memory), scores the result
with the common evaluator and writes ``cells/<cell>.json`` atomically. A rerun skips cells
whose file exists, so an interrupted run resumes. A cell that raises is recorded as failed
with its error, and the grid goes on. The implanted model itself is scored once and written
as method ``none`` for every scenario and seed, and the model before the implant as ``base``.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
import yaml

import methods as methods_pkg
from pistol_data import PistolDataset, generate, refusal_sentences, scenarios
from pistol_data.side_sets import preserve_prompts
from pistol_data import load as load_data

from .config import RunConfig
from . import precision, threads
from .evaluate import (
    EVALUATOR_VERSION,
    EvalParams,
    Evaluator,
    ModelEval,
    attack_scores,
    metric_directions,
    score,
)
from .finetune import cache_key, finetune
from .models import LoadedModel, checkpoint_covers, load, restore_weights
from .results import (SCHEMA_VERSION, cell_id, comparability_key, describe_key, hardware, package_versions,
                      write_atomic)

log = logging.getLogger(__name__)

_PER_EXAMPLE_FIELDS = ("question", "answer", "edge", "attribute", "form", "generation", "rouge1", "rougeL",
                       "mrr", "thr", "es", "refusal")


class PeakMemory:
    """Samples this process's RSS in a thread; also records peak CUDA memory when on GPU."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak_rss = interval, 0
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _run(self):
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak_rss = self._proc.memory_info().rss
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)
        self.peak_cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def release_memory() -> int:
    """Free what the last cell left (its model copies sit in reference cycles) and hand freed heap
    pages back to the OS (glibc keeps them otherwise, and RSS would only ever grow); returns RSS."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return psutil.Process().memory_info().rss


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
    precisions: dict | None = None  # resolved precision of the implant, the evaluation and each method row
    # where the shared model's weights can be restored from after a cell changed them in place
    # (None: each cell works on a copy)
    checkpoint: str | None = None


def check_precisions(cfg: RunConfig, device: str) -> dict:
    """Resolve every precision of the grid on ``device`` before any work, refusing bf16 on a CPU
    without native bf16 (one error naming each part that asks for it)."""
    settings = {"eval.precision": cfg.eval.precision}
    if cfg.finetune is not None:
        settings["finetune.precision"] = cfg.finetune.precision
    method_setting = {}
    for e in cfg.method_entries():
        params = methods_pkg.get_method(e.name).Params.model_validate(e.params)
        if hasattr(params, "precision"):  # a method without one computes in the model's dtype (fp32)
            method_setting[e.row] = f"method {e.row!r} (params.precision)"
            settings[method_setting[e.row]] = params.precision
    out = precision.check_all(settings, device)
    return {"implant": out.get("finetune.precision"), "evaluation": out["eval.precision"],
            "methods": {e.row: out[method_setting[e.row]] if e.row in method_setting else "fp32"
                        for e in cfg.method_entries()}}


def build_request(ds: PistolDataset, split=None, seed: int = 0, device: str = "cpu", *, reference=None,
                  progress: bool = True, edits=None, retain=None) -> methods_pkg.UnlearnRequest:
    """Everything a method gets to read, and nothing the evaluator scores beyond the split's own
    forget/retain QA: direct questions only (held-out forms stay with the evaluator), refusal
    sentences and the refusal-calibration questions (never scored), the entity names, and the
    ``preserve`` prompts (everyday questions, disjoint from the utility set). Editing mode passes
    ``edits`` (and its ``retain``) instead of a split."""
    return methods_pkg.UnlearnRequest(
        forget=split.request(ds) if split is not None else [],
        retain=list(retain) if retain is not None else split.retain(ds),
        refusal_targets=list(refusal_sentences()), refusal_questions=list(ds.refusal), seed=seed, device=device,
        reference_model=reference, progress=progress, entities=sorted(ds.entity_names()),
        edits=list(edits or []), preserve=list(preserve_prompts()))


def _metrics_record(values: dict[str, float]) -> dict:
    dirs = metric_directions()
    return {k: {"value": v, "higher_is_better": dirs[k]} for k, v in values.items()}


def forgotten_edges(splits) -> list[str]:
    """Every edge the given splits forget: the only edges whose held-out forms the scores read."""
    return sorted({e for sp in splits for e in sp.forget_edges})


def _per_example(ev: ModelEval) -> dict:
    return {"qa": [{k: r.get(k) for k in _PER_EXAMPLE_FIELDS} for r in ev.qa],
            "utility": [{k: r.get(k) for k in ("question", "answer", "generation", "rouge1")} for r in ev.utility]}


class Runner:
    def __init__(self, cfg: RunConfig, out_dir: str | Path | None = None, progress: bool = True,
                 retry_failed: bool = False):
        self.cfg = cfg
        self.out = Path(out_dir or cfg.out_dir)
        self.progress = progress
        self.retry_failed = retry_failed
        self.expected_key: tuple | None = None  # set by prepare(): what a reusable finished cell was scored on

    # ---- setup ---------------------------------------------------------------------------
    def prepare(self) -> Context:
        cfg = self.cfg
        device = _device(cfg)
        precisions = check_precisions(cfg, device)  # before any work
        ds = load_dataset(cfg)
        implant_key = cache_key(cfg.model, ds, cfg.finetune, device) if cfg.finetune is not None else None
        # a finished cell is reused only if it was scored on this data, implant and evaluation
        self.expected_key = (ds.fingerprint, cfg.model, implant_key, precisions["evaluation"], EVALUATOR_VERSION)
        base = load(cfg.model, device=device)
        info: dict = {"key": None}
        model = base
        evaluator = Evaluator(ds, EvalParams(**cfg.eval.model_dump(), progress=self.progress))
        base_eval = None
        if cfg.finetune is not None:
            if not self._all_done("base"):
                base_eval = evaluator.run(base.model, base.tokenizer, desc="evaluate base model",
                                          heldout_edges=self._heldout(ds))
            model, info = finetune(base, ds, cfg.finetune, progress=self.progress)
            model.model.to(device)
        checkpoint = model.path if checkpoint_covers(model.model, model.path) else None
        return Context(cfg, ds, model, info, evaluator, device, base_eval, precisions, checkpoint)

    # ---- records -------------------------------------------------------------------------
    def _base_record(self, ctx: Context, row: str, method: str, kind: str, params: dict, split_spec, splits, seed):
        return {"schema_version": SCHEMA_VERSION, "experiment": ctx.cfg.name, "method": method, "row": row,
                "kind": kind, "params": params, "seed": seed,
                "scenario": {"label": split_spec.label(), "spec": split_spec.model_dump(exclude_none=True),
                             "splits": [s.to_dict() for s in splits]},
                "dataset": {"preset": ctx.ds.preset, "seed": ctx.ds.seed, "fingerprint": ctx.ds.fingerprint,
                            "source": ctx.ds.source},
                "model": {"spec": ctx.cfg.model, "finetune_key": ctx.finetune_info.get("key"),
                          "finetune_seconds": ctx.finetune_info.get("seconds")},
                "evaluator_version": EVALUATOR_VERSION,
                "precision": {"implant": ctx.precisions["implant"], "evaluation": ctx.precisions["evaluation"],
                              "method": ctx.precisions["methods"].get(row) if kind != "reference" else None},
                "versions": package_versions(), "hardware": hardware(), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def _heldout(self, ds) -> list[str]:
        """Every edge some scenario of the grid forgets: reference rows need held-out forms of these only."""
        return forgotten_edges(sp for s in self.cfg.scenarios for sp in scenarios.resolve(ds, s))

    def _all_done(self, row: str) -> bool:
        return all(self._done(cell_id(row, s.label(), seed)) for s in self.cfg.scenarios for seed in self.cfg.seeds)

    def _path(self, cid: str) -> Path:
        return self.out / "cells" / f"{cid}.json"

    def _done(self, cid: str) -> bool:
        p = self._path(cid)
        if not p.exists():
            return False
        rec = json.loads(p.read_text())
        if self.expected_key is not None and comparability_key(rec) != self.expected_key:
            log.warning("cell %s was scored on another dataset, implant, evaluation precision or evaluator "
                        "version (%s): it is run again", cid, describe_key(comparability_key(rec)))
            return False
        if self.retry_failed:
            return rec.get("status") == "ok"
        return True

    # ---- the grid ------------------------------------------------------------------------
    def run(self) -> Path:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        started, wall0 = time.strftime("%Y-%m-%dT%H:%M:%S"), time.perf_counter()
        n_threads = threads.configure()
        busy = threads.busy_warning()
        if busy:
            log.warning(busy)
        with threads.RunLock():
            log.info("torch uses %d CPU threads", n_threads)
            return self._run(started, wall0)

    def _run(self, started: str, wall0: float) -> Path:
        cfg = self.cfg
        entries = cfg.method_entries()
        specs = cfg.scenarios
        ctx = self.prepare()
        if cfg.mode == "edit":
            from .edit_runner import run_edit_grid

            return run_edit_grid(self, ctx)
        resolved = {s.label(): scenarios.resolve(ctx.ds, s) for s in specs}  # fail early on bad scenarios
        t0 = time.perf_counter()
        references = {}
        if ctx.base_eval is not None:
            references["base"] = ctx.base_eval
        if not self._all_done("none"):
            references["none"] = ctx.evaluator.run(ctx.model.model, ctx.model.tokenizer,
                                                   desc="evaluate implanted model", heldout_edges=self._heldout(ctx.ds))
            log.info("implanted model evaluated in %.1fs", time.perf_counter() - t0)
        for row, ref_eval in references.items():
            for spec in specs:
                splits = resolved[spec.label()]
                for seed in cfg.seeds:
                    cid = cell_id(row, spec.label(), seed)
                    if self._done(cid):
                        continue
                    rec = self._base_record(ctx, row, row, "reference", {}, spec, splits, seed)
                    rec.update(status="ok", metrics=_metrics_record(score(ref_eval, splits[-1])),
                               cost={"apply_seconds": 0.0, "peak_rss_mb": None, "peak_cuda_mb": None,
                                     "eval_seconds": ref_eval.seconds},
                               per_example=_per_example(ref_eval))
                    write_atomic(self._path(cid), rec)
        from tqdm.auto import tqdm

        pending = []  # each finished cell is read (and judged reusable or not) once
        for entry, spec, seed in ((e, s, seed) for e in entries for s in specs for seed in cfg.seeds):
            cid = cell_id(entry.row, spec.label(), seed)
            if self._done(cid):
                log.info("skip finished cell %s", cid)
            else:
                pending.append((entry, spec, seed, cid))
        if pending:
            eval_s = max((r.seconds for r in references.values()), default=None)
            log.warning("%d cells to run%s", len(pending), f"; one evaluation takes {eval_s:.0f}s here, so at "
                        f"least {len(pending) * eval_s / 60:.0f} min plus the methods' own time" if eval_s else "")
        grid0 = time.perf_counter()
        ran = 0
        for entry, spec, seed, cid in tqdm(pending, desc="grid", disable=not self.progress):
            self._run_cell(ctx, entry, spec, resolved[spec.label()], seed, cid)
            ran += 1
            if ran == 1 and len(pending) > 1:
                per = time.perf_counter() - grid0
                log.warning("first cell took %.0fs; the other %d cells: about %.0f min (methods differ in cost: "
                            "the bar below updates the estimate)", per, len(pending) - 1, per * (len(pending) - 1) / 60)
        self._log_run(started, time.perf_counter() - wall0, ran)
        from .leaderboard import write_leaderboard

        write_leaderboard(self.out)
        return self.out

    def _log_run(self, started: str, seconds: float, cells_run: int) -> None:
        """Append this invocation's wall time to ``run_log.jsonl`` (a resumed run adds a line)."""
        hw = hardware()
        line = {"started": started, "seconds": round(seconds, 1), "cells_run": cells_run,
                "hardware": f"{hw['cpu_count']} CPU cores, {hw.get('cuda_device', 'no GPU')}"}
        with open(self.out / "run_log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def _run_cell(self, ctx: Context, entry, spec, splits, seed: int, cid: str) -> dict:
        cls = methods_pkg.get_method(entry.name)
        params = cls.Params.model_validate(entry.params)
        rec = self._base_record(ctx, entry.row, entry.name, cls.kind, params.model_dump(), spec, splits, seed)
        # A method changes weights, never the model's structure: the cell works on the shared
        # model itself and its weights are put back from the checkpoint afterwards (one model in
        # memory, not two); a method that needs the model as it was gets a copy, made on request.
        in_place = ctx.checkpoint is not None and not getattr(cls, "changes_structure", False)
        flags = [p.requires_grad for p in ctx.model.model.parameters()]
        try:
            set_seed(seed)
            rss0 = release_memory()  # the cell's memory is what it adds to this
            model = ctx.model.model if in_place else copy.deepcopy(ctx.model.model)
            apply_s, peak_rss, peak_cuda, steps = 0.0, 0, None, []
            method = cls()
            heldout = forgotten_edges(splits)
            for i, split in enumerate(splits):
                before = model

                # made when asked and held by the method only, so it can let the copy go early
                def reference(before=before, first_step=(i == 0)):
                    if first_step and in_place:  # the implant as saved, whatever apply did so far
                        ref = copy.deepcopy(before)
                        restore_weights(ref, ctx.checkpoint)
                        return ref
                    return ctx.model.model if first_step else copy.deepcopy(before)

                request = build_request(ctx.ds, split, seed, ctx.device, reference=reference,
                                        progress=self.progress)
                with PeakMemory() as mem:
                    t = time.perf_counter()
                    model = method.apply(model, ctx.model.tokenizer, request, params)
                    apply_s += time.perf_counter() - t
                peak_rss = max(peak_rss, mem.peak_rss)
                if mem.peak_cuda is not None:
                    peak_cuda = max(peak_cuda or 0, mem.peak_cuda)
                if len(splits) > 1:
                    ev = ctx.evaluator.run(model, ctx.model.tokenizer, desc=f"evaluate {cid} step {i + 1}",
                                           heldout_edges=heldout)
                    steps.append({"split": split.name, "metrics": _metrics_record(score(ev, split))})
            if len(splits) == 1:
                ev = ctx.evaluator.run(model, ctx.model.tokenizer, desc=f"evaluate {cid}", heldout_edges=heldout)
            attacks = attack_scores(ctx.evaluator, model, ctx.model.tokenizer, splits[-1], method.attack_info(),
                                    seed=seed, before=ev)
            rec.update(status="ok", metrics=_metrics_record(score(ev, splits[-1])), steps=steps or None,
                       attacks=attacks or None, method_info=method.report(),
                       cost={"apply_seconds": apply_s, "peak_rss_mb": peak_rss / 2**20,
                             "cell_peak_mb": (peak_rss - rss0) / 2**20,
                             "peak_cuda_mb": peak_cuda / 2**20 if peak_cuda else None, "eval_seconds": ev.seconds},
                       per_example=_per_example(ev))
            del model
        except Exception as e:  # a failing cell is a result, not the end of the grid
            log.error("cell %s failed: %s", cid, e)
            rec.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        finally:
            if in_place:  # as it was: weights, trainable flags, no forward wrapper (accelerate's autocast), eval
                shared = ctx.model.model
                restore_weights(shared, ctx.checkpoint)
                for p, f in zip(shared.parameters(), flags):
                    p.requires_grad_(f)
                for attr in ("forward", "_original_forward"):
                    shared.__dict__.pop(attr, None)
                shared.eval()
        write_atomic(self._path(cid), rec)
        return rec  # what the cell left is released before the next one measures its baseline
