"""Shadow evaluation of a candidate model against the installed one, on this device's own clips.

Two figures:

* **Agreement** — top-1 agreement of the two models on the windows of the most recent stored clips
  (any clip; informational).
* **Verified errors** — the decision that counts. On the stored clips of detections someone judged
  (the guide's verdict, else the cloud's confirmation: :meth:`edge.records.VerifiedClip.judgements`)
  each model reports a species on a clip when its highest window score reaches *that model's*
  threshold for the species (the candidate at the thresholds its release carries, the installed
  model at the thresholds in use now). An error is a judged species reported when it was absent,
  or not reported when present.

**The rule**: the candidate is refused when it makes at least ``max(2, ⌈10 % of the judgements⌉)``
more errors than the installed model on the verified clips (:data:`MIN_EXTRA_ERRORS`,
:data:`EXTRA_ERROR_SHARE`). No verified clips: nothing to judge by — it is installed, with that
note. Judgements of species outside either model's label space are left out.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.records import VerifiedClip
from edge.store import Store
from edge.thresholds import Thresholds
from shared_features import DEFAULT, frame_windows, load_audio, log_mel
from shared_features.errors import SilencioFeatureError

log = logging.getLogger(__name__)

#: a candidate is refused when it makes at least this many more errors on verified clips …
MIN_EXTRA_ERRORS = 2
#: … and at least this share of the judgements more (whichever is larger)
EXTRA_ERROR_SHARE = 0.10
RULE = (
    f"refused when the candidate makes ≥ max({MIN_EXTRA_ERRORS}, ⌈{EXTRA_ERROR_SHARE:.0%} of judgements⌉) "
    "more errors than the installed model on verified clips, each model at its own thresholds"
)


@dataclass(frozen=True)
class ShadowResult:
    """What the shadow evaluation found; ``refused`` with ``reason`` when the rule refuses."""

    report: dict[str, Any]
    refused: bool
    reason: str


def _clip_scores(scorer: Any, windows: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """``[n_windows, n_species] float32`` scores of one clip's windows."""
    use = scorer.needs_features
    rows = [scorer.score(w, f if use else None) for w, f in zip(windows, feats)]
    return np.stack([np.asarray(r, np.float32) for r in rows])


def _windows(path: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        wins, _ = frame_windows(load_audio(path))
    except (OSError, SilencioFeatureError) as exc:
        log.info("shadow evaluation: clip %s skipped (%s)", path, exc)
        return None
    if len(wins) == 0:
        return None
    return wins, log_mel(wins, DEFAULT)


def evaluate(
    candidate: Any,
    candidate_thresholds: Thresholds,
    current: Any,
    current_thresholds: Thresholds,
    store: Store,
    max_clips: int = 50,
    max_verified: int = 200,
) -> ShadowResult:
    """Shadow-evaluate ``candidate`` against ``current`` (two :class:`edge.detector.Scorer`s) on the
    store's clips; see the module docstring for the figures and the rule."""
    cache: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}

    def windows(path: str) -> tuple[np.ndarray, np.ndarray] | None:
        if path not in cache:
            cache[path] = _windows(path)
        return cache[path]

    recent = store.recent_clip_paths(max_clips)
    agree = total = 0
    for path in recent:
        got = windows(path)
        if got is None:
            continue
        a = _clip_scores(candidate, *got)
        b = _clip_scores(current, *got)
        agree += int((a.argmax(1) == b.argmax(1)).sum())
        total += len(a)
    report: dict[str, Any] = {
        "clips": len(recent),
        "windows": total,
        "top1_agreement": agree / total if total else None,
    }
    verified = store.verified_clips(max_verified)
    errors = _verified_errors(candidate, candidate_thresholds, current, current_thresholds, verified, windows)
    report.update(errors)
    report["rule"] = RULE
    n = errors["judgements"]
    if n == 0:
        note = "no verified clips on this device: installed without a verdict-based check"
        report["note"] = note
        return ShadowResult(report, False, note)
    e_new, e_old = errors["errors"]["candidate"], errors["errors"]["installed"]
    worse = e_new - e_old
    margin = max(MIN_EXTRA_ERRORS, math.ceil(EXTRA_ERROR_SHARE * n))
    report["error_margin"] = margin
    if worse >= margin:
        reason = (
            f"shadow evaluation: the candidate makes {e_new} errors on {n} judgements of "
            f"{errors['verified_clips']} verified clips, the installed model {e_old} "
            f"({worse} more ≥ {margin})"
        )
        return ShadowResult(report, True, reason)
    return ShadowResult(
        report,
        False,
        f"{e_new} errors vs {e_old} on {n} judgements",
    )


def _verified_errors(
    candidate: Any,
    cand_thr: Thresholds,
    current: Any,
    cur_thr: Thresholds,
    verified: list[VerifiedClip],
    windows: Any,
) -> dict[str, Any]:
    """Errors of each model on the judged species of the verified clips."""
    err = {"candidate": 0, "installed": 0}
    n = used = 0
    per_species: dict[str, dict[str, int]] = {}
    for clip in verified:
        judged = [
            (code, present)
            for code, present in clip.judgements()
            if code in candidate.labels and code in current.labels
        ]
        if not judged:
            continue
        got = windows(clip.path)
        if got is None:
            continue
        used += 1
        top_new = _clip_scores(candidate, *got).max(0)
        top_old = _clip_scores(current, *got).max(0)
        for code, present in judged:
            n += 1
            new_says = bool(top_new[candidate.labels.index(code)] >= cand_thr.of(code))
            old_says = bool(top_old[current.labels.index(code)] >= cur_thr.of(code))
            row = per_species.setdefault(
                code, {"judgements": 0, "candidate_errors": 0, "installed_errors": 0}
            )
            row["judgements"] += 1
            if new_says != present:
                err["candidate"] += 1
                row["candidate_errors"] += 1
            if old_says != present:
                err["installed"] += 1
                row["installed_errors"] += 1
    return {
        "verified_clips": used,
        "judgements": n,
        "errors": err,
        "per_species": per_species,
        "thresholds": {"candidate": cand_thr.describe(), "installed": cur_thr.describe()},
    }
