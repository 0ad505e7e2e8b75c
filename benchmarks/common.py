"""Shared helpers of the benchmark scripts: the machine, the implanted model, result files.

Each script measures its comparison side by side in one process and writes
``benchmarks/results/<name>.md`` (a section of RESULTS.md) and ``<name>.json``;
``python benchmarks/report.py`` assembles ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def machine() -> dict:
    """:func:`unlearnbench.results.hardware` (what every cell records) in the benchmark JSONs' keys,
    with the memory, the torch version and whether bf16 is native."""
    import psutil

    from unlearnbench.results import hardware

    hw = hardware()
    return {"cpu": hw["cpu"], "cpu_isa": hw["cpu_isa"], "cores": hw["cpu_count"], "torch_threads": hw["torch_threads"],
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "torch": torch.__version__,
            "cuda": hw.get("cuda_device"), "bf16_native": _bf16(), "python": hw["python"]}


def _bf16() -> bool:
    from unlearnbench.core.precision import native_bf16

    return native_bf16("cpu")


def implanted(progress: bool = False):
    """The quickstart's implanted SmolLM2 (from the cache; trained on a miss) and its dataset."""
    from pistol_data import generate
    from unlearnbench.finetune import FinetuneParams, finetune
    from unlearnbench.models import load

    ds = generate("pistol-mini", 0)
    lm, _ = finetune(load("smollm2-135m-instruct"), ds, FinetuneParams(), progress=progress)
    lm.model.eval()
    return lm, ds


def matmul_peak(n: int = 2048, reps: int = 10) -> dict:
    """Best achieved GFLOP/s of an n×n @ n×n matmul, fp32 (and bf16 where native): the machine's practical limit."""
    from unlearnbench.eta import matmul_gflops

    # bf16 only where it is native: emulated, a 2048³ bf16 matmul takes ~30 s (AVX2 EPYC)
    return {str(dtype).replace("torch.", ""): matmul_gflops("cpu", n, reps, dtype, warmup=2)
            for dtype in ((torch.float32, torch.bfloat16) if _bf16() else (torch.float32,))}


def write(name: str, markdown: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine(), **data}, indent=1, default=str))
    p = RESULTS / f"{name}.md"
    p.write_text(markdown.rstrip() + "\n")
    print(markdown)
    return p


def edge_request(edge: str | list[str] | dict = "A_B"):
    """The quickstart's implanted model, its tokenizer and the unlearning request for one edge (a
    list: those edges at once; a dict: that scenario spec, e.g. ``{"type": "max_degree"}``; the
    reference is the model itself), with the weights' pages in, as in a grid."""
    from pistol_data import scenarios
    from pistol_data.scenarios import ScenarioSpec
    from unlearnbench.tasks import build_request

    torch.manual_seed(0)
    lm, ds = implanted()
    model = lm.model
    spec = (ScenarioSpec(**edge) if isinstance(edge, dict) else ScenarioSpec(type="edges", edges=edge)
            if isinstance(edge, list) else ScenarioSpec(type="edge", edge=edge))
    split = scenarios.resolve(ds, spec)[-1]
    request = build_request(ds, split, 0, "cpu", reference=lambda: model, progress=False)
    with torch.no_grad():
        for p in model.parameters():
            p.sum()
    return model, lm.tokenizer, request


def measured_apply(cls, model, tok, request, params) -> tuple[object, dict]:
    """One method's apply, timed, with its peak C heap in use and peak RSS above the levels before
    it (MiB; heap None where glibc's mallinfo2 is missing); returns (its result, the figures)."""
    from unlearnbench.runner import PeakMemory, heap_in_use, release_memory

    rss0 = release_memory()
    heap0 = heap_in_use()
    with PeakMemory(interval=0.01) as mem:
        t = time.perf_counter()
        res = cls().apply(model, tok, request, params)
        secs = time.perf_counter() - t
    return res, {"seconds": secs, "heap_mib": (mem.peak_heap - heap0) / 2**20 if heap0 is not None else None,
                 "rss_mib": (mem.peak_rss - rss0) / 2**20}
