"""The promotion gate: a candidate edge model (package + per-species thresholds) against the model
in production, on two kinds of evidence that no training step saw:

* the **frozen held-out set** — labelled windows fixed once (the dataset's labelled soundscapes,
  :func:`heldout_from_dataset`), scored by macro ROC-AUC (BirdCLEF 2025);
* the **held-back feedback clips** — clips guides or reviewers judged, kept out of training. A clip
  the edge reported as species ``c`` and that was judged wrong (``wrong_species`` or
  ``not_an_animal``) is a *flagged error*; a model *repeats* it when its score for ``c`` on the clip
  (the maximum over the clip's 5 s windows) reaches its threshold for ``c``.

:class:`GateRule` (default): promote only when the held-out macro ROC-AUC drops by at most 0.005
**and** the candidate repeats fewer flagged errors than production. Anything else is a refusal
with typed reasons (:class:`RefusalKind`). Without a production model the candidate is judged on
its own: it is promoted when its label space matches the held-out set's.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared_features import DEFAULT, frame_windows, load_audio
from training.errors import TrainingError

VERDICTS = ("confirmed", "wrong_species", "not_an_animal")


class RefusalKind(enum.StrEnum):
    HELDOUT_DROP = "heldout_drop"
    NO_IMPROVEMENT = "no_improvement"
    NO_FLAGGED_CLIPS = "no_flagged_clips"
    LABELS_DIFFER = "labels_differ"


@dataclass(frozen=True)
class GateRefusal:
    kind: RefusalKind
    message: str


@dataclass(frozen=True)
class GateRule:
    max_heldout_drop: float = 0.005
    require_fewer_flagged_errors: bool = True


@dataclass(frozen=True)
class EdgeModel:
    """What ships: an edge package and its per-species thresholds (absent species: ``default``)."""

    package: Path
    thresholds: Mapping[str, float] = field(default_factory=dict)
    default_threshold: float = 0.5

    def threshold_vector(self, codes: Sequence[str]) -> np.ndarray:
        return np.array([float(self.thresholds.get(c, self.default_threshold)) for c in codes], np.float32)


@dataclass(frozen=True, eq=False)
class HeldOutSet:
    """``windows`` ``[n, window_samples] float32``, ``targets`` ``[n, C]`` 0/1 in ``codes`` order."""

    name: str
    windows: np.ndarray
    targets: np.ndarray
    codes: tuple[str, ...]
    labels_sha256: str


@dataclass(frozen=True)
class FeedbackClip:
    """One judged clip: the audio file, the species the edge reported, the verdict and (for
    ``wrong_species``) the species it really was."""

    path: Path
    reported: str
    verdict: str
    correct_code: str | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise TrainingError(f"{self.path}: verdict must be one of {VERDICTS}, got {self.verdict!r}")

    @property
    def flagged(self) -> bool:
        return self.verdict != "confirmed"


@dataclass(frozen=True)
class FeedbackSet:
    name: str
    clips: tuple[FeedbackClip, ...]


@dataclass(frozen=True)
class ModelFigures:
    """One model on the gate's evidence."""

    heldout_macro_roc_auc: float
    flagged: int
    flagged_repeated: int
    flagged_corrected: int
    confirmed: int
    confirmed_kept: int


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    refusals: tuple[GateRefusal, ...]
    candidate: ModelFigures
    production: ModelFigures | None
    heldout: str
    feedback: str
    rule: GateRule
    run_id: str | None = None
    alias_moved: str | None = None

    @property
    def reason(self) -> str:
        if self.promoted:
            return "promoted: " + (
                "no production model to compare with"
                if self.production is None
                else f"held-out macro ROC-AUC {self.candidate.heldout_macro_roc_auc:.4f} vs "
                f"{self.production.heldout_macro_roc_auc:.4f}, flagged errors repeated "
                f"{self.candidate.flagged_repeated} vs {self.production.flagged_repeated}"
            )
        return "refused: " + "; ".join(r.message for r in self.refusals)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["refusals"] = [{"kind": r.kind.value, "message": r.message} for r in self.refusals]
        d["reason"] = self.reason
        return d


def heldout_from_dataset(data_dir: Path) -> HeldOutSet:
    """The frozen held-out set of a dataset: its labelled soundscape windows (truth file order)."""
    from training.data import soundscape_waveforms
    from training.dataset import BirdCLEFDataset, read_solution_csv

    ds = BirdCLEFDataset.load(data_dir)
    truth = Path(data_dir) / "soundscape_solution.csv"
    if not truth.exists():
        raise TrainingError(f"{data_dir}: no soundscape_solution.csv, so no frozen held-out set")
    _, waves = soundscape_waveforms(ds, truth)
    _, _, y = read_solution_csv(truth, ds.labels)
    return HeldOutSet(
        f"labelled soundscapes of {data_dir}", waves, y >= 0.5, tuple(ds.labels.codes), ds.labels.digest()
    )


def _clip_windows(path: Path) -> np.ndarray:
    wins, _ = frame_windows(load_audio(path, DEFAULT), DEFAULT)
    return np.asarray(wins, np.float32)


def evaluate_model(
    model: EdgeModel, heldout: HeldOutSet, feedback: FeedbackSet, threads: int = 1
) -> ModelFigures:
    """Macro ROC-AUC on the held-out windows; repeated / corrected flagged errors and kept
    confirmations on the feedback clips, at the model's thresholds."""
    from shared_features.package import load_package
    from training.metrics import birdclef_roc_auc

    pkg = load_package(model.package, threads=threads)
    if pkg.labels.digest() != heldout.labels_sha256:
        raise TrainingError(f"{model.package}: its label space differs from the held-out set's")
    codes = list(pkg.labels.codes)
    auc = birdclef_roc_auc(heldout.targets, pkg.predict(heldout.windows).probs)
    thr = model.threshold_vector(codes)
    index = {c: i for i, c in enumerate(codes)}
    flagged = repeated = corrected = confirmed = kept = 0
    for clip in feedback.clips:
        for code in (clip.reported, clip.correct_code):
            if code is not None and code not in index:
                raise TrainingError(f"{clip.path}: species {code!r} is not in the model's label space")
        scores = pkg.predict(_clip_windows(clip.path)).probs.max(axis=0)
        reports = scores >= thr
        hit = bool(reports[index[clip.reported]])
        if clip.flagged:
            flagged += 1
            repeated += int(hit)
            if clip.correct_code is not None:
                corrected += int(bool(reports[index[clip.correct_code]]))
        else:
            confirmed += 1
            kept += int(hit)
    return ModelFigures(auc, flagged, repeated, corrected, confirmed, kept)


def decide(
    candidate: ModelFigures, production: ModelFigures | None, rule: GateRule = GateRule()
) -> tuple[GateRefusal, ...]:
    """The rule on two models' figures; an empty tuple means promote."""
    if production is None:
        return ()
    out: list[GateRefusal] = []
    drop = production.heldout_macro_roc_auc - candidate.heldout_macro_roc_auc
    if drop > rule.max_heldout_drop + 1e-12:
        out.append(
            GateRefusal(
                RefusalKind.HELDOUT_DROP,
                f"held-out macro ROC-AUC drops by {drop:.4f} (> {rule.max_heldout_drop}): "
                f"{candidate.heldout_macro_roc_auc:.4f} vs production {production.heldout_macro_roc_auc:.4f}",
            )
        )
    if rule.require_fewer_flagged_errors:
        if candidate.flagged == 0:
            out.append(GateRefusal(RefusalKind.NO_FLAGGED_CLIPS, "no flagged clips held back to judge on"))
        elif candidate.flagged_repeated >= production.flagged_repeated:
            out.append(
                GateRefusal(
                    RefusalKind.NO_IMPROVEMENT,
                    f"flagged errors not improved: the candidate repeats {candidate.flagged_repeated} of "
                    f"{candidate.flagged}, production {production.flagged_repeated}",
                )
            )
    return tuple(out)


def labels_refusal(candidate: Path, production: Path | None) -> GateRefusal | None:
    from shared_features.package import load_package

    if production is None:
        return None
    a, b = load_package(candidate, verify=False).labels, load_package(production, verify=False).labels
    if a.digest() != b.digest():
        return GateRefusal(RefusalKind.LABELS_DIFFER, "candidate and production have different label spaces")
    return None
