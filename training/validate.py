"""``silencio data validate``: what a BirdCLEF-layout dataset holds, and what is wrong with it.

Never crashes on a bad file: every missing, corrupt or undecodable file is listed. The dataset is
*unusable* (non-zero exit) only when nothing can be trained on: no taxonomy, no train.csv, or not
one decodable training file.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shared_features import audio_info
from shared_features.errors import AudioError
from training.dataset import BirdCLEFDataset
from training.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass
class FileCheck:
    path: str
    ok: bool
    sample_rate: int = 0
    channels: int = 0
    duration: float = 0.0
    format: str = ""
    error: str = ""


def check_file(path: Path) -> FileCheck:
    """Header check of one file (decoding the header, not the whole stream)."""
    try:
        info = audio_info(path)
    except FileNotFoundError:
        return FileCheck(str(path), False, error="missing")
    except AudioError as exc:
        return FileCheck(str(path), False, error=f"{type(exc).__name__}: {exc}")
    if info.frames <= 0:
        return FileCheck(
            str(path), False, info.sample_rate, info.channels, 0.0, info.format, "EmptyAudioError: no samples"
        )
    return FileCheck(str(path), True, info.sample_rate, info.channels, info.duration, info.format)


@dataclass
class ValidationReport:
    root: str
    n_species_taxonomy: int
    n_recordings: int
    n_files_ok: int
    n_soundscapes: int
    species_counts: dict[str, int]
    class_counts: dict[str, int]
    species_without_recordings: list[str]
    unknown_labels: dict[str, int]
    missing_files: list[str]
    bad_files: dict[str, str]
    durations: dict[str, float]
    sample_rates: dict[str, int]
    formats: dict[str, int]
    secondary: dict[str, float]
    collections: dict[str, int]
    problems: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return self.n_files_ok > 0

    def to_markdown(self) -> str:
        L = [
            f"# Dataset validation: `{self.root}`",
            "",
            f"- species in taxonomy: **{self.n_species_taxonomy}**; with recordings: "
            f"**{len(self.species_counts)}**",
            f"- recordings in train.csv: **{self.n_recordings}**, decodable: **{self.n_files_ok}**,"
            f" missing: **{len(self.missing_files)}**, corrupt/undecodable: **{len(self.bad_files)}**",
            f"- soundscapes: **{self.n_soundscapes}**",
            f"- usable: **{'yes' if self.usable else 'NO'}**",
            "",
        ]
        if self.problems:
            L += ["## Problems", "", *[f"- {p}" for p in self.problems], ""]
        L += [
            "## Recordings per taxon class",
            "",
            "| class | recordings |",
            "|---|---|",
            *[f"| {k} | {v} |" for k, v in sorted(self.class_counts.items())],
            "",
        ]
        L += [
            "## Durations (s) and sample rates",
            "",
            "| statistic | value |",
            "|---|---|",
            *[f"| {k} | {v:.2f} |" for k, v in self.durations.items()],
            "",
            "| sample rate (Hz) | files |",
            "|---|---|",
            *[f"| {k} | {v} |" for k, v in sorted(self.sample_rates.items(), key=lambda x: int(x[0]))],
            "",
        ]
        L += ["## Secondary labels", "", *[f"- {k}: {v:g}" for k, v in self.secondary.items()], ""]
        if self.unknown_labels:
            L += [
                "## Labels not in the taxonomy",
                "",
                *[f"- `{k}`: {v}" for k, v in self.unknown_labels.items()],
                "",
            ]
        if self.missing_files:
            L += ["## Missing files", "", *[f"- {p}" for p in self.missing_files], ""]
        if self.bad_files:
            L += [
                "## Corrupt or undecodable files",
                "",
                *[f"- {p}: {e}" for p, e in self.bad_files.items()],
                "",
            ]
        if self.species_without_recordings:
            L += [
                f"## Species without recordings ({len(self.species_without_recordings)})",
                "",
                ", ".join(self.species_without_recordings),
                "",
            ]
        L += [
            "## Recordings per species",
            "",
            "| species | recordings |",
            "|---|---|",
            *[f"| {k} | {v} |" for k, v in sorted(self.species_counts.items(), key=lambda x: -x[1])],
            "",
        ]
        return "\n".join(L)


def validate_dataset(
    root: Path, workers: int = 1, progress: Callable[[int, int], None] | None = None
) -> ValidationReport:
    ds = BirdCLEFDataset.load(root)  # raises DatasetError when taxonomy/train.csv are unusable
    paths = [ds.audio_path(r) for r in ds.recordings]
    soundscapes = ds.soundscapes()
    all_paths = paths + soundscapes
    checks: list[FileCheck] = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            for i, c in enumerate(ex.map(check_file, all_paths, chunksize=16), 1):
                checks.append(c)
                if progress:
                    progress(i, len(all_paths))
    else:
        for i, p in enumerate(all_paths, 1):
            checks.append(check_file(p))
            if progress:
                progress(i, len(all_paths))
    train_checks = checks[: len(paths)]
    rel = lambda p: str(Path(p).relative_to(ds.root))  # noqa: E731
    missing = [rel(c.path) for c in checks if c.error == "missing"]
    bad = {rel(c.path): c.error for c in checks if not c.ok and c.error != "missing"}
    ok = [c for c in train_checks if c.ok]
    durs = sorted(c.duration for c in ok)
    species_counts = Counter(r.primary_label for r in ds.recordings)
    class_counts: Counter[str] = Counter()
    for r in ds.recordings:
        cls = ds.labels[r.primary_label].taxon_class if r.primary_label in ds.labels else "unknown"
        class_counts[cls] += 1
    n_sec = [len(r.secondary_labels) for r in ds.recordings]
    problems = []
    unknown = ds.unknown_labels()
    if unknown:
        problems.append(f"{sum(unknown.values())} labels of {len(unknown)} codes not in the taxonomy")
    if missing:
        problems.append(f"{len(missing)} files listed in train.csv are missing")
    if bad:
        problems.append(f"{len(bad)} files cannot be decoded")
    if not ok:
        problems.append("no decodable training recording: the dataset is unusable")
    dup = [k for k, v in Counter(r.filename for r in ds.recordings).items() if v > 1]
    if dup:
        problems.append(f"{len(dup)} filenames listed more than once in train.csv (e.g. {dup[0]})")
    pct = lambda q: durs[min(len(durs) - 1, int(q * len(durs)))] if durs else 0.0  # noqa: E731
    return ValidationReport(
        root=str(ds.root),
        n_species_taxonomy=len(ds.labels),
        n_recordings=len(ds.recordings),
        n_files_ok=len(ok),
        n_soundscapes=len(soundscapes),
        species_counts=dict(species_counts),
        class_counts=dict(class_counts),
        species_without_recordings=[c for c in ds.labels.codes if c not in species_counts],
        unknown_labels=unknown,
        missing_files=missing,
        bad_files=bad,
        durations={
            "total_hours": sum(durs) / 3600,
            "min": durs[0] if durs else 0.0,
            "median": pct(0.5),
            "p95": pct(0.95),
            "max": durs[-1] if durs else 0.0,
        },
        sample_rates={str(k): v for k, v in Counter(c.sample_rate for c in ok).items()},
        formats=dict(Counter(c.format for c in ok)),
        secondary={
            "recordings_with_secondary": sum(1 for n in n_sec if n),
            "mean_per_recording": (sum(n_sec) / len(n_sec)) if n_sec else 0.0,
            "max_per_recording": max(n_sec, default=0),
        },
        collections=dict(Counter(r.collection or "unknown" for r in ds.recordings)),
        problems=problems,
    )


def save_report(report: ValidationReport, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "validation.md", out_dir / "validation.json"
    md.write_text(report.to_markdown())
    js.write_text(json.dumps(asdict(report) | {"usable": report.usable}, indent=2))
    return md, js


__all__ = ["DatasetError", "ValidationReport", "check_file", "save_report", "validate_dataset"]
