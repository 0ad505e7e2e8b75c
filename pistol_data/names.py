"""Random, pronounceable-looking, unique names for companies, persons, places and streets.

PISTOL's originals are random letter strings ("Wnzatj SAS"); we build names from
consonant–vowel syllables instead so that the tokenizer sees plausible words, which makes the
facts learnable by a small model while still being absent from any pre-training corpus.
"""

from __future__ import annotations

import random

ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "j", "k", "kr", "l", "m", "n", "p",
          "pr", "r", "s", "st", "t", "tr", "v", "w", "z", "sh", "ch", "th"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou"]
CODAS = ["", "", "", "n", "r", "l", "s", "m", "x", "th", "nd", "rk"]
COMPANY_SUFFIXES = ["Ltd", "GmbH", "SA", "SAS", "AG", "PLC", "BV", "NV", "LLC", "Inc"]
STREET_TYPES = ["Street", "Road", "Avenue", "Lane", "Way", "Place", "Court", "Boulevard",
                "Terrace", "Crescent", "Square", "Alley", "Circle", "Drive"]


def _word(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables)]
    return ("".join(parts) + rng.choice(CODAS)).capitalize()


class NameFactory:
    """Draws names from one RNG and guarantees that no two entities share a name.

    ``exclude`` holds names that must never be produced (e.g. the entities of a dataset, when
    making up entities that must *not* exist).
    """

    def __init__(self, rng: random.Random, exclude: set[str] | None = None):
        self.rng = rng
        self.used: set[str] = set(exclude or ())

    def _unique(self, make) -> str:
        for _ in range(10_000):
            name = make()
            if name not in self.used:
                self.used.add(name)
                return name
        raise RuntimeError("name space exhausted")  # pragma: no cover - 10k collisions in a row

    def company(self) -> str:
        return self._unique(lambda: f"{_word(self.rng, self.rng.randint(2, 3))} "
                                    f"{self.rng.choice(COMPANY_SUFFIXES)}")

    def person(self) -> str:
        return self._unique(lambda: f"{_word(self.rng, 2)} {_word(self.rng, 2)}")

    def address(self) -> str:
        return self._unique(lambda: f"{self.rng.randint(1, 999):03d} {_word(self.rng, 2)} "
                                    f"{self.rng.choice(STREET_TYPES)}")

    def word(self, syllables: int = 2) -> str:
        return self._unique(lambda: _word(self.rng, syllables))
