"""Every page and action of the console, in-process (Starlette's TestClient on the plain ASGI app):
what each shows, what each action stores, and how bad input is answered."""

from __future__ import annotations

import csv
import io
import re
from html import unescape

from cloud.store import DetectionStatus, ReviewVerdict
from tests.console.conftest import login

SP = {  # code → what every user-facing name must show
    "grekis": ("Pitangus sulphuratus", "Great Kiskadee", "Aves"),
    "amekes": ("Falco sparverius", "American Kestrel", "Aves"),
}


def text(html: str) -> str:
    return unescape(re.sub(r"<[^>]+>", " ", html))


def named(html: str, code: str) -> bool:
    """The page names the species by code, scientific name, common name and taxon class."""
    from shared_features import LabelSpace

    s = LabelSpace.default()[code]
    one = re.sub(r"\s+", " ", text(html))
    return f"{s.code} {s.scientific_name} {s.common_name} {s.taxon_class}" in one


def test_overview(client, world):
    login(client, world.tokens["ana"])
    html = client.get("/console/").text
    t = re.sub(r"\s+", " ", text(html))
    assert (
        "2 tours" in t
        and "6 detections" in t
        and "5 clips synced" in t
        and "4 clips confirmed by the cloud" in t
    )
    assert "5 clips waiting for review" in t
    assert "25% edge/cloud disagreement (4 compared)" in t  # 1 of 4 compared disagreed
    # tours per day and week, and the disagreement plot, as server-rendered SVG
    assert html.count('<svg class="chart"') == 3 and "Tours per week" in html and "2026-W11" in html
    assert "<title>2026-03-14: 25%</title>" in html
    # species by taxon class: heard / confirmed / rejected
    aves = re.search(r"cls-aves\">Aves</span></th>(.*?)</tr>", html, re.S).group(1)
    # heard rutjac1, grekis, bobfly1, compau; confirmed rutjac1, compau (cloud); rejected only: grekis
    # (cloud disagreed), bobfly1 (the guide overrode the cloud)
    assert [int(x) for x in re.findall(r">(\d+)<", aves)][:4] == [146, 4, 2, 2]
    # the device and what it reported
    row = re.search(r"guide-device(.*?)</tr>", html, re.S).group(1)
    assert "student 2" in row and "app 0.3.0" in row and "3 / 1" in row and ">42<" in row and ">7<" in row
    assert "12.0 GB free" in row and '<td>2 <span class="badge ok">current' in row  # runs release 2


def test_review_queue_shows_the_most_valuable_clip_first(client, world):
    login(client, world.tokens["ana"])
    html = client.get("/console/review").text
    assert "5 clips waiting" in text(html)
    first = world.clips["disagree"]
    assert f'data-clip="{first}"' in html and "edge/cloud disagree" in html
    assert f'src="/console/clips/{first}/spectrogram.png"' in html and 'alt="Log-mel spectrogram' in html
    assert f'aria-labelledby="player-label" src="/console/clips/{first}/audio">' in html
    edge = html[html.index('id="edge-top"') : html.index('id="cloud-top"')]
    cloud = html[html.index('id="cloud-top"') : html.index('id="guide-says"')]
    assert named(edge, "grekis") and named(edge, "amekes") and named(edge, "rutjac1") and "0.62" in edge
    assert (
        named(cloud, "amekes") and "0.81" in cloud and "disagrees" in cloud and "silencio-ensemble 4" in cloud
    )
    # accept choices: the edge's detection first, then the shown top-3s, each once, keys 1..n
    choices = re.findall(r'name="species_code" value="([^"]+)" data-key="(\d)"', html)
    assert choices == [("grekis", "1"), ("amekes", "2"), ("rutjac1", "3"), ("bobfly1", "4")]
    # the relabel picker lists every species of the label space with its full name
    picker = html[html.index('id="relabel-species"') :]
    assert picker.count("<option") >= 206 and "yeofly1 — Tolmomyias sulphurescens" in picker
    for label in (
        'for="relabel-search"',
        'for="relabel-species"',
        'id="player-label"',
        "<legend>Species in the clip",
    ):
        assert label in html
    # the next ones: guide flag, uncertain, uncertain, random
    nxt = html[html.index("Next in the queue") :]
    assert (
        nxt.index(world.clips["flagged"])
        < nxt.index(world.clips["uncertain"])
        < nxt.index(world.clips["random"])
    )


def test_a_flagged_clip_shows_the_guides_verdict(client, world):
    login(client, world.tokens["ana"])
    html = client.get(f"/console/review/{world.clips['flagged']}").text
    guide = html[html.index('id="guide-says"') :]
    assert "wrong species, it is" in guide and named(guide, "yeofly1") and "yellow-olive flycatcher" in guide


def test_queue_filters(client, world):
    login(client, world.tokens["ana"])

    def shown(query: str) -> list[str]:
        html = client.get(f"/console/review?{query}").text
        return re.findall(r'data-clip="([^"]+)"', html) + re.findall(
            r'href="/console/review/([0-9a-f-]{36})', html
        )

    assert shown("species=compau") == [world.clips["uncertain"]]
    assert set(shown("species=amekes")) == {world.clips["disagree"]}  # the cloud's top species
    assert set(shown("reason=flagged")) == {world.clips["flagged"]}
    assert shown("device=nobody") == []
    assert set(shown("since=2026-03-14&until=2026-03-14")) == set(world.clips.values())
    assert shown("since=2026-03-15") == []
    html = client.get("/console/review?species=compau").text
    assert '<option value="compau" selected>' in html and "1 clip waiting" in text(html)
    for bad in ("species=zzz", "reason=loud", "since=yesterday", "offset=-1"):
        r = client.get(f"/console/review?{bad}")
        assert r.status_code == 422 and "error" in r.text, bad


def test_verdicts_are_stored_with_reviewer_and_time(client, world):
    csrf = login(client, world.tokens["ana"])
    c = world.clips
    r = client.post(
        f"/console/review/{c['disagree']}",
        data={
            "csrf": csrf,
            "verdict": "relabel",
            "species_code": "amekes",
            "next": "/console/review?reason=disagreement",
        },
    )
    assert r.status_code == 303 and r.headers["location"].startswith(
        "/console/review?reason=disagreement&saved="
    )
    r = client.post(
        f"/console/review/{c['flagged']}", data={"csrf": csrf, "verdict": "accept", "species_code": "yeofly1"}
    )
    assert r.status_code == 303  # another of the shown top-3
    client.post(
        f"/console/review/{c['uncertain']}", data={"csrf": csrf, "verdict": "accept"}
    )  # default: the edge's
    client.post(
        f"/console/review/{c['random']}", data={"csrf": csrf, "verdict": "not_an_animal", "species_code": "x"}
    )
    client.post(f"/console/review/{c['confident']}", data={"csrf": csrf, "verdict": "skip"})
    got = [(v.clip_uuid, v.reviewer, v.verdict, v.species_code) for v in world.store.review_verdicts()]
    assert got == [
        (c["disagree"], "ana", ReviewVerdict.RELABEL, "amekes"),
        (c["flagged"], "ana", ReviewVerdict.ACCEPT, "yeofly1"),
        (c["uncertain"], "ana", ReviewVerdict.ACCEPT, "compau"),
        (c["random"], "ana", ReviewVerdict.NOT_AN_ANIMAL, None),
        (c["confident"], "ana", ReviewVerdict.SKIP, None),
    ]
    assert all(v.created_at.tzinfo is not None for v in world.store.review_verdicts())
    # the flash after a verdict, and the queue moved on (only the skipped clip is left)
    seq = world.store.review_verdicts()[-1].seq
    page = client.get(f"/console/review?saved={seq}").text
    assert "Saved:" in page and "skipped" in page and "by ana" in page
    assert re.findall(r'data-clip="([^"]+)"', page) == [c["confident"]] and "1 clip waiting" in text(page)
    # refused: a species not shown for accept, an unknown one for relabel, an unknown verdict, a missing clip
    n = len(world.store.review_verdicts())
    for data, status in (
        ({"verdict": "accept", "species_code": "compau"}, 422),
        ({"verdict": "relabel", "species_code": "zzz"}, 422),
        ({"verdict": "relabel"}, 422),
        ({"verdict": "maybe"}, 422),
    ):
        r = client.post(f"/console/review/{c['disagree']}", data={"csrf": csrf, **data})
        assert r.status_code == status and 'role="alert"' in r.text, data
    assert (
        client.post(
            "/console/review/00000000-0000-4000-8000-000000000000", data={"csrf": csrf, "verdict": "skip"}
        ).status_code
        == 404
    )
    assert len(world.store.review_verdicts()) == n
    # from a tour page, a verdict leads back to the tour
    back = f"/console/tours/{world.tours[0]}"
    page = client.get(f"/console/review/{c['disagree']}?back={back}").text
    assert f'name="next" value="{back}"' in page and "Earlier verdicts on this clip" in page
    r = client.post(
        f"/console/review/{c['disagree']}", data={"csrf": csrf, "verdict": "not_an_animal", "next": back}
    )
    assert r.headers["location"].startswith(back + "?saved=")
    r = client.post(
        f"/console/review/{c['disagree']}",
        data={"csrf": csrf, "verdict": "skip", "next": "https://evil.example/"},
    )
    assert r.headers["location"].startswith("/console/review?saved=")


def test_audio_streams_behind_the_session_with_ranges(client, world):
    login(client, world.tokens["ana"])
    path = world.store.clip(world.clips["disagree"]).path
    data = open(path, "rb").read()
    r = client.get(f"/console/clips/{world.clips['disagree']}/audio")
    assert r.status_code == 200 and r.headers["content-type"] == "audio/ogg" and r.content == data
    r = client.get(f"/console/clips/{world.clips['disagree']}/audio", headers={"range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == data[100:200]
    assert client.get("/console/clips/not-a-clip/audio").status_code == 404


def test_tour_page(client, world):
    csrf = login(client, world.tokens["ana"])
    client.post(
        f"/console/review/{world.clips['disagree']}",
        data={"csrf": csrf, "verdict": "relabel", "species_code": "amekes"},
    )
    html = client.get(f"/console/tours/{world.tours[0]}").text
    t = re.sub(r"\s+", " ", text(html))
    assert "Tour of Ana Pérez" in t and "El Silencio, sendero norte" in t and "6.77120, -74.20030" in t
    assert "openstreetmap.org/?mlat=6.7712" in html
    assert (
        '<svg class="chart"' in html
        and len(re.findall(r'class="mark (confirmed|rejected|pending) ', html)) == 5
    )
    assert html.count('class="mark clip ') == 4  # the tour's clips in their own lane
    # species list, each with its full name and counts
    for code in ("rutjac1", "grekis", "bobfly1", "compau"):
        assert named(html, code)
    # the timeline table: bands, verdicts, who judged, the correction, links to the clips
    row = re.search(rf'id="det-{world.detections["grekis"]}"(.*?)</tr>', html, re.S).group(1)
    assert "band-medium" in row and "st-rejected" in row and "by ana" in row and named(row, "amekes")
    assert "reviewer: relabelled amekes" in text(row) and "cloud disagrees" in text(row)
    row = re.search(rf'id="det-{world.detections["bobfly"]}"(.*?)</tr>', html, re.S).group(1)
    assert "st-rejected" in row and "by guide" in row and named(row, "yeofly1")
    row = re.search(rf'id="det-{world.detections["rutjac"]}"(.*?)</tr>', html, re.S).group(1)
    assert (
        "st-confirmed" in row and "by cloud" in row and f"/console/review/{world.clips['confident']}" in row
    )
    html2 = client.get(f"/console/tours/{world.tours[1]}").text
    assert "not recorded" in html2  # no coordinates
    assert client.get("/console/tours/00000000-0000-4000-8000-000000000000").status_code == 404
    tours = client.get("/console/tours").text
    assert tours.index(world.tours[1]) < tours.index(world.tours[0])  # newest first
    assert "(6.7712, -74.2003)" in tours


def test_species_pages_and_pins(client, world):
    csrf = login(client, world.tokens["ana"])
    index = client.get("/console/species").text
    assert index.count('href="/console/species/') >= 206 and 'id="species-filter"' in index
    html = client.get("/console/species/grekis").text
    assert named(html, "grekis") and "2 detections" in text(html)
    assert '<svg class="chart"' in html
    best = html[html.index("Best clips") : html.index("Most frequent confusions")]
    assert world.clips["disagree"] in best and "Pin clip" in best
    conf = html[html.index("Most frequent confusions") :]
    assert named(conf, "amekes")  # the cloud heard a kestrel where the edge said kiskadee
    r = client.post(
        f"/console/clips/{world.clips['disagree']}/pin",
        data={"csrf": csrf, "pinned": "1", "next": "/console/species/grekis"},
    )
    assert r.status_code == 303 and r.headers["location"] == "/console/species/grekis"
    assert world.store.clip(world.clips["disagree"]).pinned
    html = client.get("/console/species/grekis").text
    assert "Unpin clip" in html and 'class="badge ok">pinned' in html
    client.post(f"/console/clips/{world.clips['disagree']}/pin", data={"csrf": csrf, "pinned": "0"})
    assert not world.store.clip(world.clips["disagree"]).pinned
    assert client.post("/console/clips/nope/pin", data={"csrf": csrf, "pinned": "1"}).status_code == 404
    assert client.get("/console/species/zzzzz").status_code == 404
    yeo = client.get("/console/species/yeofly1").text
    assert named(yeo[yeo.index("A judge said") :], "bobfly1")  # the guide corrected bobfly1 → yeofly1


def test_models_releases_and_rollback(client, world):
    csrf = login(client, world.tokens["bo"])
    html = client.get("/console/models").text
    assert html.index("student 2") < html.index("student 1")  # newest first
    assert "macro_roc_auc" in html and "0.81" in html and "0.77" in html
    assert 'href="/console/models/2/report/"' in html  # release 2 has a loop report
    row = re.search(r"<th scope=\"row\">student 2.*?</tr>", html, re.S).group(0)
    assert "guide-device" in row and "current" in row
    assert 'href="/console/models/1/confirm">Roll back to 1' in html
    page = client.get("/console/models/1/confirm").text
    assert "Roll back: make release 1 current?" in page and 'name="confirm" value="1"' in page
    assert world.store.current_release().version == "2"  # the confirmation page changes nothing
    r = client.post("/console/models/1/current", data={"csrf": csrf})
    assert r.status_code == 422 and world.store.current_release().version == "2"
    r = client.post("/console/models/1/current", data={"csrf": csrf, "confirm": "1"})
    assert r.status_code == 303 and world.store.current_release().version == "1"
    html = client.get(r.headers["location"]).text
    assert "Release 1 is now current" in html and 'href="/console/models/2/confirm">Promote 2' in html
    assert client.get("/console/models/9/confirm").status_code == 404
    assert client.post("/console/models/9/current", data={"csrf": csrf, "confirm": "9"}).status_code == 404


def test_loop_report_is_rendered_safely(client, world):
    login(client, world.tokens["ana"])
    html = client.get("/console/models/2/report/").text
    assert "<h1>Loop run 1</h1>" in html and '<img src="roc.png" alt="ROC curves"' in html
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html  # raw HTML is text
    assert "<td>0.81</td>" in html
    r = client.get("/console/models/2/report/roc.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
    for bad in ("report.md", "../../r1.tar", "..%2F..%2Fr1.tar", "nothing.png"):
        assert client.get(f"/console/models/2/report/{bad}").status_code == 404, bad
    assert client.get("/console/models/1/report/").status_code == 404  # release 1 has none


def test_exports(client, world):
    csrf = login(client, world.tokens["ana"])
    client.post(
        f"/console/review/{world.clips['disagree']}",
        data={"csrf": csrf, "verdict": "relabel", "species_code": "amekes"},
    )
    page = client.get("/console/exports").text
    assert 'for="since"' in page and 'for="until"' in page and "Darwin Core" in page

    def get(fmt: str, since: str = "2026-03-14", until: str = "2026-03-15"):
        r = client.get(f"/console/exports/download?format={fmt}&since={since}&until={until}")
        assert r.status_code == 200, r.text[:300]
        return r

    r = get("csv")
    assert r.headers["content-disposition"] == 'attachment; filename="silencio-csv-2026-03-14-2026-03-15.csv"'
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 6
    g = next(x for x in rows if x["uuid"] == world.detections["grekis"])
    assert (g["species_code"], g["scientific_name"], g["common_name"], g["taxon_class"]) == (
        "grekis",
        *SP["grekis"],
    )
    assert (g["status"], g["verified_by"], g["corrected_to"], g["latitude"]) == (
        "rejected",
        "reviewer",
        "amekes",
        "6.7712",
    )
    assert g["clip"].endswith(".ogg")
    dwc = list(csv.DictReader(io.StringIO(get("dwc").text)))
    assert len(dwc) == 4  # the rejected kiskadee and the guide-corrected flycatcher are left out
    one = next(x for x in dwc if x["occurrenceID"] == f"urn:uuid:{world.detections['rutjac']}")
    assert one["basisOfRecord"] == "MachineObservation" and one["scientificName"] == "Galbula ruficauda"
    assert one["identificationVerificationStatus"] == "verified" and one["geodeticDatum"] == "WGS84"
    assert one["eventID"] == f"urn:uuid:{world.tours[0]}" and one["class"] == "Aves"
    raven = get("raven")
    assert raven.headers["content-type"].startswith("text/tab-separated-values")
    lines = [ln.split("\t") for ln in raven.text.strip().split("\n")]
    assert lines[0][:5] == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)"]
    first = dict(zip(lines[0], lines[1]))
    assert first["Begin Time (s)"] == "60.000" and first["End Time (s)"] == "63.000"  # from the tour's start
    assert first["Species Code"] == "rutjac1" and first["Taxon Class"] == "Aves"
    assert len(list(csv.DictReader(io.StringIO(get("csv", "2026-03-15", "2026-03-15").text)))) == 1
    for bad in ("format=pdf", "since=2026-13-01", "since=2026-03-15&until=2026-03-14"):
        r = client.get(
            f"/console/exports/download?format=csv&{bad}"
            if not bad.startswith("format")
            else f"/console/exports/download?{bad}"
        )
        assert r.status_code == 422, bad


def test_judgement_flows_into_the_store_the_loop_reads(client, world):
    """What a reviewer decides is what ``review_verdicts`` (the loop) and the judgements show."""
    csrf = login(client, world.tokens["ana"])
    client.post(
        f"/console/review/{world.clips['uncertain']}",
        data={"csrf": csrf, "verdict": "relabel", "species_code": "rutjac1"},
    )
    tl = world.store.tour_timeline(world.tours[0])
    j = next(e.judgement for e in tl.entries if e.detection.uuid == world.detections["compau"])
    assert j.status is DetectionStatus.REJECTED and j.corrected_to == "rutjac1" and j.reviewer == "ana"
    (v,) = world.store.review_verdicts()
    assert (v.verdict, v.species_code, v.reviewer) == (ReviewVerdict.RELABEL, "rutjac1", "ana")


def test_tour_page_lists_its_clips_with_their_verdicts(client, world):
    csrf = login(client, world.tokens["bo"])
    client.post(f"/console/review/{world.clips['flagged']}", data={"csrf": csrf, "verdict": "not_an_animal"})
    html = client.get(f"/console/tours/{world.tours[0]}").text
    section = html[html.index("Clips recorded on this tour") :]
    for name in ("disagree", "flagged", "uncertain", "confident"):
        assert f'id="clip-{world.clips[name]}"' in section
    assert world.clips["random"] not in section  # the random sample was not recorded on a tour
    row = re.search(rf'id="clip-{world.clips["flagged"]}"(.*?)</tr>', section, re.S).group(1)
    assert "not an animal" in row and "by bo" in row and named(row, "bobfly1") and "review again" in row
    row = re.search(rf'id="clip-{world.clips["disagree"]}"(.*?)</tr>', section, re.S).group(1)
    assert named(row, "amekes") and "not reviewed" in row
