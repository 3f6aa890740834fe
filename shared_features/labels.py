"""``LabelSpace``: the ordered species of a model, built from BirdCLEF's ``taxonomy.csv``.

Class order is the row order of ``taxonomy.csv`` (the competition's submission column order).
Every model stores its ``LabelSpace.to_dict()``; outputs name species by code, scientific name,
common name and taxon class, never by index.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared_features.errors import LabelError

TAXON_CLASSES = ("Aves", "Amphibia", "Insecta", "Mammalia")

#: The El Silencio label space that ships with the package: BirdCLEF 2025's ``taxonomy.csv``
#: (206 species: 146 Aves, 34 Amphibia, 17 Insecta, 9 Mammalia), unchanged. Every command uses it
#: unless a ``--taxonomy`` / setting overrides it.
DEFAULT_TAXONOMY = Path(__file__).resolve().parent / "data" / "taxonomy.csv"


def taxonomy_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The taxonomy a command should use: ``path`` resolved against the working directory, or the
    packaged default. Raises :class:`LabelError` naming the absolute path when it does not exist."""
    if path is None or str(path) == "":
        return DEFAULT_TAXONOMY
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise LabelError(f"taxonomy file {p} does not exist (or is not a file)")
    return p


_REQUIRED = ("primary_label", "scientific_name", "common_name", "class_name")


@dataclass(frozen=True)
class Species:
    code: str
    scientific_name: str
    common_name: str
    taxon_class: str
    inat_taxon_id: str = ""

    def display(self) -> str:
        """``code — Scientific name (Common name) [Class]`` for user-facing text."""
        return f"{self.code} — {self.scientific_name} ({self.common_name}) [{self.taxon_class}]"


def parse_secondary_labels(value: str | Sequence[str] | None) -> list[str]:
    """BirdCLEF's ``secondary_labels`` cell (``"['a', 'b']"``, ``"['']"``, ``"[]"``, ``""``) → codes."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text or text in ("[]", "['']", '[""]', "nan"):
            return []
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError) as exc:
            raise LabelError(f"malformed secondary_labels cell {value!r}") from exc
        if isinstance(parsed, str):
            parsed = [parsed]
        if not isinstance(parsed, (list, tuple)):
            raise LabelError(f"malformed secondary_labels cell {value!r}")
        return [str(p).strip() for p in parsed if str(p).strip()]
    return [str(v).strip() for v in value if str(v).strip()]


class LabelSpace:
    """An ordered, immutable list of :class:`Species` with multi-hot encoding."""

    def __init__(self, species: Iterable[Species]) -> None:
        self._species: tuple[Species, ...] = tuple(species)
        if not self._species:
            raise LabelError("a LabelSpace needs at least one species")
        self._index: dict[str, int] = {}
        for i, s in enumerate(self._species):
            if s.code in self._index:
                raise LabelError(f"duplicate species code {s.code!r} in label space")
            self._index[s.code] = i

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_taxonomy_csv(cls, path: str | os.PathLike[str]) -> LabelSpace:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in _REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise LabelError(f"{path}: taxonomy.csv lacks columns {missing}")
            rows = list(reader)
        return cls(
            Species(
                code=r["primary_label"].strip(),
                scientific_name=r["scientific_name"].strip(),
                common_name=r["common_name"].strip(),
                taxon_class=r["class_name"].strip(),
                inat_taxon_id=(r.get("inat_taxon_id") or "").strip(),
            )
            for r in rows
        )

    @classmethod
    def default(cls) -> LabelSpace:
        """The El Silencio label space shipped with the package (BirdCLEF 2025, 206 species)."""
        return cls.from_taxonomy_csv(DEFAULT_TAXONOMY)

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "sha256": self.digest(), "species": [asdict(s) for s in self._species]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelSpace:
        try:
            space = cls(Species(**s) for s in data["species"])
        except (KeyError, TypeError) as exc:
            raise LabelError(f"malformed label space: {exc}") from exc
        if "sha256" in data and data["sha256"] != space.digest():
            raise LabelError(f"label space digest {data['sha256']} does not match its species list")
        return space

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> LabelSpace:
        return cls.from_dict(json.loads(text))

    def digest(self) -> str:
        """sha256 of the ordered codes and names: two models share a label space iff equal."""
        blob = json.dumps([asdict(s) for s in self._species], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    # ------------------------------------------------------------------ lookup
    def __len__(self) -> int:
        return len(self._species)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._species)

    def __contains__(self, code: object) -> bool:
        return code in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelSpace) and self._species == other._species

    def __hash__(self) -> int:
        return hash(self._species)

    def __getitem__(self, key: int | str) -> Species:
        if isinstance(key, str):
            return self._species[self.index(key)]
        return self._species[key]

    @property
    def codes(self) -> list[str]:
        return [s.code for s in self._species]

    @property
    def species(self) -> tuple[Species, ...]:
        return self._species

    def index(self, code: str) -> int:
        try:
            return self._index[code]
        except KeyError:
            raise LabelError(
                f"unknown species code {code!r} (not in this label space of {len(self)} species)"
            ) from None

    def class_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self._species:
            out[s.taxon_class] = out.get(s.taxon_class, 0) + 1
        return out

    # ------------------------------------------------------------------ encoding
    def encode(
        self, primary: str, secondary: Sequence[str] = (), secondary_weight: float = 1.0
    ) -> np.ndarray:
        """Multi-hot ``[n_species] float32``: 1 for the primary label, ``secondary_weight`` for
        each secondary label. Unknown codes raise :class:`LabelError`."""
        y = np.zeros(len(self), np.float32)
        for code in secondary:
            y[self.index(code)] = max(y[self.index(code)], secondary_weight)
        y[self.index(primary)] = 1.0
        return y

    def decode(self, y: np.ndarray, threshold: float = 0.5) -> list[Species]:
        """Species whose entry in ``[n_species]`` scores is ≥ ``threshold``, best first."""
        y = np.asarray(y).reshape(-1)
        if y.size != len(self):
            raise LabelError(f"expected {len(self)} scores, got {y.size}")
        order = np.argsort(-y, kind="stable")
        return [self._species[i] for i in order if y[i] >= threshold]

    def top_k(self, y: np.ndarray, k: int = 5) -> list[tuple[Species, float]]:
        y = np.asarray(y).reshape(-1)
        if y.size != len(self):
            raise LabelError(f"expected {len(self)} scores, got {y.size}")
        order = np.argsort(-y, kind="stable")[:k]
        return [(self._species[i], float(y[i])) for i in order]
