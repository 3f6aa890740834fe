"""The closed loop's feedback dataset: every judged clip the cloud store knows, one verdict per clip.

Sources, read through the store's named operations (no SQL here):

* **guides** — the edge's feedback on a detection (``confirmed``, ``wrong_species`` → which,
  ``not_an_animal``), attached to the detection's clip (:meth:`Store.relabel_queue`);
* **reviewers** — the console's verdicts on a clip (:meth:`Store.review_verdicts`: ``accept`` /
  ``relabel`` → a species, ``not_an_animal``; ``skip`` is no verdict);
* **cloud** — the ensemble's confirmations (:meth:`Store.confirmations_since`): agreeing with the
  edge's detection is ``confirmed``, disagreeing is ``wrong_species`` → the ensemble's top species
  (``not_an_animal`` when it named none); a clip without an edge detection is not a verdict.

**The rule for conflicts** (several verdicts on one clip): a reviewer over a guide over the cloud;
within one source the latest wins (reviewers by ``seq``, guides by the time the guide gave it, the
cloud by ``seq``). Every clip whose verdicts disagree is counted, by which rule decided it.

The dataset is versioned by its content: the sha256 of its canonical rows (clip, reported species,
verdict, label, source) — the same verdicts give the same hash, whatever order they arrived in.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cloud.store.interface import ReviewVerdict, Store

VERDICTS = ("confirmed", "wrong_species", "not_an_animal")
SOURCES = ("reviewer", "guide", "cloud")  # priority order: the first wins
NOT_AN_ANIMAL = "not an animal"


@dataclass(frozen=True)
class Vote:
    """One verdict on one clip from one source; ``order`` sorts verdicts of a source by time."""

    clip_uuid: str
    source: str
    verdict: str
    correct_code: str | None
    order: tuple[str, int]


@dataclass(frozen=True)
class FeedbackRow:
    """The resolved verdict on one clip: the edge's reported species (None for a clip without a
    detection), the verdict, the species it really was (``wrong_species``), which source decided,
    how many verdicts there were, and whether they disagreed."""

    clip_uuid: str
    path: str
    reported: str | None
    verdict: str
    correct_code: str | None
    source: str
    votes: int
    conflict: str | None

    @property
    def label(self) -> str | None:
        """The species in the clip (None: not an animal)."""
        if self.verdict == "not_an_animal":
            return None
        if self.verdict == "wrong_species":
            return self.correct_code
        return self.reported

    def key(self) -> tuple[str, ...]:
        return (self.clip_uuid, self.reported or "", self.verdict, self.correct_code or "", self.source)


@dataclass(frozen=True)
class Cursor:
    """How far the store's verdict streams were read: the highest reviewer-verdict and
    confirmation ``seq`` and the number of guide feedback rows."""

    review_seq: int = 0
    confirmation_seq: int = 0
    guide_rows: int = 0


@dataclass(frozen=True)
class FeedbackDataset:
    rows: tuple[FeedbackRow, ...]
    sha256: str
    cursor: Cursor
    counts: dict[str, dict[str, int]]  # species (label, or "not an animal") → verdict → clips
    by_source: dict[str, int]
    conflicts: dict[str, int]  # rule that decided → clips
    skipped: dict[str, int] = field(default_factory=dict)  # why → verdicts not used

    @property
    def name(self) -> str:
        return f"feedback-{self.sha256[:12]}"

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "clips": len(self.rows),
            "cursor": asdict(self.cursor),
            "verdicts": dict(Counter(r.verdict for r in self.rows)),
            "by_source": self.by_source,
            "conflicts": self.conflicts,
            "skipped": self.skipped,
            "per_species": self.counts,
            "rule": "reviewer over guide over cloud; within a source the latest wins",
        }

    def write(self, directory: Path) -> tuple[Path, Path]:
        """``<name>.csv`` (one row per clip) and ``<name>.json`` (counts, cursor, rule)."""
        directory.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = directory / f"{self.name}.csv", directory / f"{self.name}.json"
        with open(csv_path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(
                ["clip_uuid", "path", "reported", "verdict", "correct_code", "label", "source", "votes"]
            )
            for r in self.rows:
                w.writerow(
                    [
                        r.clip_uuid,
                        r.path,
                        r.reported or "",
                        r.verdict,
                        r.correct_code or "",
                        r.label or "",
                        r.source,
                        r.votes,
                    ]
                )
        json_path.write_text(json.dumps(self.summary(), indent=2, sort_keys=True))
        return csv_path, json_path


def _review_vote(verdict: ReviewVerdict, code: str | None, reported: str | None) -> tuple[str, str | None]:
    if verdict is ReviewVerdict.NOT_AN_ANIMAL:
        return "not_an_animal", None
    if code == reported:
        return "confirmed", None
    return "wrong_species", code


def collect(store: Store, *, use_cloud: bool = True) -> FeedbackDataset:
    """Every judged clip of ``store`` with one verdict each (the rule of the module docstring)."""
    votes: list[Vote] = []
    paths: dict[str, str] = {}
    reported: dict[str, str | None] = {}
    skipped: Counter[str] = Counter()
    guide = store.relabel_queue(include_exported=True)
    for g in guide:
        if g.clip_uuid is None or not g.clip_path:
            skipped["guide verdict without a clip"] += 1
            continue
        paths[g.clip_uuid] = g.clip_path
        reported[g.clip_uuid] = g.edge_species
        t = g.created_at.isoformat()
        votes.append(Vote(g.clip_uuid, "guide", g.kind, g.correct_code, (t, 0)))
    reviews = store.review_verdicts(0)
    for rv in reviews:
        if rv.verdict is ReviewVerdict.SKIP:
            continue
        if rv.clip_uuid not in paths:
            clip = store.clip(rv.clip_uuid)
            if clip is None:
                skipped["reviewer verdict on an unknown clip"] += 1
                continue
            paths[rv.clip_uuid] = clip.path
            rep = None
            if clip.detection_uuid is not None:
                det = store.detection(clip.device_id, clip.detection_uuid)
                rep = det.species_code if det is not None else None
            reported[rv.clip_uuid] = rep
        verdict, code = _review_vote(rv.verdict, rv.species_code, reported[rv.clip_uuid])
        votes.append(Vote(rv.clip_uuid, "reviewer", verdict, code, ("", rv.seq)))
    conf_seq = 0
    if use_cloud:
        for dev in store.devices():
            since = 0
            while True:
                page = store.confirmations_since(dev.id, since, limit=500)
                if not page:
                    break
                for c in page:
                    since = max(since, c.seq)
                    conf_seq = max(conf_seq, c.seq)
                    if c.agree is None or c.edge_species is None:
                        continue  # no edge detection on the clip: nothing to confirm or correct
                    if c.clip_uuid not in paths:
                        clip = store.clip(c.clip_uuid)
                        if clip is None:
                            continue
                        paths[c.clip_uuid] = clip.path
                        reported[c.clip_uuid] = c.edge_species
                    top = str(c.species[0]["code"]) if c.species else None
                    if c.agree:
                        votes.append(Vote(c.clip_uuid, "cloud", "confirmed", None, ("", c.seq)))
                    elif top is None:
                        votes.append(Vote(c.clip_uuid, "cloud", "not_an_animal", None, ("", c.seq)))
                    else:
                        votes.append(Vote(c.clip_uuid, "cloud", "wrong_species", top, ("", c.seq)))
    rows, conflicts = resolve(votes, paths, reported)
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        sp = r.label or NOT_AN_ANIMAL
        counts.setdefault(sp, {}).setdefault(r.verdict, 0)
        counts[sp][r.verdict] += 1
    digest = hashlib.sha256()
    for r in rows:
        digest.update(("\x1f".join(r.key()) + "\n").encode())
    cursor = Cursor(
        review_seq=max((r.seq for r in reviews), default=0), confirmation_seq=conf_seq, guide_rows=len(guide)
    )
    return FeedbackDataset(
        rows=tuple(rows),
        sha256=digest.hexdigest(),
        cursor=cursor,
        counts=dict(sorted(counts.items())),
        by_source=dict(Counter(r.source for r in rows)),
        conflicts=dict(conflicts),
        skipped=dict(skipped),
    )


def resolve(
    votes: Iterable[Vote], paths: dict[str, str], reported: dict[str, str | None]
) -> tuple[list[FeedbackRow], Counter[str]]:
    """One row per clip (sorted by clip UUID): the winning verdict and the conflicts counted."""
    per_clip: dict[str, list[Vote]] = {}
    for v in votes:
        if v.verdict not in VERDICTS:
            continue
        per_clip.setdefault(v.clip_uuid, []).append(v)
    rows: list[FeedbackRow] = []
    conflicts: Counter[str] = Counter()
    for uuid in sorted(per_clip):
        vs = per_clip[uuid]
        latest = {}
        for src in SOURCES:
            mine = sorted((v for v in vs if v.source == src), key=lambda v: v.order)
            if mine:
                latest[src] = mine[-1]
                if len({(v.verdict, v.correct_code) for v in mine}) > 1:
                    conflicts[f"{src}: latest wins"] += 1
        win_src = next(s for s in SOURCES if s in latest)
        win = latest[win_src]
        losers = {
            s
            for s, v in latest.items()
            if s != win_src and (v.verdict, v.correct_code) != (win.verdict, win.correct_code)
        }
        for s in sorted(losers):
            conflicts[f"{win_src} over {s}"] += 1
        rows.append(
            FeedbackRow(
                clip_uuid=uuid,
                path=paths[uuid],
                reported=reported.get(uuid),
                verdict=win.verdict,
                correct_code=win.correct_code if win.verdict == "wrong_species" else None,
                source=win_src,
                votes=len(vs),
                conflict=", ".join(f"{win_src} over {s}" for s in sorted(losers)) or None,
            )
        )
    return rows, conflicts
