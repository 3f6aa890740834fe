"""The thresholds a release carries are the thresholds in use (``edge/thresholds.py``): installed by
the real updater from a signed release, applied by the agent to the real package's scores, shown by
``silencio edge status``, restored by ``rollback``, overridden by an explicit ``thresholds_file``;
and the shadow evaluation refuses a release that is clearly worse on the clips the guide verified
(``edge/shadow.py``), keeping the installed model and recording why.

The package is an untrained tiny student (every score ≈ 0.5): the point is the plumbing around its
real scores — a species scoring ≈ 0.5 is reported at a release threshold of 0.3 and no longer at
0.99, at the same score."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from edge.agent import Agent
from edge.capture import FileSource
from edge.errors import ThresholdsError
from edge.records import GuideVerdict
from edge.store import open_store
from edge.sync import SyncClient
from edge.thresholds import Thresholds, read_thresholds, resolve_thresholds
from edge.updater import check_and_update
from tests.conftest import tiny_edge_package

from .conftest import FlakyTransport, tone_then_silence


def _publish_release(tmp_path, cloud, package, version: str, thresholds: dict[str, float]) -> dict:
    from cloud.service import Cloud
    from cloud.settings import CloudSettings
    from training.release import write_release

    rel = write_release(
        package, tmp_path / f"rel{version}", thresholds=thresholds, default_threshold=0.99, version=version
    )
    return Cloud(CloudSettings(home=cloud["home"]), store=cloud["store"]).publish_release(rel.directory)


def _key(cloud) -> str:
    from cloud.signing import ensure_key

    return ensure_key(cloud["home"])[0].public_key


def _run(agent: Agent, path, code: str) -> tuple[list, float]:
    """Detections of ``code`` in one file, and the highest score the model gave ``code`` there."""
    top = []
    agent.on_window = lambda r, _ev: top.append(float(r.probs[agent.scorer.labels.index(code)]))
    agent.start_tour()
    agent.run(FileSource(path))
    tour = agent.tour_uuid
    agent.end_tour()
    return [d for d in agent.store.detections(tour) if d.species_code == code], max(top)


@pytest.fixture
def device(tmp_path, labels, edge_settings, cloud):
    package = tiny_edge_package(tmp_path / "pkg", labels, version="30", seed=30)
    sf.write(tmp_path / "a.wav", tone_then_silence(6, 6), 32_000)
    store = open_store(edge_settings.db_path)
    client = SyncClient(
        store, "http://testserver", cloud["token"], transport=FlakyTransport(cloud["client"]._transport, 0.0)
    )
    yield {
        "package": package,
        "store": store,
        "client": client,
        "wav": tmp_path / "a.wav",
        "key": _key(cloud),
    }
    client.close()
    store.close()


def test_a_release_threshold_stops_a_species_being_reported_and_rollback_restores_it(
    tmp_path, labels, edge_settings, cloud, device, monkeypatch, capsys
):
    s, store, code = edge_settings, device["store"], labels[3].code
    _publish_release(tmp_path, cloud, device["package"], "31", {code: 0.3})
    res = check_and_update(device["client"], store, s.model_dir, None, release_key=device["key"])
    assert res["updated"] and res["version"] == "31"
    agent = Agent(s, seed=0)
    assert agent.thresholds == Thresholds(0.99, {code: 0.3}, "release 31", "release")
    before, score = _run(agent, device["wav"], code)
    assert before and 0.4 < score < 0.6  # reported at its release threshold 0.3

    # release 32: the same model, the species' threshold raised above its score
    _publish_release(tmp_path, cloud, device["package"], "32", {code: 0.99})
    res = check_and_update(
        device["client"],
        store,
        s.model_dir,
        agent.scorer,
        release_key=device["key"],
        current_thresholds=agent.thresholds,
    )
    assert res["updated"] and res["version"] == "32"
    assert res["shadow"]["judgements"] == 0 and "no verified clips" in res["shadow"]["note"]
    agent = Agent(s, seed=0)
    assert agent.thresholds.species == {code: 0.99} and agent.thresholds.source == "release 32"
    after, score_after = _run(agent, device["wav"], code)
    assert after == [] and score_after == pytest.approx(score, abs=1e-6)  # same score, not reported

    # silencio edge status names the thresholds in use
    from silencio.cli import main

    monkeypatch.setenv("SILENCIO_HOME", str(s.home))
    monkeypatch.setenv("SILENCIO_EDGE_TAXONOMY", str(s.taxonomy))
    assert main(["edge", "status"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["thresholds"] == {
        "default": 0.99,
        "default_source": "release",
        "species_with_own_threshold": 1,
        "source": "release 32",
    }

    # an explicit thresholds file overrides the release's (and --threshold its default)
    (tmp_path / "mine.json").write_text(json.dumps({code: 0.2}))
    over = Agent(s.model_copy(update={"thresholds_file": tmp_path / "mine.json", "threshold": 0.98}), seed=0)
    assert over.thresholds.species == {code: 0.2} and over.thresholds.default == 0.98
    assert over.thresholds.source.startswith("thresholds_file") and _run(over, device["wav"], code)[0]

    # rollback brings release 31's thresholds back with its model
    assert main(["edge", "rollback"]) == 0
    rb = json.loads(capsys.readouterr().out)
    assert rb["active"] == "31" and rb["thresholds"]["source"] == "release 31"
    again, _ = _run(Agent(s, seed=0), device["wav"], code)
    assert again and again[0].confidence == pytest.approx(before[0].confidence)


def test_shadow_evaluation_refuses_a_release_worse_on_verified_clips(
    tmp_path, labels, edge_settings, cloud, device
):
    s = edge_settings.model_copy(update={"detection_clip_rate": 1.0, "clip_format": "FLAC"})
    store, code = device["store"], labels[3].code
    _publish_release(tmp_path, cloud, device["package"], "41", {code: 0.3})
    check_and_update(device["client"], store, s.model_dir, None, release_key=device["key"])
    agent = Agent(s, store=store, seed=0)
    dets = []
    for _ in range(3):  # three recordings: three detections of the species, each with its clip
        dets += _run(agent, device["wav"], code)[0]
    clips = [c for c in store.clips() if c.detection_uuid in {d.uuid for d in dets}]
    assert len({c.detection_uuid for c in clips}) >= 3
    for d in dets:  # the guide confirms them
        store.add_feedback(d.uuid, GuideVerdict.CONFIRMED)
    n = len(store.verified_clips(50))
    assert n == len(clips)

    # a release that would stop reporting the confirmed species: refused, the installed model stays
    files_before = sorted(p.name for p in s.model_dir.iterdir())
    _publish_release(tmp_path, cloud, device["package"], "42", {code: 0.99})
    res = check_and_update(
        device["client"],
        store,
        s.model_dir,
        agent.scorer,
        release_key=device["key"],
        current_thresholds=agent.thresholds,
    )
    assert res["updated"] is False and res["refused"] is True
    sh = res["shadow"]
    assert sh["errors"] == {"candidate": n, "installed": 0} and sh["judgements"] == sh["verified_clips"] == n
    assert sh["per_species"][code]["candidate_errors"] == n
    assert (
        store.active_model().version == "41" and sorted(p.name for p in s.model_dir.iterdir()) == files_before
    )
    refusal = store.update_refusal()
    assert refusal.version == "42" and "errors" in refusal.reason
    assert Agent(s, seed=0).thresholds.source == "release 41"

    # a release as good on the verified clips installs, and the refusal is cleared
    _publish_release(tmp_path, cloud, device["package"], "43", {code: 0.25})
    res = check_and_update(
        device["client"],
        store,
        s.model_dir,
        agent.scorer,
        release_key=device["key"],
        current_thresholds=agent.thresholds,
    )
    assert res["updated"] and res["shadow"]["errors"] == {"candidate": 0, "installed": 0}
    assert store.update_refusal() is None and store.active_model().version == "43"


def test_thresholds_files_are_checked(tmp_path, labels):
    p = tmp_path / "t.json"
    for bad, match in (
        ("{", "not a readable"),
        ("[1]", "expected"),
        (json.dumps({labels[0].code: 1.5}), "outside"),
        (json.dumps({"nosuch": 0.5}), "unknown species"),
    ):
        p.write_text(bad)
        with pytest.raises(ThresholdsError, match=match):
            read_thresholds(p, labels)
    p.write_text(json.dumps({labels[0].code: 0.7}))
    t = resolve_thresholds(
        threshold=0.4, threshold_given=False, thresholds_file=p, model_path=None, labels=labels
    )
    assert t.of(labels[0].code) == 0.7 and t.of(labels[1].code) == 0.4
    v = t.vector(labels)
    assert v.dtype == np.float32 and v[0] == np.float32(0.7) and v[1] == np.float32(0.4)
