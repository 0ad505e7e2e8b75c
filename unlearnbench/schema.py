"""The results schema (``schemas/result.schema.json``, shipped in the package) and ``validate``.

A leaderboard submission is a results folder whose ``cells/*.json`` all validate: the schema
asks for provenance (package versions, dataset fingerprint, model spec and implant key, seed,
hardware) and for a direction (``higher_is_better``) on every metric.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files
from pathlib import Path


@lru_cache(maxsize=1)
def result_schema() -> dict:
    return json.loads(files("unlearnbench").joinpath("schemas/result.schema.json").read_text(encoding="utf-8"))


def _where(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def validate_record(rec: dict) -> list[str]:
    """Problems with one result record, each naming the field: ``metrics.ds.higher_is_better: ...``."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    v = Draft202012Validator(result_schema())
    out = []
    for e in sorted(v.iter_errors(rec), key=lambda e: list(map(str, e.absolute_path))):
        while e.context:  # "not valid under any of the given schemas" (an optional field): say what is wrong
            e = best_match([c for c in e.context if c.validator_value != "null"] or e.context)
        out.append(f"{_where(e.absolute_path)}: {e.message}")
    return out


def validate_dir(results_dir: str | Path) -> list[str]:
    """Every problem in a results folder, as ``FILE: FIELD: message`` lines (empty = valid)."""
    d = Path(results_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"results folder {d} does not exist")
    files_ = sorted((d / "cells").glob("*.json")) if (d / "cells").is_dir() else []
    if not files_:
        return [f"{d}: no result cells (expected {d}/cells/*.json)"]
    problems = []
    for f in files_:
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            problems.append(f"{f}: malformed JSON ({e})")
            continue
        if not isinstance(rec, dict):
            problems.append(f"{f}: (top level): expected an object")
            continue
        problems += [f"{f}: {p}" for p in validate_record(rec)]
    return problems
