"""The method interface, the request a method receives, and the registry.

A method is a small class: ``kind`` ("unlearn" | "edit" | "steer"), a pydantic ``Params``
with documented defaults, and ``apply(model, tokenizer, request, params)`` returning a
:class:`MethodResult` (or just the model). The runner knows nothing else about it. Third-party
methods register through the entry-point group ``unlearnbench.methods``
(``name = "package.module:Class"``). ``methods`` imports the lower layer
(:mod:`unlearnbench.core`) and :mod:`pistol_data` only, never the evaluator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict

from pistol_data import QARecord
from unlearnbench.core.registry import Registry, UnknownNameError

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
    and drop the model when done; an :class:`AsGiven` handle says the reference *is* the model
    ``apply`` receives (the runner's): the shared loop then reads the model before its first update
    instead of a copy. ``entities``: the
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


class AsGiven:
    """A ``reference_model`` handle that also says what the reference is: the model ``apply``
    receives, as it is when ``apply`` starts. A method that knows may read the model itself before
    its first update (no copy); calling the handle still makes a copy, for one that does not."""

    def __init__(self, make: Callable[[], object]):
        self._make = make

    def __call__(self):
        return self._make()


@dataclass
class MethodResult:
    """What ``apply`` produced: the ``model``; ``info``, JSON-able facts kept with the result
    (chosen layer, final loss, ...; stored as ``method_info``); and what inference-time attacks
    may use: ``layers`` the method modified and, for steering methods, ``directions`` (layer →
    vector added at that layer's output)."""

    model: Any
    info: dict | None = None
    layers: list[int] | None = None
    directions: dict[int, Any] | None = None
    # a peft model whose adapters were kept (lora.merge: false): ``model`` runs with them; the runner
    # saves the adapter and unloads it after the cell (the base weights are the model's as it came in)
    adapter: Any = None

    @classmethod
    def of(cls, out) -> "MethodResult":
        """A method may return the bare model (the README's four-line method does)."""
        return out if isinstance(out, cls) else cls(model=out)

    def attack_info(self) -> dict | None:
        """The attacks' view: ``{"layers": [...], "directions": {...}}``, or None when nothing is exposed."""
        out = {k: v for k, v in (("layers", self.layers), ("directions", self.directions)) if v}
        return out or None


class Method:
    name: ClassVar[str] = ""
    kind: ClassVar[str] = "unlearn"
    Params: ClassVar[type[MethodParams]] = MethodParams
    # ``apply`` may change the given model's weights in place (the runner puts them back from the
    # checkpoint afterwards); a method that adds or replaces modules must say so, and gets a copy
    changes_structure: ClassVar[bool] = False

    def apply(self, model, tokenizer, request: UnlearnRequest, params: MethodParams) -> MethodResult:  # pragma: no cover
        raise NotImplementedError


def _named(name: str, cls: type[Method]) -> type[Method]:
    cls.name = name
    return cls


REGISTRY: Registry[type[Method]] = Registry("method", group="unlearnbench.methods", on_register=_named)
UnknownMethodError = UnknownNameError


def register_method(name: str):
    """Class decorator: ``@register_method("ga")``; a name already taken is an error."""
    return REGISTRY.decorator(name)


def get_method(name: str) -> type[Method]:
    return REGISTRY[name]


def list_methods() -> list[dict]:
    """Name, kind, and every parameter with its default and description."""
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
