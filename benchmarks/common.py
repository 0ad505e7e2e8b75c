"""Shared helpers of the benchmark scripts: the machine, the implanted model, result files.

Each script measures its comparison side by side in one process and writes
``benchmarks/results/<name>.md`` (a section of RESULTS.md) and ``<name>.json``;
``python benchmarks/report.py`` assembles ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def machine() -> dict:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "bf16_native": _bf16(), "python": platform.python_version()}


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
