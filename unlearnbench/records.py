"""The cell record: one pydantic model for every cell the runner writes (unlearning, sequential
and editing requests, reference rows), and the JSON Schema shipped with the package
(``schemas/result.schema.json``) is generated from it (``python -m unlearnbench.records`` rewrites
it; a test checks the shipped file is current).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 3
# the rows every grid scores besides its methods: the model before the implant, the implanted model
REFERENCE_ROWS = ("base", "none", "retrain")  # retrain: the implant without the forget set (opt-in)
Precision = Literal["fp32", "bf16"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Metric(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: float | None
    higher_is_better: bool


class SplitRecord(_Open):
    name: str
    forget_edges: list[str]
    neighbour_edges: list[str]
    far_edges: list[str]


class ScenarioRecord(_Open):
    label: str = Field(min_length=1)
    spec: dict[str, Any] = Field(description="the scenario spec (``type`` and its fields); editing mode: "
                                 "``counterfactual_edits`` with ``n`` and ``per_edge``")
    splits: list[SplitRecord] = Field(min_length=1)

    @model_validator(mode="after")
    def _typed(self):
        if "type" not in self.spec:
            raise ValueError("scenario.spec needs a 'type'")
        return self


class DatasetRecord(_Open):
    preset: str | None = None
    seed: int | None = None
    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    source: str | None = Field(None, description="'generated', or the file the dataset was read from")


class ModelRecord(_Open):
    spec: str = Field(min_length=1)
    finetune_key: str | None = Field(description="implant cache key (model x dataset fingerprint x hyper-parameters)")
    finetune_seconds: float | None = None


class PrecisionRecord(BaseModel):
    """Resolved arithmetic of the implant, the evaluated copy and the method (null: none ran)."""

    implant: Precision | None
    evaluation: Precision
    method: Precision | None
    weights: Precision | None = Field(None, description="dtype of the shared model's weights (absent: fp32)")


class CostRecord(_Open):
    apply_seconds: float = Field(ge=0)
    peak_rss_mb: float | None = None
    cell_peak_mb: float | None = Field(None, description="the method's peak resident memory above the process's "
                                       "before the cell (RSS; includes the free pages a fragmented C heap keeps)")
    cell_heap_mb: float | None = Field(None, description="the method's peak of the C heap in use above the level "
                                       "before the cell (glibc mallinfo2: live allocations, no fragmentation; "
                                       "null elsewhere)")
    peak_cuda_mb: float | None = None
    cell_cuda_mb: float | None = Field(None, description="CUDA memory the cell allocated above the shared model, "
                                       "apply and evaluation")
    eval_seconds: float | None = None
    seconds_per_edit: float | None = None
    cell_seconds: float | None = Field(None, description="the cell's wall time: apply, every evaluation (a "
                                       "sequence's steps too) and the attacks (absent in records before 2026-12-07)")


class AttackRecord(_Open):
    forget_rouge1: float


class VersionsRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    unlearnbench: str
    torch: str
    transformers: str


class HardwareRecord(_Open):
    platform: str
    python: str
    cpu_count: int | None
    torch_threads: int | None = None


class CellRecord(BaseModel):
    """One grid cell (method row x scenario x seed) written by ``unlearnbench run`` / ``edit``. A
    leaderboard submission is a results folder whose ``cells/*.json`` all validate."""

    model_config = ConfigDict(extra="allow", title="unlearnbench result cell")

    schema_version: Literal[1, 2, 3] = Field(SCHEMA_VERSION, description="2 adds evaluator_version and precision "
                                             "(required from 2 on); 3 adds mode (editing cells in cells/)")
    experiment: str = Field(min_length=1)
    mode: Literal["unlearn", "edit"] = Field("unlearn", description="unlearn: forget scenarios; edit: counterfactual "
                                             "edits")
    method: str = Field(min_length=1, description="registered method name, or `none`/`base` for reference rows")
    row: str = Field(min_length=1, description="leaderboard row label")
    kind: Literal["unlearn", "steer", "edit", "reference"]
    params: dict[str, Any] = Field(description="the method's validated parameters, defaults filled in")
    seed: int
    scenario: ScenarioRecord
    dataset: DatasetRecord
    model: ModelRecord
    evaluator_version: int | None = Field(None, ge=1, description="the evaluator's version: cells of different "
                                          "versions are never ranked together")
    precision: PrecisionRecord | None = None
    versions: VersionsRecord
    hardware: HardwareRecord
    created: str
    status: Literal["ok", "failed"]
    error: str | None = None
    traceback: str | None = None
    metrics: dict[str, Metric] | None = Field(None, description="metric name -> value and direction")
    steps: list[dict[str, Any]] | None = Field(None, description="sequential requests: the metrics after each step")
    attacks: dict[str, AttackRecord] | None = None
    method_info: dict[str, Any] | None = None
    edits: list[dict[str, Any]] | None = Field(None, description="editing mode: the edit cases of this seed")
    cost: CostRecord | None = None
    per_example: dict[str, list[dict[str, Any]]] | None = None

    @model_validator(mode="after")
    def _provenance(self):
        if self.schema_version >= 2 and (self.evaluator_version is None or self.precision is None):
            raise ValueError("schema_version >= 2 needs evaluator_version and precision")
        if self.status == "ok" and (self.metrics is None or self.cost is None):
            raise ValueError("a cell with status 'ok' needs metrics and cost")
        return self

    def dump(self) -> dict:
        """The JSON object written to ``cells/``: the fields given (a failed cell has no metrics),
        extra ones included."""
        return self.model_dump(mode="python", exclude_unset=True)


_SCHEMA_EXTRA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://unlearnbench.invalid/schemas/result.schema.json",
    # the model validators' rules, in JSON Schema words
    "allOf": [
        {"if": {"properties": {"schema_version": {"enum": [2, 3]}}, "required": ["schema_version"]},
         "then": {"required": ["evaluator_version", "precision"],
                  "properties": {"evaluator_version": {"type": "integer"}, "precision": {"type": "object"}}}},
        {"if": {"properties": {"status": {"const": "ok"}}, "required": ["status"]},
         "then": {"required": ["metrics", "cost"],
                  "properties": {"metrics": {"type": "object"}, "cost": {"type": "object"}}}},
    ],
}


def json_schema() -> dict:
    """The shipped JSON Schema, generated from :class:`CellRecord`."""
    schema = CellRecord.model_json_schema()
    return {**{k: _SCHEMA_EXTRA[k] for k in ("$schema", "$id")}, **schema, "allOf": _SCHEMA_EXTRA["allOf"]}


SCHEMA_FILE = Path(__file__).parent / "schemas" / "result.schema.json"


def write_schema(path: Path = SCHEMA_FILE) -> Path:
    path.write_text(json.dumps(json_schema(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":  # pragma: no cover
    print(write_schema())
