"""PISTOL-style structured knowledge: contract graphs, their QA, scenarios and loaders.

>>> from pistol_data import generate, scenarios
>>> ds = generate("pistol-mini", seed=0)
>>> split = scenarios.resolve(ds, {"type": "edge", "edge": "A_B"})
"""

from . import scenarios
from .dataset import PistolDataset, generate
from .io import load, load_pistol_json, save
from .presets import PRESETS
from .records import QARecord
from .side_sets import general_knowledge, refusal_calibration, refusal_sentences

__all__ = ["PistolDataset", "QARecord", "PRESETS", "generate", "load", "load_pistol_json", "save",
           "scenarios", "general_knowledge", "refusal_calibration", "refusal_sentences"]
