"""Model updates from the cloud's release: verified download, shadow evaluation against the
installed model on stored clips, atomic switch, rollback, and refusal of a corrupted download."""

from __future__ import annotations

import pytest
import soundfile as sf

from edge.agent import Agent
from edge.capture import FileSource
from edge.errors import UpdateError
from edge.sync import SyncClient
from edge.updater import check_and_update, rollback
from tests.conftest import tiny_edge_package

from .conftest import FakeScorer, FlakyTransport, tone_then_silence


def _release(tmp_path, labels, cloud, version):
    from cloud.service import Cloud
    from cloud.settings import CloudSettings

    package = tiny_edge_package(tmp_path / f"edge{version}", labels, version=version, seed=int(version))
    return Cloud(CloudSettings(home=cloud["home"])).publish_release(package)


def test_update_shadow_switch_rollback_and_corruption(tmp_path, labels, edge_settings, cloud):
    s = edge_settings.model_copy(update={"random_clip_rate": 1.0})
    agent = Agent(s, scorer=FakeScorer(labels), seed=0)  # the installed model: a fake one
    agent.start_tour()
    sf.write(tmp_path / "a.wav", tone_then_silence(6, 6), 32_000)
    agent.run(FileSource(tmp_path / "a.wav"))
    client = SyncClient(
        agent.store,
        "http://testserver",
        cloud["token"],
        transport=FlakyTransport(cloud["client"]._transport, 0.0),
    )
    info = _release(tmp_path, labels, cloud, "1")
    res = check_and_update(client, agent.store, s.model_dir, agent.scorer)
    assert res["updated"] and res["version"] == "1"
    assert res["shadow"]["windows"] >= 3 and 0 <= res["shadow"]["top1_agreement"] <= 1
    assert agent.store.active_model().sha256 == info["sha256"]
    # a new agent runs the installed package (ONNX), not BirdNET
    a2 = Agent(s, seed=0)
    assert "onnx" in a2.scorer.description and a2.scorer.version.endswith(" 1")
    assert check_and_update(client, agent.store, s.model_dir, a2.scorer)["updated"] is False
    _release(tmp_path, labels, cloud, "2")
    assert check_and_update(client, agent.store, s.model_dir, a2.scorer)["version"] == "2"
    assert rollback(agent.store) == {"active": "1", "was": "2"}
    assert Agent(s, seed=0).scorer.version.endswith(" 1")
    # a corrupted download is refused and the active model stays
    _release(tmp_path, labels, cloud, "3")
    rel = cloud["store"].current_release()
    blob = bytearray(open(rel.path, "rb").read())
    blob[len(blob) // 2] ^= 0xFF
    open(rel.path, "wb").write(bytes(blob))
    with pytest.raises(UpdateError, match="sha256"):
        check_and_update(client, agent.store, s.model_dir, a2.scorer)
    assert agent.store.active_model().version == "1"
