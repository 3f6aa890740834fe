"""The BirdCLEF 2025 layout, as downloaded from Kaggle:

    DIR/taxonomy.csv
    DIR/train.csv                       (full Kaggle columns, or the reduced set of the mini data)
    DIR/train_audio/<primary_label>/<file>
    DIR/train_soundscapes/*.ogg         (unlabelled 1-minute soundscapes)
    DIR/sample_submission.csv           (optional)

and the competition's solution / submission format: one row per 5 s window, ``row_id =
<soundscape stem>_<end second>``, one probability column per species in taxonomy order.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared_features import LabelSpace, parse_secondary_labels
from shared_features.audio import AUDIO_EXTENSIONS as AUDIO_EXT
from shared_features.errors import LabelError
from training.errors import DatasetError

REQUIRED_COLUMNS = ("primary_label", "filename")
_CATALOGUE = re.compile(r"^(XC|iNat|CSA)(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Recording:
    """One row of ``train.csv``."""

    filename: str  # relative to train_audio/, e.g. "turvul/XC39894.wav"
    primary_label: str
    secondary_labels: tuple[str, ...] = ()
    collection: str = ""
    rating: float | None = None
    latitude: float | None = None
    longitude: float | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def catalogue_id(self) -> str:
        """``XC123``, ``iNat456``, ``CSA789`` or the file stem: the recording's identity across
        species folders (the same recording may be listed under several labels)."""
        return Path(self.filename).stem

    @property
    def catalogue_number(self) -> int | None:
        m = _CATALOGUE.match(Path(self.filename).stem)
        return int(m.group(2)) if m else None


def _float(v: str | None) -> float | None:
    if v is None or v.strip() == "" or v.strip().lower() == "nan":
        return None
    try:
        return float(v)
    except ValueError:
        return None


def read_train_csv(path: Path) -> list[Recording]:
    if not path.is_file():
        raise DatasetError(f"{path}: train.csv not found")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in cols]
        if missing:
            raise DatasetError(f"{path}: missing columns {missing} (has {cols})")
        rows = []
        for i, r in enumerate(reader, start=2):
            try:
                secondary = tuple(parse_secondary_labels(r.get("secondary_labels")))
            except LabelError as exc:
                raise DatasetError(f"{path}:{i}: {exc}") from exc
            known = {
                "primary_label",
                "secondary_labels",
                "filename",
                "collection",
                "rating",
                "latitude",
                "longitude",
            }
            rows.append(
                Recording(
                    filename=r["filename"].strip(),
                    primary_label=r["primary_label"].strip(),
                    secondary_labels=secondary,
                    collection=(r.get("collection") or "").strip(),
                    rating=_float(r.get("rating")),
                    latitude=_float(r.get("latitude")),
                    longitude=_float(r.get("longitude")),
                    extra={k: v for k, v in r.items() if k not in known and k is not None},
                )
            )
    return rows


@dataclass
class BirdCLEFDataset:
    root: Path
    labels: LabelSpace
    recordings: list[Recording]

    @classmethod
    def load(cls, root: str | Path) -> BirdCLEFDataset:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: not a directory (expected the BirdCLEF 2025 layout)")
        tax = root / "taxonomy.csv"
        if not tax.is_file():
            raise DatasetError(f"{root}: taxonomy.csv not found; is this a BirdCLEF 2025 download?")
        try:
            labels = LabelSpace.from_taxonomy_csv(tax)
        except LabelError as exc:
            raise DatasetError(str(exc)) from exc
        return cls(root, labels, read_train_csv(root / "train.csv"))

    @property
    def audio_dir(self) -> Path:
        return self.root / "train_audio"

    @property
    def soundscape_dir(self) -> Path:
        return self.root / "train_soundscapes"

    def audio_path(self, rec: Recording) -> Path:
        return self.audio_dir / rec.filename

    def soundscapes(self) -> list[Path]:
        d = self.soundscape_dir
        if not d.is_dir():
            return []
        return sorted(p for p in d.iterdir() if p.suffix.lower() in AUDIO_EXT)

    def label_vector(self, rec: Recording, secondary_weight: float = 1.0) -> np.ndarray:
        return self.labels.encode(rec.primary_label, rec.secondary_labels, secondary_weight)

    def unknown_labels(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.recordings:
            for code in (r.primary_label, *r.secondary_labels):
                if code not in self.labels:
                    out[code] = out.get(code, 0) + 1
        return out


# ---------------------------------------------------------------------- solution format
def row_id(soundscape: str | Path, end_second: int) -> str:
    return f"{Path(soundscape).stem}_{int(end_second)}"


def write_solution_csv(path: Path, row_ids: Sequence[str], scores: np.ndarray, labels: LabelSpace) -> None:
    """Write ``row_id`` + one column per species (taxonomy order): a submission or a truth file."""
    scores = np.asarray(scores)
    if scores.shape != (len(row_ids), len(labels)):
        raise DatasetError(f"scores shape {scores.shape} != ({len(row_ids)}, {len(labels)})")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row_id", *labels.codes])
        for rid, row in zip(row_ids, scores):
            w.writerow([rid, *(f"{v:.6g}" for v in row)])


def read_solution_csv(
    path: Path, labels: LabelSpace | None = None
) -> tuple[list[str], list[str], np.ndarray]:
    """Read a solution/submission file → (row_ids, species codes, ``[rows, species] float64``).
    With ``labels``, the columns must be exactly its codes (in any order; returned in its order)."""
    if not Path(path).is_file():
        raise DatasetError(f"{path}: file not found")
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise DatasetError(f"{path}: empty file") from None
        if not header or header[0] != "row_id":
            raise DatasetError(f"{path}: first column must be row_id, got {header[:1]}")
        codes = header[1:]
        ids: list[str] = []
        rows: list[list[float]] = []
        for i, r in enumerate(reader, start=2):
            if len(r) != len(header):
                raise DatasetError(f"{path}:{i}: {len(r)} fields, header has {len(header)}")
            ids.append(r[0])
            try:
                rows.append([float(v) for v in r[1:]])
            except ValueError as exc:
                raise DatasetError(f"{path}:{i}: {exc}") from exc
    arr = np.array(rows, dtype=np.float64).reshape(len(ids), len(codes))
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{path}: duplicate row_ids")
    if labels is not None:
        unknown = sorted(set(codes) - set(labels.codes))
        missing = sorted(set(labels.codes) - set(codes))
        if unknown or missing:
            raise DatasetError(
                f"{path}: columns do not match the taxonomy (unknown {unknown[:5]}, missing {missing[:5]})"
            )
        order = [codes.index(c) for c in labels.codes]
        arr, codes = arr[:, order], list(labels.codes)
    return ids, codes, arr
