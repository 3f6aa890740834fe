"""The demo's closed-loop step (``silencio demo``, step 11), after the first tour was synced:

1. **The guide's next tours**: fresh synthetic field soundscapes
   (:func:`training.synth.field_soundscapes`: the dataset's species drawn from their own seed, so
   they are in neither the training data nor the gate's frozen held-out soundscapes) are replayed
   on the device with every window a clip candidate (``random_clip_rate`` 1);
2. **scripted guide verdicts** from their synthetic truth, through the agent's feedback operation
   (the TUI's): a detection whose species calls during it is ``confirmed``; one that names a
   species not calling there is ``wrong_species`` → the species calling longest during it, or
   ``not_an_animal`` when no species calls there; the device syncs them with their clips;
3. **one loop run** (:func:`cloud.loop.run_loop`, what ``silencio loop run`` does) on guides'
   verdicts only (the ensemble's confirmations are left out, so every label comes from the truth);
4. the device checks for an update with the real updater (:func:`edge.updater.check_and_update`:
   signature, sha256, shadow evaluation on its stored clips) and installs a promoted release;
5. it replays the held-out soundscape of step 9 again and syncs; before / after per corrected
   species: detections right and wrong against the soundscape's truth.

A refusal by the gate is an outcome, not an error: the demo says why and goes on. On a second run
the verdicts are there already (``loop_step.json``), so the loop run has nothing new and changes
nothing; the release the loop promoted is made current again (step 8 published the first one) and
the device installs it, so the after figures are shown again.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: fresh field soundscapes (60 s each) replayed for the guide's verdicts
FIELD_SOUNDSCAPES = 6
FIELD_SOUNDSCAPES_QUICK = 4
#: re-training epochs from production (the loop's own default: 5)
LOOP_EPOCHS = 5
LOOP_EPOCHS_QUICK = 3
#: an event and a detection overlap when they share this many seconds (the truth rule of
#: :mod:`training.synth`)
MIN_OVERLAP_S = 0.5
STEP = 11
RECORD = "loop_step.json"


@dataclass(frozen=True)
class EdgeRun:
    """What step 9 leaves for this step: the device's settings, the replayed held-out soundscape
    and its tour."""

    settings: Any
    scape: Path
    tour: str


def read_events(path: Path) -> dict[str, list[tuple[str, float, float]]]:
    """``soundscape_events.csv``-style truth: soundscape name → [(species, start s, end s)]."""
    out: dict[str, list[tuple[str, float, float]]] = {}
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            out.setdefault(r["soundscape"], []).append(
                (r["primary_label"], float(r["start"]), float(r["end"]))
            )
    return out


def calling(events: list[tuple[str, float, float]], a: float, b: float) -> dict[str, float]:
    """Species calling during ``[a, b]`` (seconds of the recording) → seconds of overlap."""
    out: dict[str, float] = {}
    for code, s, e in events:
        ov = min(b, e) - max(a, s)
        if ov >= MIN_OVERLAP_S:
            out[code] = out.get(code, 0.0) + ov
    return out


def verdict(reported: str, during: dict[str, float]) -> tuple[str, str | None]:
    """The scripted guide's verdict on a detection of ``reported`` (see the module docstring)."""
    if reported in during:
        return "confirmed", None
    if during:
        return "wrong_species", max(sorted(during), key=lambda c: during[c])
    return "not_an_animal", None


def right_wrong(detections: list[Any], events: list[tuple[str, float, float]]) -> dict[str, dict[str, int]]:
    """Per species: detections whose species calls during them (right) and those it does not (wrong)."""
    out: dict[str, dict[str, int]] = {}
    for d in detections:
        ok = d.species_code in calling(events, d.offset_start, d.offset_end)
        c = out.setdefault(d.species_code, {"right": 0, "wrong": 0})
        c["right" if ok else "wrong"] += 1
    return out


def loop_step(
    args: argparse.Namespace,
    data: Path,
    work: Path,
    url: str,
    tokens: dict[str, str],
    edge: EdgeRun,
    student: Path,
    release: Path,
    summary: dict[str, Any],
) -> None:
    from silencio.demo import _step, ticking

    t0 = time.monotonic()
    if args.data is not None or not (data / "synth_config.json").exists():
        _step(
            STEP, "the closed loop: skipped (a real dataset has no truth to script a guide's verdicts from)"
        )
        summary["loop"] = {"status": "skipped", "why": "no synthetic truth for scripted verdicts"}
        return
    n = FIELD_SOUNDSCAPES_QUICK if args.quick else FIELD_SOUNDSCAPES
    _step(
        STEP,
        f"the closed loop: a guide judges the detections of {n} fresh field soundscapes; silencio loop run; "
        "the device updates and replays the held-out soundscape again",
    )
    from cloud.loop import PRODUCTION_FILE, LoopConfig, loop_dir, read_state, run_loop
    from cloud.signing import load_key
    from edge.detector import PackageScorer
    from edge.store import open_store
    from edge.sync import SyncClient
    from edge.updater import check_and_update
    from shared_features import LabelSpace

    chome = work / "cloud_home"
    record_path = work / RECORD
    record: dict[str, Any] = json.loads(record_path.read_text()) if record_path.exists() else {}
    s = edge.settings
    store = open_store(s.db_path)
    client = SyncClient(store, url, tokens["device"], timeout=60)
    labels = LabelSpace.from_dict(
        json.loads((Path(store.active_model().path) / "package.json").read_text())["labels"]
    )
    entry: dict[str, Any] = {}
    try:
        # ------------------------------------------------------------ 1-2. field tours and verdicts
        if record.get("verdicts"):
            print(
                f"      reusing the guide's verdicts of the first run ({record['judged_detections']} "
                f"detections judged on {record['verdicts_from']})",
                flush=True,
            )
            entry.update(
                {k: record[k] for k in ("verdicts_from", "verdicts", "judged_detections", "corrected")}
            )
        else:
            entry.update(_field_verdicts(args, data, work, s, store, n))
            with ticking("syncing the field tours (detections, verdicts, every window's clip)"):
                rep = client.run()
            print(
                f"      sync: {rep.detections} detections, {rep.feedback} verdicts, {rep.clips} clips",
                flush=True,
            )
            record = dict(entry)
            record_path.write_text(json.dumps(record, indent=2))
        # ------------------------------------------------------------ 3. one loop run
        cfg = LoopConfig(
            data_dir=data,
            student=student,
            production_release=release,
            epochs=args.epochs or (LOOP_EPOCHS_QUICK if args.quick else LOOP_EPOCHS),
            seed=args.seed,
            formats=("onnx-fp32",) if args.quick else ("onnx-fp32", "onnx-int8"),
            use_cloud_confirmations=False,
            split_by="audio",  # the same split on every run: the device draws random clip UUIDs
        )
        with ticking("silencio loop run: collect, re-train from production, export, fit thresholds, gate"):
            res = run_loop(cfg, home=chome)
        said = res.message if res.message.startswith(f"{res.status}:") else f"{res.status}: {res.message}"
        print(f"      loop: {said} ({res.seconds:.0f} s)", flush=True)
        state = read_state(chome)
        entry["status"] = res.status
        entry["message"] = res.message
        entry["loop_seconds"] = round(res.seconds, 1)
        if res.status in ("promoted", "refused"):
            d = res.dataset or {}
            print(
                f"      feedback dataset {d.get('name')}: {d.get('clips')} judged clips, verdicts "
                f"{d.get('verdicts')}; {res.figures.get('train_clips')} trained on, "
                f"{res.figures.get('calibration_clips')} fitted the thresholds, "
                f"{res.figures.get('held_back_clips')} held back for the gate",
                flush=True,
            )
            dec = res.decision or {}
            entry["outcome"] = res.status
            entry["gate"] = {
                "promoted": dec.get("promoted"),
                "reason": dec.get("reason"),
                "refusals": dec.get("refusals"),
                "candidate": dec.get("candidate"),
                "production": dec.get("production"),
            }
            entry["feedback_dataset"] = {k: d.get(k) for k in ("name", "clips", "verdicts", "per_species")}
            entry["thresholds"] = res.figures.get("thresholds")
            entry["release"] = res.release["version"] if res.release else None
            entry["report"] = str(res.report) if res.report else None
            record.update({k: entry[k] for k in ("outcome", "gate", "release", "report", "feedback_dataset")})
            record_path.write_text(json.dumps(record, indent=2))
        else:  # nothing new: the last run's outcome stands
            for k in ("outcome", "gate", "release", "report", "feedback_dataset"):
                entry[k] = record.get(k)
            entry["report"] = entry.get("report") or state.get("last_report")
        _say_gate(entry)
        # ------------------------------------------------------------ 4. the device's update
        # a release to install: this run's promotion, or (nothing new) the one an earlier run promoted
        prod_file = loop_dir(chome) / PRODUCTION_FILE
        version = None
        if res.status == "promoted" and res.release:
            version = str(res.release["version"])
        elif res.status == "nothing_new" and entry.get("outcome") == "promoted" and prod_file.exists():
            version = json.loads(prod_file.read_text())["current"].get("release_version")
        before_model = store.active_model()
        updated = False
        if version is not None:
            if res.status == "nothing_new":  # step 8 made the first release current again
                from cloud.settings import CloudSettings
                from cloud.store import open_store as open_cloud_store

                cs = open_cloud_store(CloudSettings(home=chome))
                try:
                    cs.set_current_release(str(version))
                finally:
                    cs.close()
                print(f"      release {version} (the loop's production) is current again", flush=True)
            key = load_key(chome)
            upd = check_and_update(
                client,
                store,
                s.model_dir,
                PackageScorer(Path(before_model.path)),
                release_key=key.public_key if key else None,
            )
            updated = bool(upd["updated"])
            print(
                "      model update: "
                + (
                    f"installed {upd['version']} (shadow evaluation on the device's clips passed)"
                    if updated
                    else f"not installed — {upd['reason']}"
                ),
                flush=True,
            )
            entry["device_update"] = {k: upd.get(k) for k in ("updated", "version", "reason")}
        else:
            print("      no new release from the loop: the device keeps its model", flush=True)
            entry["device_update"] = {"updated": False, "reason": "no release promoted"}
        # ------------------------------------------------------------ 5. replay, before / after
        events = read_events(data / "soundscape_events.csv").get(edge.scape.stem, [])
        before = right_wrong(store.detections(edge.tour), events)
        after = before
        if updated:
            after_tour = _replay(s, store, edge.scape, ticking)
            after = right_wrong(store.detections(after_tour), events)
            with ticking("syncing the second replay"):
                rep = client.run()
            print(f"      sync: {rep.detections} detections, {rep.clips} clips", flush=True)
        entry["replayed"] = edge.scape.name
        entry["species"] = _before_after(entry, before, after, labels, edge.scape.name, updated)
    finally:
        client.close()
        store.close()
    entry["seconds"] = round(time.monotonic() - t0, 1)
    print(f"      step 11 took {entry['seconds']:.0f} s", flush=True)
    summary["loop"] = entry


def _field_verdicts(
    args: argparse.Namespace, data: Path, work: Path, s: Any, store: Any, n: int
) -> dict[str, Any]:
    """Replay ``n`` fresh field soundscapes (every window a clip candidate) and judge every detection
    from their truth through the agent's feedback operation; returns what was judged."""
    from edge.agent import Agent
    from edge.capture import FileSource
    from edge.detector import PackageScorer
    from silencio.demo import ticking
    from training.synth import field_soundscapes

    files, events_csv = field_soundscapes(data, work / "field", n, args.seed)
    where = (
        f"{n} field soundscapes {files[0].stem}…{files[-1].stem} (synthetic, seed {args.seed}; neither "
        "in the training data nor in the held-out set)"
    )
    print(f"      audio for the verdicts: {where} → {work / 'field'}", flush=True)
    field = s.model_copy(update={"random_clip_rate": 1.0})
    agent = Agent(field, store=store, scorer=PackageScorer(Path(store.active_model().path)), seed=args.seed)
    tour = agent.start_tour()
    with ticking(f"replaying {n} field soundscapes"):
        for f in files:
            agent.run(FileSource(f))
    agent.end_tour()
    truth = read_events(events_csv)
    counts: Counter[str] = Counter()
    corrected: set[str] = set()
    judged = 0
    for d in store.detections(tour):
        rec = store.recording(d.recording_uuid) if d.recording_uuid else None
        if rec is None:
            continue
        kind, correct = verdict(
            d.species_code, calling(truth.get(Path(rec.source).stem, []), d.offset_start, d.offset_end)
        )
        agent.feedback(d.uuid, kind, correct)
        counts[kind] += 1
        if kind != "confirmed":
            corrected |= {d.species_code, *([correct] if correct else [])}
        judged += 1
    print(
        f"      the guide judged {judged} detections from the truth: {counts['confirmed']} confirmed, "
        f"{counts['wrong_species']} wrong species (→ the species calling), "
        f"{counts['not_an_animal']} not an animal",
        flush=True,
    )
    return {
        "verdicts_from": where,
        "verdicts": dict(sorted(counts.items())),
        "judged_detections": judged,
        "corrected": sorted(corrected),
    }


def _replay(s: Any, store: Any, scape: Path, ticking: Any) -> str:
    from edge.agent import Agent
    from edge.capture import FileSource
    from edge.detector import PackageScorer

    agent = Agent(s, store=store, scorer=PackageScorer(Path(store.active_model().path)), seed=0)
    tour = agent.start_tour()
    with ticking(f"replaying {scape.name} with the new model"):
        agent.run(FileSource(scape))
    agent.end_tour()
    return str(tour)


def _say_gate(entry: dict[str, Any]) -> None:
    gate = entry.get("gate") or {}
    if not gate:
        return
    cand, prod = gate.get("candidate") or {}, gate.get("production") or {}
    if cand and prod:
        print(
            f"      gate: held-out macro ROC-AUC {cand['heldout_macro_roc_auc']:.4f} (production "
            f"{prod['heldout_macro_roc_auc']:.4f}); flagged errors repeated on the held-back clips "
            f"{cand['flagged_repeated']} of {cand['flagged']} (production {prod['flagged_repeated']})",
            flush=True,
        )
    if not gate.get("promoted"):
        for r in gate.get("refusals") or []:
            print(f"      refused ({r['kind']}): {r['message']}", flush=True)
        print(
            "      production stays; the demo goes on (a refusal is one of the loop's outcomes)", flush=True
        )
    if entry.get("report"):
        print(f"      loop report: {entry['report']}", flush=True)


def _before_after(
    entry: dict[str, Any],
    before: dict[str, dict[str, int]],
    after: dict[str, dict[str, int]],
    labels: Any,
    scape: str,
    updated: bool,
) -> list[dict[str, Any]]:
    """Per corrected species (named by a flagged verdict: reported, or the species it was), the
    replay's detections right / wrong before and after; printed and returned."""
    corrected = set(entry.get("corrected") or ()) & set(labels.codes)
    title = "after the update" if updated else "no update installed, so after = before"
    print(
        f"      {scape} (held out), detections right / wrong against its truth — before → {title}:",
        flush=True,
    )
    rows = []
    for code in sorted(corrected):
        sp = labels[code]
        b, a = before.get(code, {"right": 0, "wrong": 0}), after.get(code, {"right": 0, "wrong": 0})
        print(
            f"        {code:9s} {sp.common_name} ({sp.scientific_name}, {sp.taxon_class}): "
            f"right {b['right']} → {a['right']}, wrong {b['wrong']} → {a['wrong']}",
            flush=True,
        )
        rows.append(
            {
                "code": code,
                "scientific_name": sp.scientific_name,
                "common_name": sp.common_name,
                "taxon_class": sp.taxon_class,
                "before": b,
                "after": a,
            }
        )
    if not rows:
        print("        (no species was corrected)", flush=True)
    tb = {k: sum(v[k] for v in before.values()) for k in ("right", "wrong")}
    ta = {k: sum(v[k] for v in after.values()) for k in ("right", "wrong")}
    print(
        f"        all species: right {tb['right']} → {ta['right']}, wrong {tb['wrong']} → {ta['wrong']}",
        flush=True,
    )
    entry["all_species"] = {"before": tb, "after": ta}
    return rows
