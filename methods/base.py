"""The method interface, the request a method receives, and the registry.

A method is a small class: ``kind`` ("unlearn" | "edit" | "steer"), a pydantic ``Params``
with documented defaults, and ``apply(model, tokenizer, request, params) -> model``. The
runner knows nothing else about it. Third-party methods register through the entry-point
group ``unlearnbench.methods`` (``name = "package.module:Class"``). Nothing in ``methods``
imports the evaluator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Callable, ClassVar

from pydantic import BaseModel, ConfigDict

from pistol_data import QARecord

log = logging.getLogger(__name__)


class MethodParams(BaseModel):
    """Base of every method's ``Params``: unknown fields are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class UnlearnRequest:
    """What a method gets to work with.

    ``forget``/``retain``: the scenario's direct QA. ``preserve``: everyday prompts (no
    answers) for what a method must leave unchanged — LUNAR's general retain rows, the editing
    family's key statistics; the runner builds it from a set disjoint from everything the
    evaluator scores (the utility set included). ``refusal_targets``: refusal sentences
    (DPO's preferred answer, editing's target). ``refusal_questions``: questions the model
    refuses (LUNAR's reference set). ``reference_model``: a lazy handle to a frozen copy of the
    model before this request (for KL, NPO, DPO); each call may make a new copy, so call it once
    and drop the model when done. ``entities``: the
    dataset's entity names (editing methods find a question's subject among them). ``edits``:
    editing mode — rewrite each record's question to its answer (a new attribute value)
    instead of forgetting; only methods of kind ``edit`` support it.
    """

    forget: list[QARecord]
    retain: list[QARecord]
    refusal_targets: list[str] = field(default_factory=list)
    refusal_questions: list[QARecord] = field(default_factory=list)
    seed: int = 0
    device: str = "cpu"
    reference_model: Callable[[], object] | None = None
    progress: bool = True
    entities: list[str] = field(default_factory=list)
    edits: list[QARecord] = field(default_factory=list)
    preserve: list[str] = field(default_factory=list)


class Method:
    name: ClassVar[str] = ""
    kind: ClassVar[str] = "unlearn"
    Params: ClassVar[type[MethodParams]] = MethodParams
    # ``apply`` may change the given model's weights in place (the runner puts them back from the
    # checkpoint afterwards); a method that adds or replaces modules must say so, and gets a copy
    changes_structure: ClassVar[bool] = False

    def apply(self, model, tokenizer, request: UnlearnRequest, params: MethodParams):  # pragma: no cover
        raise NotImplementedError

    def report(self) -> dict | None:
        """JSON-able facts about the last ``apply`` worth keeping with the result (chosen layer,
        final loss, ...). The runner stores it as ``method_info``."""
        return None

    def attack_info(self) -> dict | None:
        """What inference-time attacks may use after ``apply``: ``layers`` modified and, for
        steering methods, ``directions`` (layer → vector added). ``None``: nothing to expose."""
        return None


REGISTRY: dict[str, type[Method]] = {}


class UnknownMethodError(KeyError):
    def __str__(self):
        return self.args[0]


def register_method(name: str):
    """Class decorator: ``@register_method("ga")``."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in REGISTRY and REGISTRY[name] is not cls:
            log.warning("method %r re-registered by %s", name, cls.__qualname__)
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


_plugins_loaded = False


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group="unlearnbench.methods"):
        try:
            cls = ep.load()
            if ep.name not in REGISTRY:
                register_method(ep.name)(cls)
        except Exception as e:  # a broken plugin must not break the benchmark
            log.warning("could not load method plugin %s: %s", ep.name, e)


def get_method(name: str) -> type[Method]:
    _load_plugins()
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(f"unknown method {name!r}; registered methods: {sorted(REGISTRY)}") from None


def list_methods() -> list[dict]:
    """Name, kind, and every parameter with its default and description."""
    _load_plugins()
    out = []
    for name, cls in sorted(REGISTRY.items()):
        params = {k: {"default": f.default, "description": f.description or ""}
                  for k, f in cls.Params.model_fields.items()}
        out.append({"name": name, "kind": cls.kind, "doc": (cls.__doc__ or "").strip().split("\n")[0],
                    "params": params})
    return out


def validate_params(name: str, params: dict | None) -> MethodParams:
    """Validate a method's params early; errors name the method and the field."""
    cls = get_method(name)
    try:
        return cls.Params.model_validate(params or {})
    except Exception as e:
        raise ValueError(f"invalid params for method {name!r}: {e}") from None
