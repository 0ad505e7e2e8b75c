"""Where a grid's cells run: here, one after another (the runner's own loop), or as Ray tasks.

``unlearnbench run CONFIG --executor ray [--address ADDR]`` sends each pending method cell to Ray
(https://docs.ray.io) as one task: on a laptop a local Ray instance with one worker per core, on a
multi-GPU box or a cluster whatever ``ray start`` built (``--address auto`` or ``ray://host:10001``).
The driver (this process) does everything that is shared first — loads the data, runs the implant
and the retrained-oracle implants once (cached), scores the reference rows and the oracles — then
ships the oracles' evaluations through Ray's object store, and, on a cluster of several nodes, the
implant itself (a node whose cache lacks it writes it from the object store instead of training it
again). A worker prepares the same context as the serial runner (the implant from its cache) once per
grid and keeps it for the next cells it gets; it runs the cell with the very code the serial runner
uses and returns the record; the driver writes it with the same atomic writer. So:

* the metric values equal the serial run's cell for cell (tested on CPU, a local cluster of two
  workers; torch threads per worker = the CPUs the task asked for, as in a serial run on that many);
* a rerun resumes (finished cells are skipped before anything is sent);
* a worker that dies mid-cell (killed, out of memory) is retried by Ray (``max_retries``); a cell
  that still cannot finish is a failed cell, and the grid goes on;
* Ctrl-C cancels every task still queued or running, stops the workers, and leaves the finished
  cells on disk (the next run resumes from them).

Resources: a task asks for one GPU on CUDA, else ``cpus_per_cell`` CPUs (default 1); a memory
request per cell waits for ``unlearnbench plan`` (issue: paper scale). ``accelerate launch`` stays
the way one cell trains on several GPUs.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

MAX_RETRIES = 2  # Ray re-runs a task whose worker process died this many times before the cell is failed

# one prepared grid per worker process: (config JSON, implant key, out, save_models) -> (runner, context, tasks)
_WORKER: dict = {}


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("--executor ray needs Ray: pip install 'unlearnbench[ray]' (or pip install ray)") from None
    return ray


def _implant_files(path: str | None) -> dict[str, bytes] | None:
    if not path or not Path(path).is_dir():
        return None
    return {p.name: p.read_bytes() for p in Path(path).iterdir() if p.is_file()}


def _ensure_implant(key: str | None, files: dict[str, bytes] | None) -> None:
    """On a node whose cache lacks the driver's implant, write it there from the object store."""
    if key is None or files is None:
        return
    from .core.cache import cache_dir

    dest = cache_dir("finetuned") / key
    if dest.is_dir() and any(dest.iterdir()):
        return
    tmp = dest.with_name(f".{key}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    try:
        tmp.rename(dest)
    except OSError:  # another worker on this node wrote it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _worker_context(cfg_json: str, out: str, save_models: str | None, oracles: dict, implant_key: str | None,
                    implant_files) -> tuple:
    from . import threads
    from .config import RunConfig
    from .runner import Runner

    key = (cfg_json, implant_key, out, save_models)
    if key not in _WORKER:
        _WORKER.clear()  # a worker serves one grid at a time
        threads.configure()  # Ray sets OMP_NUM_THREADS to the task's CPUs
        _ensure_implant(implant_key, implant_files)
        runner = Runner(RunConfig.model_validate_json(cfg_json), out_dir=out, progress=False, save_models=save_models)
        ctx = runner.prepare(evaluate_base=False)
        tasks = {(t.label, t.seed): t for t in runner.tasks(ctx)}
        for k, (ev, info) in oracles.items():
            tasks[k].oracle, tasks[k].oracle_info = ev, info
        _WORKER[key] = (runner, ctx, tasks)
    return _WORKER[key]


def _run_cell_task(cfg_json: str, out: str, save_models: str | None, oracles: dict, implant_key: str | None,
                   implant_files, row: str, label: str, seed: int, cid: str) -> dict:
    """A Ray task: one cell, on this worker's prepared context; returns the cell's record."""
    runner, ctx, tasks = _worker_context(cfg_json, out, save_models, oracles, implant_key, implant_files)
    entry = next(e for e in runner.cfg.method_entries() if e.row == row)
    return runner.cell_record(ctx, entry, tasks[(label, seed)], cid)


def run_ray(runner, ctx, tasks: list, pending: list) -> int:
    """Run ``pending`` cells (``(entry, task, cid)``) as Ray tasks; write each record as it arrives.
    Returns the number of cells run."""
    ray = _import_ray()
    from tqdm.auto import tqdm

    from .results import write_atomic
    from .runner import release_memory

    started_here = not ray.is_initialized()
    if started_here:
        kwargs = {"address": runner.address} if runner.address else {}
        if not runner.address:  # a local instance sized to the cores this process may use
            from . import threads

            kwargs["num_cpus"] = threads.available_cores()
        ray.init(include_dashboard=False, logging_level=logging.WARNING, **kwargs)
    try:
        on_gpu = ctx.device == "cuda"
        cpus = runner.cpus_per_cell or 1
        remote = ray.remote(_run_cell_task).options(num_cpus=cpus, num_gpus=1 if on_gpu else 0,
                                                     max_retries=MAX_RETRIES, retry_exceptions=False)
        oracles = {(t.label, t.seed): (t.oracle, t.oracle_info) for t in tasks if getattr(t, "oracle", None) is not None}
        several_nodes = len([n for n in ray.nodes() if n.get("Alive")]) > 1
        implant_key = ctx.finetune_info.get("key")
        files = _implant_files(ctx.finetune_info.get("path")) if several_nodes else None
        shared = [ray.put(x) for x in (runner.cfg.model_dump_json(), str(runner.out),
                                       str(runner.save_models) if runner.save_models else None, oracles, implant_key,
                                       files)]
        # the driver's copy of the model is not needed while the workers run
        ctx.model = None
        release_memory()
        refs = {}
        for entry, task, cid in pending:
            ref = remote.remote(*shared, entry.row, task.label, task.seed, cid)
            refs[ref] = (entry, task, cid)
        log.warning("%d cells sent to Ray (%s; %d CPU%s%s per cell)", len(refs),
                    runner.address or "local instance", cpus, "s" if cpus > 1 else "", " + 1 GPU" if on_gpu else "")
        ran = 0
        t0 = time.perf_counter()
        with tqdm(total=len(refs), desc="grid (ray)", disable=not runner.progress) as bar:
            waiting = list(refs)
            try:
                while waiting:
                    done, waiting = ray.wait(waiting, num_returns=1)
                    entry, task, cid = refs[done[0]]
                    try:
                        rec = ray.get(done[0])
                    except Exception as e:  # the worker died MAX_RETRIES + 1 times, or Ray itself failed
                        log.error("cell %s failed in Ray: %s", cid, e)
                        rec = runner.failed_record(ctx, entry, task, f"{type(e).__name__}: {e}")
                    write_atomic(runner._path(cid), rec)
                    ran += 1
                    runner._ran = ran  # a stopped run logs the cells it finished
                    bar.update(1)
                    if ran == 1 and len(refs) > 1:
                        log.warning("first cell back after %.0fs", time.perf_counter() - t0)
            except KeyboardInterrupt:
                log.warning("interrupted: cancelling %d Ray tasks (finished cells are kept; rerun to resume)",
                            len(waiting))
                for ref in waiting:
                    ray.cancel(ref, force=True)
                raise
        return ran
    finally:
        if started_here:
            ray.shutdown()
