"""Train / validation / test splits of BirdCLEF recordings.

**Grouped**: the unit is the recording's catalogue id (``XC123``), so a recording listed under
several species folders never lands in two splits.

**Stratified** by the group's primary label (the most frequent primary label of its rows, ties
broken by the rarer species). Per species with ``n`` groups, shuffled with the seed:

* ``n = 1``: train only (nothing can be validated on it);
* ``n = 2``: one train, one validation;
* ``n = 3``: two train, one validation;
* ``n ≥ 4``: ``max(1, round(n·val))`` validation, ``max(1, round(n·test))`` test, the rest train.

**Time-ordered** (the re-training scenario): within each collection (XC, iNat, CSA, other)
recordings are ordered by catalogue number, the proxy for recording date; the first
``initial_fraction`` form the "initial" split, the rest the "new" one.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from training.dataset import Recording

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitConfig:
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0


def _group_label(rows: Sequence[Recording], freq: Counter[str]) -> str:
    c = Counter(r.primary_label for r in rows)
    best = max(c.values())
    return min((lab for lab, k in c.items() if k == best), key=lambda lab: (freq[lab], lab))


def stratified_group_split(recordings: Sequence[Recording], cfg: SplitConfig = SplitConfig()) -> list[str]:
    """The split name of every recording (same order as ``recordings``)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(recordings):
        groups[r.catalogue_id].append(i)
    freq = Counter(r.primary_label for r in recordings)
    by_label: dict[str, list[str]] = defaultdict(list)
    for gid, idx in groups.items():
        by_label[_group_label([recordings[i] for i in idx], freq)].append(gid)
    rng = np.random.default_rng(cfg.seed)
    assignment: dict[str, str] = {}
    for label in sorted(by_label):
        gids = sorted(by_label[label])
        rng.shuffle(gids)
        n = len(gids)
        if n == 1:
            n_val, n_test = 0, 0
        elif n <= 3:
            n_val, n_test = 1, 0
        else:
            n_val = max(1, round(n * cfg.val_fraction))
            n_test = max(1, round(n * cfg.test_fraction))
        for j, gid in enumerate(gids):
            assignment[gid] = "val" if j < n_val else "test" if j < n_val + n_test else "train"
    return [assignment[r.catalogue_id] for r in recordings]


def time_ordered_split(recordings: Sequence[Recording], initial_fraction: float = 0.7) -> list[str]:
    """``"initial"`` or ``"new"`` per recording, by catalogue number within each collection."""
    by_coll: dict[str, list[tuple[int, str]]] = defaultdict(list)
    seen: dict[str, tuple[str, int]] = {}
    for r in recordings:
        gid = r.catalogue_id
        if gid in seen:
            continue
        num = r.catalogue_number
        coll = r.collection or "other"
        seen[gid] = (coll, num if num is not None else -1)
    for gid, (coll, num) in seen.items():
        by_coll[coll].append((num, gid))
    assignment: dict[str, str] = {}
    for _coll, items in by_coll.items():
        items.sort()
        cut = int(round(len(items) * initial_fraction))
        for j, (_num, gid) in enumerate(items):
            assignment[gid] = "initial" if j < cut else "new"
    return [assignment[r.catalogue_id] for r in recordings]


def split_summary(recordings: Sequence[Recording], splits: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per split: recordings and distinct species."""
    out: dict[str, dict[str, int]] = {}
    for name in sorted(set(splits)):
        rows = [r for r, s in zip(recordings, splits) if s == name]
        out[name] = {"recordings": len(rows), "species": len({r.primary_label for r in rows})}
    return out
