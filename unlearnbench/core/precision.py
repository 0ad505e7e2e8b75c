"""Precision belongs to the experiment, never to the machine.

A ``precision`` setting is ``fp32``, ``bf16`` or ``auto``. ``auto`` resolves by *device type*
only: bf16 on CUDA (where the GPU supports it), fp32 on CPU — whatever the CPU's instruction
set, so a config gives the same arithmetic on every CPU. bf16 on a CPU runs only when the
config says so, and only where the CPU has native bf16 (AVX512-BF16 / AMX): elsewhere it is
emulated (a 2-core AVX2 EPYC: ~60x slower than fp32), so :func:`check` refuses it up front
with the measured slowdown, unless ``UNLEARNBENCH_ALLOW_SLOW_BF16=1``.

``UNLEARNBENCH_NO_NATIVE_BF16=1`` makes this module believe the CPU has no native bf16: CI
runs the fast tests a second time with it, the path most users' CPUs take.

Training loops build their ``Accelerator`` through :func:`fresh_accelerator`: accelerate keeps
its mixed-precision setting in a process-wide singleton, so without a reset the first cell's
precision would leak into (and break) every later cell of another precision.
"""

from __future__ import annotations

import contextlib
import os
import time
from functools import lru_cache

import torch

NO_NATIVE_BF16_ENV = "UNLEARNBENCH_NO_NATIVE_BF16"
ALLOW_SLOW_BF16_ENV = "UNLEARNBENCH_ALLOW_SLOW_BF16"
PRECISIONS = ("fp32", "bf16", "auto")


class PrecisionError(ValueError):
    """A precision this machine cannot run at a sane speed; the message says what to do."""


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def device_type(device) -> str:
    return torch.device(device).type if not isinstance(device, torch.device) else device.type


def native_bf16(device="cpu") -> bool:
    """Whether bf16 arithmetic is native here: CUDA with bf16 support, or a CPU with
    AVX512-BF16 / AMX (unless ``UNLEARNBENCH_NO_NATIVE_BF16`` is set)."""
    if device_type(device) == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if _flag(NO_NATIVE_BF16_ENV):
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve(precision: str, device="cpu") -> str:
    """``fp32`` | ``bf16`` from a setting: ``auto`` is bf16 on CUDA with bf16 support, else fp32."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; allowed: {list(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "bf16" if device_type(device) == "cuda" and native_bf16("cuda") else "fp32"


def use_bf16(precision: str, device="cpu") -> bool:
    return resolve(precision, device) == "bf16"


@lru_cache(maxsize=1)
def bf16_slowdown(n: int = 256, reps: int = 3) -> float:
    """Measured time of an n³ bf16 matmul over the fp32 one on this CPU (best of ``reps``)."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)

    def best(x, y):
        x @ y  # warm-up
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            x @ y
            ts.append(time.perf_counter() - t)
        return min(ts)

    return best(a.bfloat16(), b.bfloat16()) / max(best(a, b), 1e-9)


def check_all(settings: dict[str, str], device="cpu") -> dict[str, str]:
    """Resolve every named setting (``{"finetune.precision": "auto", ...}``) to ``fp32`` | ``bf16``
    and refuse bf16 on a CPU without native bf16 (emulated: tens of times slower than fp32) with
    one error naming every setting that asks for it."""
    out = {what: resolve(p, device) for what, p in settings.items()}
    slow = [what for what, p in out.items() if p == "bf16"]
    if slow and device_type(device) == "cpu" and not native_bf16("cpu") and not _flag(ALLOW_SLOW_BF16_ENV):
        raise PrecisionError(
            f"precision bf16 is asked for by {', '.join(slow)} on a CPU without native bf16 (no AVX512-BF16/AMX"
            f"{', or ' + NO_NATIVE_BF16_ENV + ' is set' if _flag(NO_NATIVE_BF16_ENV) else ''}): bf16 is emulated "
            f"here, a bf16 matmul measured {bf16_slowdown():.0f}x slower than fp32. Use precision fp32 (the CPU "
            f"default), run on a GPU, or set {ALLOW_SLOW_BF16_ENV}=1 to run it anyway")
    return out


def check(precision: str, device="cpu", what: str = "this run") -> str:
    """:func:`check_all` for one setting, named ``what`` in the error. Returns ``fp32`` | ``bf16``."""
    return check_all({what: precision}, device)[what]


def autocast(precision: str, device="cpu"):
    """bf16 autocast when ``precision`` resolves to bf16 on this device, else a no-op context."""
    dt = device_type(device)
    if use_bf16(precision, dt):
        return torch.autocast(device_type=dt, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fresh_accelerator(**kwargs):
    """An ``accelerate.Accelerator`` whose mixed precision is this call's, not whatever an earlier
    cell of the same process set: the process-wide ``AcceleratorState`` (mixed precision) and
    ``GradientState`` are reset first; the distributed ``PartialState`` is kept."""
    from accelerate import Accelerator

    reset_accelerate_state()
    return Accelerator(**kwargs)


def reset_accelerate_state() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
