"""Experiment configs: YAML validated by pydantic before anything expensive runs.

Every error names the field and, where the choice is closed, the allowed values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pistol_data.presets import PRESETS
from pistol_data.scenarios import ScenarioSpec

from .evaluate import EvalParams
from .finetune import FinetuneParams


class ConfigError(ValueError):
    """A config that cannot run; the message names the file, the field and the allowed values."""


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    preset: str | None = Field("pistol-mini", description="generate this preset ...")
    seed: int = Field(0, ge=0, description="... with this seed")
    path: str | None = Field(None, description="or load a dataset directory / original PISTOL .json")
    names: str | None = Field(None, description="original PISTOL .json only: a JSON file mapping node ids to entity "
                              "names (default: recovered from the questions)")

    @field_validator("preset")
    @classmethod
    def _known(cls, v):
        if v is not None and v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; allowed: {sorted(PRESETS)}")
        return v


class MethodEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    label: str | None = Field(None, description="row name when one method appears with several params")
    params: dict = Field(default_factory=dict)

    @property
    def row(self) -> str:
        return self.label or self.name


class EditConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(10, ge=1, description="counterfactual edits (new attribute values) per seed, applied as one request")
    per_edge: int = Field(2, ge=1, description="at most this many edits on one contract (the rest measure specificity)")


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "experiment"
    out_dir: str | None = None
    model: str = "smollm2-135m-instruct"
    device: Literal["cpu", "cuda", "auto"] = "auto"
    weights: Literal["fp32", "bf16", "auto"] = Field(
        "auto", description="dtype of the shared model's weights in the grid: auto = bf16 on CUDA (half the memory; "
                            "trained tensors are held in fp32 while a method trains them), fp32 on CPU; bf16 on a CPU "
                            "only where bf16 is native. The implant itself trains in its own finetune.precision")
    data: DataConfig = Field(default_factory=DataConfig)
    finetune: FinetuneParams | None = Field(default_factory=FinetuneParams,
                                            description="knowledge implant; null = use the model as is")
    eval: EvalParams = Field(default_factory=EvalParams)
    mode: Literal["unlearn", "edit"] = Field("unlearn", description="unlearn: forget scenarios; edit: write new "
                                             "attribute values with the editing methods (see `edits`)")
    edits: EditConfig = Field(default_factory=EditConfig)
    reference: list[Literal["retrain"]] = Field(default_factory=list, description="extra reference rows: "
                                               "retrain = the implant run without each forget set (the oracle; "
                                               "forget quality and privleak compare with it)")
    methods: list[MethodEntry] | Literal["all"] = "all"
    scenarios: list[ScenarioSpec] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [0])

    @field_validator("methods", mode="before")
    @classmethod
    def _entries(cls, v):
        if isinstance(v, list):
            return [{"name": x} if isinstance(x, str) else x for x in v]
        return v

    @model_validator(mode="after")
    def _check_methods(self):
        from methods import get_method, validate_params

        if self.methods != "all":
            for m in self.methods:
                try:
                    get_method(m.name)
                except KeyError as e:  # pydantic reports ValueErrors with their field
                    raise ValueError(str(e)) from None
                validate_params(m.name, m.params)
                if self.mode == "edit" and get_method(m.name).kind != "edit":
                    raise ValueError(f"method {m.name!r} (kind {get_method(m.name).kind!r}) cannot run in "
                                     "mode 'edit'; only editing methods can (rome, memit, alphaedit, ...)")
            rows = [m.row for m in self.methods]
            if len(rows) != len(set(rows)):
                raise ValueError(f"duplicate method rows {rows}; give repeated methods a distinct 'label'")
        if self.mode == "unlearn" and not self.scenarios:
            raise ValueError("scenarios: at least one scenario is needed")
        if not self.seeds:
            raise ValueError("seeds: at least one seed is needed")
        if "retrain" in self.reference and (self.finetune is None or self.mode != "unlearn"):
            raise ValueError("reference: retrain needs an implant (finetune) and mode 'unlearn'")
        return self

    def method_entries(self) -> list[MethodEntry]:
        from methods import REGISTRY, get_method

        if self.methods == "all":
            get_method("ga")  # loads plugins
            return [MethodEntry(name=n) for n, cls in sorted(REGISTRY.items())
                    if self.mode == "unlearn" or cls.kind == "edit"]
        return list(self.methods)


def load_config(path: str | Path) -> RunConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: malformed YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a config is a YAML mapping, got {type(raw).__name__}")
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"{p}: invalid config:"]
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None
    except ValueError as e:
        raise ConfigError(f"{p}: invalid config: {e}") from None
    if cfg.out_dir is None:
        cfg.out_dir = str(Path("results") / cfg.name)
    return cfg


class Selection(BaseModel):
    """A part of a config's grid to run now (``unlearnbench run --methods/--scenarios/--seeds``):
    the results folder keeps the whole grid's config, a cell run in a part is the cell the whole
    run would write (same seed, same implant, same held-out forms), and the report lists the
    cells no part has run yet. ``None`` keeps every row, scenario or seed."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    methods: tuple[str, ...] | None = None    # method rows (a label where the config gives one)
    scenarios: tuple[str, ...] | None = None  # scenario labels
    seeds: tuple[int, ...] | None = None

    def check(self, cfg: RunConfig) -> Selection:
        """One clear error naming every unknown row, scenario or seed (with the config's)."""
        known = {"methods": [e.row for e in cfg.method_entries()],
                 "scenarios": [s.label() for s in cfg.scenarios] if cfg.mode == "unlearn" else [],
                 "seeds": list(cfg.seeds)}
        bad = []
        for part, allowed in known.items():
            chosen = getattr(self, part)
            if chosen is None:
                continue
            unknown = [x for x in chosen if x not in allowed]
            if unknown:
                bad.append(f"--{part}: {', '.join(map(str, unknown))} not in the config "
                           f"(it has {', '.join(map(str, allowed)) or 'none'})")
            elif not chosen:
                bad.append(f"--{part}: empty")
        if self.scenarios is not None and cfg.mode != "unlearn":
            bad.append("--scenarios: an editing grid (mode: edit) has no scenarios")
        if bad:
            raise ConfigError("this part of the grid cannot run: " + "; ".join(bad))
        return self

    def row(self, row: str) -> bool:
        return self.methods is None or row in self.methods

    def task(self, label: str, seed: int) -> bool:
        return (self.scenarios is None or label in self.scenarios) and (self.seeds is None or seed in self.seeds)

    @property
    def everything(self) -> bool:
        return self.methods is None and self.scenarios is None and self.seeds is None

    def describe(self) -> str:
        return "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in
                         (("methods", self.methods), ("scenarios", self.scenarios), ("seeds", self.seeds)) if v is not None)


def edits_label(n: int) -> str:
    """The column label of an editing grid's n counterfactual edits (its cells' file names)."""
    return f"edits-n{n}"


def column_labels(cfg: RunConfig) -> list[str]:
    """The grid's column labels: its scenarios', or an editing grid's one edit set."""
    return [edits_label(cfg.edits.n)] if cfg.mode == "edit" else [s.label() for s in cfg.scenarios]


def expected_cells(cfg: RunConfig) -> list[tuple[str, str, int]]:
    """Every method cell of the grid, (row, column label, seed), in the config's order; the
    reference rows come with their columns."""
    return [(e.row, label, seed) for e in cfg.method_entries() for label in column_labels(cfg) for seed in cfg.seeds]
