"""Pluggable unlearning / editing / steering methods, registered by name.

>>> from methods import get_method
>>> cls = get_method("gd"); params = cls.Params(lr=1e-5)
"""

from . import alphaedit, blur, grace, gradient, lunar, memit, preference, rmu, rome, wise  # noqa: F401  (registration side effects)
from .base import (
                   REGISTRY,
                   AsGiven,
                   Method,
                   MethodParams,
                   MethodResult,
                   UnknownMethodError,
                   UnlearnRequest,
                   get_method,
                   list_methods,
                   register_method,
                   validate_params,
)

__all__ = ["AsGiven", "REGISTRY", "Method", "MethodParams", "MethodResult", "UnlearnRequest", "UnknownMethodError", "get_method",
           "list_methods", "register_method", "validate_params"]
