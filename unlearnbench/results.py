"""Result records: one JSON file per grid cell, written atomically (temp file, then rename)."""

from __future__ import annotations

import json
import os
import platform
import re
import tempfile
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .records import SCHEMA_VERSION  # noqa: F401  (re-exported)

_PACKAGES = ("unlearnbench", "torch", "transformers", "peft", "accelerate", "datasets", "rouge-score", "networkx")


def package_versions() -> dict[str, str]:
    out = {}
    for p in _PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "not installed"
    return out


# CPU features that move a cell's time, and its fp32 scores at rounding level (the vector width decides how
# a kernel orders its sums: the quickstart's rome on the independent edge scores DS 5.6 on an AVX2 and
# 8.3 on an AVX-512 EPYC, same code and config): vector width, native bf16, AMX
_ISA = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, list[str]]:
    """The CPU's model name and which of ``_ISA`` it reports (Linux ``/proc/cpuinfo``; elsewhere
    ``platform.processor()`` and no flags)."""
    name, flags = None, None
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name is None:
                    name = value.strip()
                elif key.strip() == "flags" and flags is None:
                    flags = set(value.split())
    except OSError:
        pass
    return name or platform.processor() or platform.machine(), [x for x in _ISA if x in (flags or ())]


def hardware() -> dict:
    import torch

    cpu, isa = cpu_model()
    hw = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
          "torch_threads": torch.get_num_threads(), "cpu": cpu, "cpu_isa": isa}
    if torch.cuda.is_available():
        hw["cuda_device"] = torch.cuda.get_device_name(0)
    return hw


# What makes two cells comparable: the same data, the same implanted model, evaluated the same way.
COMPARABILITY = ("dataset fingerprint", "model", "implant key", "evaluation precision", "evaluator version")


# Libraries whose version can move a score at rounding level (the implant's training, generation).
# Every record keeps them, but they are not in the comparability key (a patch release would split
# every leaderboard): a table or report that mixes them says so instead.
NUMERIC_PACKAGES = ("torch", "transformers")


def version_counts(versions: list[dict], unlike: dict | None = None) -> dict[str, dict[str, int]]:
    """Package → {version: number of cells} for each of :data:`NUMERIC_PACKAGES`, over the cells'
    ``versions`` records; with ``unlike`` (e.g. this process's versions), only the versions that differ."""
    out = {}
    for p in NUMERIC_PACKAGES:
        counts = Counter(v.get(p, "unrecorded") for v in versions)
        if unlike is not None:
            counts.pop(unlike.get(p), None)
        if counts:
            out[p] = dict(sorted(counts.items()))
    return out


def hardware_label(hw: dict) -> str:
    """What a cell's arithmetic ran on, at the level that can move a score: the GPU's name, or the CPU's
    model name and its widest vector ISA (``AMD EPYC/AVX2``); ``unrecorded`` for cells written before
    records kept the CPU's ISA."""
    if hw.get("cuda_device"):
        return str(hw["cuda_device"])
    if "cpu_isa" not in hw:
        return "unrecorded"
    return f"{hw.get('cpu') or 'CPU'}/{widest_isa(hw['cpu_isa'])}"


def widest_isa(flags) -> str:
    """The widest vector ISA among :func:`cpu_model`'s flags: AMX, AVX-512, AVX2 or "no AVX2"."""
    isa = set(flags)
    return ("AMX" if isa & {"amx_tile", "amx_bf16"} else "AVX-512" if "avx512f" in isa
            else "AVX2" if "avx2" in isa else "no AVX2")


def hardware_mix(records: list[dict]) -> dict[str, int]:
    """Label → number of cells over the :func:`hardware_label` of ``records`` (empty when all agree)."""
    counts = Counter(hardware_label(r.get("hardware") or {}) for r in records)
    return dict(sorted(counts.items())) if len(counts) > 1 else {}


def version_mix(records: list[dict]) -> dict[str, dict[str, int]]:
    """:func:`version_counts` of the packages that ``records`` hold at more than one version (empty
    when all agree)."""
    counts = version_counts([r.get("versions") or {} for r in records])
    return {p: c for p, c in counts.items() if len(c) > 1}


def describe_version_mix(mix: dict[str, dict[str, int]]) -> str:
    """``torch 2.12.0 (3 cells), 2.13.0+cpu (39 cells)`` (empty for an empty mix)."""
    return "; ".join(f"{p} " + ", ".join(f"{v} ({n} cell{'s' * (n != 1)})" for v, n in counts.items())
                     for p, counts in mix.items())


def mixed_versions_text(records: list[dict]) -> str:
    """A sentence for a table or report whose cells come from several library versions, another for
    cells computed on different hardware (:func:`hardware_label`), else ''."""
    out = []
    mix = version_mix(records)
    if mix:
        out.append(f"**Library versions differ between these cells** ({describe_version_mix(mix)}): a score can "
                   "move at rounding level from one version to another, and more in a one-seed cell; compare "
                   "within one version, or rerun the older cells.")
    hw = hardware_mix(records)
    if hw:
        out.append(f"**The hardware differs between these cells** ({describe_version_mix({'hardware': hw})}): "
                   "kernels of another vector width order their sums differently, so a score can move at "
                   "rounding level (a greedy answer at a near-tie flips), and more in a one-seed cell; compare "
                   "within one machine, or rerun the cells of the other.")
    return " ".join(out)


def comparability_key(rec: dict) -> tuple:
    """(dataset fingerprint, model spec, implant key, evaluation precision, evaluator version) of a
    cell; cells written before these were recorded read as evaluator version 1, precision unknown."""
    return (rec.get("dataset", {}).get("fingerprint"), rec.get("model", {}).get("spec"),
            rec.get("model", {}).get("finetune_key"), (rec.get("precision") or {}).get("evaluation", "unknown"),
            rec.get("evaluator_version", 1))


def describe_key(key: tuple, differing: set[int] | None = None) -> str:
    """``dataset fingerprint 1a2b3c4d5e6f, evaluation precision bf16`` (only the ``differing`` fields)."""
    parts = []
    for i, (label, v) in enumerate(zip(COMPARABILITY, key)):
        if differing is None or i in differing:
            v = str(v)[:12] if i in (0, 2) and v else v
            parts.append(f"{label} {v}")
    return ", ".join(parts)


def comparability_groups(records: list[dict]) -> dict[tuple, str]:
    """Each comparability key of ``records`` → a short label naming what sets it apart (empty when
    every record has the same key)."""
    keys = list(dict.fromkeys(comparability_key(r) for r in records))
    if len(keys) == 1:
        return {keys[0]: ""}
    differing = {i for i in range(len(COMPARABILITY)) if len({k[i] for k in keys}) > 1}
    return {k: describe_key(k, differing) for k in keys}


def cell_id(method_row: str, scenario: str, seed: int) -> str:
    raw = f"{method_row}__{scenario}__seed{seed}"
    return re.sub(r"[^A-Za-z0-9_.+#=-]+", "-", raw)


def write_atomic(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, default=str)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_results(results_dir: str | Path, skip_malformed: bool = False) -> list[dict]:
    """Every cell record of a results folder, each with ``_file`` (its path). A malformed record is
    an error naming its file, or is passed over (``skip_malformed``: a reader that only estimates)."""
    d = Path(results_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"results folder {d} does not exist")
    out = []
    for f in sorted((d / "cells").glob("*.json")) if (d / "cells").is_dir() else []:
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if skip_malformed:
                continue
            if isinstance(e, OSError):
                raise
            raise ValueError(f"{f}: malformed JSON ({e})") from None
        if not isinstance(rec, dict):
            if skip_malformed:
                continue
            raise ValueError(f"{f}: a cell record is a JSON object, not {type(rec).__name__}")
        rec["_file"] = str(f)
        out.append(rec)
    return out
