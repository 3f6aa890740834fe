"""The detection thresholds in use: which score a species must reach to be reported.

Where they come from, first match wins (the same for live listening, ``edge analyze``/``watch``,
the TUI and the updater's shadow evaluation):

1. **Per-species thresholds**: the ``thresholds_file`` setting (``SILENCIO_EDGE_THRESHOLDS_FILE``)
   when it is set — an explicit override of the installed model's; else the active model's
   ``thresholds.json`` (an edge release carries one, docs/contracts.md §10; the updater installs it
   beside the package, so a rollback brings the previous model's thresholds back with it); else none.
2. **The default** (species without their own threshold): the ``threshold`` setting when it was
   given (``--threshold``, ``SILENCIO_EDGE_THRESHOLD``); else the active release's
   ``default_threshold`` (its ``release.json``); else the setting's default, 0.5.

``{"species_code": threshold}`` is the file format (the training pipeline's ``thresholds.json``);
a code outside the model's label space or a value outside [0, 1] is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ThresholdsError
from shared_features import LabelSpace

THRESHOLDS_FILE = "thresholds.json"
RELEASE_FILE = "release.json"


@dataclass(frozen=True)
class Thresholds:
    """``default`` for every species not in ``species``; ``source`` says where ``species`` came from
    (``release <version>``, ``thresholds_file <path>``, ``none``), ``default_source`` where the
    default came from (``setting``, ``release``)."""

    default: float = 0.5
    species: Mapping[str, float] = field(default_factory=dict)
    source: str = "none"
    default_source: str = "setting"

    def vector(self, labels: LabelSpace) -> np.ndarray:
        """``[n_species] float32``: each species' threshold in the label space's order."""
        thr = np.full(len(labels), self.default, np.float32)
        for code, t in self.species.items():
            if code in labels:
                thr[labels.index(code)] = t
        return thr

    def of(self, code: str) -> float:
        return float(self.species.get(code, self.default))

    def describe(self) -> dict[str, Any]:
        return {
            "default": self.default,
            "default_source": self.default_source,
            "species_with_own_threshold": len(self.species),
            "source": self.source,
        }

    def summary(self) -> str:
        """One line for people: ``thresholds: 3 species own (release 2), default 0.50 (release)``."""
        return (
            f"thresholds: {len(self.species)} species with their own ({self.source}), "
            f"default {self.default:.2f} ({self.default_source})"
        )


def read_thresholds(path: Path, labels: LabelSpace | None = None) -> dict[str, float]:
    """``{"species_code": threshold}`` from a JSON file; with ``labels``, unknown codes are refused."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ThresholdsError(f"{path}: not a readable thresholds file ({exc})") from None
    if not isinstance(data, dict):
        raise ThresholdsError(f'{path}: expected {{"species_code": threshold}}, got {type(data).__name__}')
    try:
        out = {str(k): float(v) for k, v in data.items()}
    except (TypeError, ValueError):
        raise ThresholdsError(f"{path}: thresholds must be numbers") from None
    bad = sorted(c for c, v in out.items() if not 0.0 <= v <= 1.0)
    if bad:
        raise ThresholdsError(f"{path}: thresholds outside [0, 1] for {bad[:5]}")
    if labels is not None:
        unknown = sorted(c for c in out if c not in labels)
        if unknown:
            raise ThresholdsError(f"{path}: unknown species codes {unknown[:5]}")
    return out


def model_thresholds(model_path: Path | None, labels: LabelSpace | None = None) -> Thresholds | None:
    """The thresholds an installed release carries (``thresholds.json`` and ``release.json``'s
    ``default_threshold`` beside its package); None for a model installed without them."""
    if model_path is None:
        return None
    path = Path(model_path)
    file = path / THRESHOLDS_FILE
    if not file.is_file():
        return None
    default, version = 0.5, path.name
    manifest = path / RELEASE_FILE
    if manifest.is_file():
        try:
            man = json.loads(manifest.read_text())
            default = float(man.get("default_threshold", default))
            version = str(man.get("version") or version)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise ThresholdsError(f"{manifest}: unreadable release manifest ({exc})") from None
    return Thresholds(default, read_thresholds(file, labels), f"release {version}", "release")


def resolve_thresholds(
    *,
    threshold: float,
    threshold_given: bool,
    thresholds_file: Path | None,
    model_path: Path | None,
    labels: LabelSpace | None,
) -> Thresholds:
    """The thresholds in use (the order is in the module's docstring). ``threshold_given``: the
    ``threshold`` setting was set explicitly (a flag or the environment), not left at its default."""
    release = model_thresholds(model_path, labels)
    if release is not None and not threshold_given:
        default, default_source = release.default, "release"
    else:
        default, default_source = threshold, "setting"
    if thresholds_file is not None:
        species = read_thresholds(thresholds_file, labels)
        return Thresholds(default, species, f"thresholds_file {thresholds_file}", default_source)
    if release is not None:
        return Thresholds(default, dict(release.species), release.source, default_source)
    return Thresholds(default, {}, "none", default_source)


def settings_thresholds(settings: Any, model_path: Path | None, labels: LabelSpace | None) -> Thresholds:
    """:func:`resolve_thresholds` for an :class:`edge.settings.EdgeSettings`."""
    return resolve_thresholds(
        threshold=float(settings.threshold),
        threshold_given="threshold" in settings.model_fields_set,
        thresholds_file=settings.thresholds_file,
        model_path=model_path,
        labels=labels,
    )
