"""The guide's terminal UI (Textual). The app only displays state: capture + inference + store run in
a worker thread (the :class:`edge.agent.Agent`), sync in another; they report back with typed
messages. ``make_app`` is the factory used by ``silencio edge tui`` and by the pilot tests.

Keys: ``c`` confirm the selected detection, ``x`` wrong species (pick the right one from a
searchable list, or "not an animal") — writes feedback and flags the clip for upload, ``n`` new
tour, ``s`` sync now, ``q`` quit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Header, Input, OptionList, Static
from textual.widgets.option_list import Option

from edge.agent import Agent
from edge.capture import AudioSource
from edge.detector import Event, WindowResult
from edge.settings import EdgeSettings

log = logging.getLogger(__name__)
SHADES = " ▁▂▃▄▅▆▇█"
NOT_AN_ANIMAL = "__not_an_animal__"


# ---------------------------------------------------------------------------------- messages
@dataclass
class WindowScored(Message):
    spectrogram: np.ndarray  # [rows, cols] in 0..1
    level_dbfs: float
    calling: list[tuple[str, str, str, str, float, str]]  # code, common, scientific, class, p, band
    seconds: float


@dataclass
class DetectionStored(Message):
    uuid: str
    code: str
    common: str
    scientific: str
    taxon_class: str
    confidence: float
    band: str
    heard_at: str


@dataclass
class SyncDone(Message):
    text: str
    ok: bool


@dataclass
class AgentStopped(Message):
    reason: str


def render_spectrogram(mel: np.ndarray, rows: int = 12, cols: int = 60) -> np.ndarray:
    """``[n_mels, frames]`` log-mel → ``[rows, cols]`` in 0..1 (low frequencies at the bottom)."""
    m, t = mel.shape
    r = np.array_split(np.arange(m), rows)
    c = np.array_split(np.arange(t), cols)
    img = np.array([[mel[np.ix_(ri, ci)].mean() for ci in c] for ri in r])
    lo, hi = np.percentile(img, 5), np.percentile(img, 99)
    out: np.ndarray = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)[::-1]
    return out


def spectrogram_text(img: np.ndarray) -> Text:
    out = Text()
    for row in img:
        for v in row:
            k = int(round(float(v) * (len(SHADES) - 1)))
            out.append(SHADES[k], style=f"rgb({int(40 + 215 * v)},{int(200 * v)},{int(90 + 60 * (1 - v))})")
        out.append("\n")
    return out


def level_text(dbfs: float, width: int = 30) -> Text:
    frac = float(np.clip((dbfs + 80) / 80, 0, 1))
    n = int(frac * width)
    style = "green" if dbfs < -12 else "yellow" if dbfs < -3 else "red"
    return Text.assemble(
        ("input ", "bold"), ("█" * n, style), ("·" * (width - n), "dim"), f" {dbfs:6.1f} dBFS"
    )


# ---------------------------------------------------------------------------------- species picker
class SpeciesPicker(ModalScreen[str | None]):
    """Searchable list of species (code, names, class) plus "not an animal"."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, species: list[tuple[str, str]]) -> None:
        super().__init__()
        self.species = species  # (code, display)

    def compose(self) -> ComposeResult:
        with Vertical(id="picker"):
            yield Static("Which species was it? Type to search; Enter to choose; Esc to cancel.")
            yield Input(placeholder="search code, common or scientific name, class", id="search")
            yield OptionList(*self._options(""), id="choices")

    def _options(self, q: str) -> list[Option]:
        q = q.lower().strip()
        opts = (
            [Option("✗ not an animal (noise, voice, engine …)", id=NOT_AN_ANIMAL)]
            if not q or q in "not an animal"
            else []
        )
        opts += [Option(d, id=c) for c, d in self.species if q in d.lower()][:200]
        return opts

    @on(Input.Changed, "#search")
    def filter(self, event: Input.Changed) -> None:
        ol = self.query_one("#choices", OptionList)
        ol.clear_options()
        ol.add_options(self._options(event.value))

    @on(Input.Submitted, "#search")
    def pick_first(self) -> None:
        ol = self.query_one("#choices", OptionList)
        if ol.option_count:
            self.dismiss(ol.get_option_at_index(0).id)

    @on(OptionList.OptionSelected, "#choices")
    def picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


# ---------------------------------------------------------------------------------- the app
class SilencioApp(App[int]):
    TITLE = "El Silencio Acoustic Explorer"
    CSS = """
    #left { width: 64; }
    #spectrogram { height: 14; border: round $accent; }
    #level { height: 1; }
    #calling { height: 9; border: round $accent; }
    #feed { border: round $accent; }
    #card { height: 9; border: round $accent; }
    #summary { height: 4; border: round $accent; }
    #status { height: 1; background: $boost; }
    #picker { width: 90; height: 30; border: thick $accent; background: $surface; }
    SpeciesPicker { align: center middle; }
    """
    BINDINGS = [
        Binding("c", "confirm", "confirm"),
        Binding("x", "wrong", "wrong species"),
        Binding("n", "new_tour", "new tour"),
        Binding("s", "sync_now", "sync now"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(
        self,
        agent: Agent,
        source_factory: Callable[[], AudioSource],
        sync_factory: Callable[[], Any] | None = None,
        sync_every: float = 120.0,
    ) -> None:
        super().__init__()
        self.sync_every = sync_every
        self._manual_sync = False
        self.agent = agent
        self.source_factory = source_factory
        self.sync_factory = sync_factory
        self.rows: dict[str, DetectionStored] = {}
        self.online: bool | None = None
        self.last_sync = agent.store.get_state("last_sync") or "never"

    def compose(self) -> ComposeResult:
        yield Header(show_clock=True)
        with Horizontal():
            with Vertical(id="left"):
                yield Static("waiting for audio …", id="spectrogram")
                yield Static(level_text(-120), id="level")
                yield DataTable(id="calling", cursor_type="none")
                yield Static("", id="summary")
            with Vertical():
                yield DataTable(id="feed", cursor_type="row")
                yield Static("select a detection to see its species card", id="card")
        yield Static("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        calling = self.query_one("#calling", DataTable)
        calling.add_columns("calling now", "class", "conf", "band")
        feed = self.query_one("#feed", DataTable)
        feed.add_columns("time", "species", "scientific name", "class", "conf", "band", "status")
        self.query_one("#spectrogram", Static).border_title = "spectrogram (current window)"
        feed.border_title = "detections this tour"
        self.sub_title = self.agent.scorer.description
        if self.agent.tour_uuid is None:
            self.agent.start_tour()
        self.refresh_summary()
        self.refresh_status()
        self.run_agent()
        if self.sync_factory is not None:  # background sync whenever the cloud answers
            self.set_interval(self.sync_every, self.run_sync)

    # ------------------------------------------------------------------ workers
    @work(thread=True, exclusive=True, group="agent")
    def run_agent(self) -> None:
        agent = self.agent

        def on_window(r: WindowResult, active: list[Event]) -> None:
            from shared_features import log_mel

            feats = log_mel(r.samples[None], agent.detector.cfg)[0]
            calling = [
                (
                    e.species.code,
                    e.species.common_name,
                    e.species.scientific_name,
                    e.species.taxon_class,
                    e.confidence,
                    e.band,
                )
                for e in sorted(active, key=lambda e: -e.confidence)
            ]
            self.post_message(WindowScored(render_spectrogram(feats), agent.level(), calling, r.window.end))

        def on_detection(ev: Event, info: dict[str, Any]) -> None:
            s = ev.species
            self.post_message(
                DetectionStored(
                    ev.uuid or "",
                    s.code,
                    s.common_name,
                    s.scientific_name,
                    s.taxon_class,
                    ev.confidence,
                    ev.band,
                    info["start_time"][11:19],
                )
            )

        agent.on_window, agent.on_detection = on_window, on_detection
        try:
            agent.run(self.source_factory())
            self.post_message(AgentStopped("the recording ended"))
        except Exception as exc:  # noqa: BLE001 - shown to the guide, logged in full
            log.exception("agent stopped")
            self.post_message(AgentStopped(f"error: {exc}"))

    @work(thread=True, exclusive=True, group="sync")
    def run_sync(self) -> None:
        if self.sync_factory is None:
            self.post_message(SyncDone("no cloud configured (SILENCIO_EDGE_CLOUD_URL / _TOKEN)", False))
            return
        client = self.sync_factory()
        try:
            rep = client.run(clips=50)
            self.post_message(
                SyncDone(
                    f"sent {rep.detections} detections, {rep.clips} clips; {rep.confirmations} confirmations",
                    True,
                )
            )
        except Exception as exc:  # noqa: BLE001 - offline is normal in the forest
            self.post_message(SyncDone(f"offline: {exc}", False))
        finally:
            client.close()

    # ------------------------------------------------------------------ messages
    def on_window_scored(self, m: WindowScored) -> None:
        self.query_one("#spectrogram", Static).update(spectrogram_text(m.spectrogram))
        self.query_one("#level", Static).update(level_text(m.level_dbfs))
        t = self.query_one("#calling", DataTable)
        t.clear()
        for code, common, sci, cls, p, band in m.calling[:7]:
            t.add_row(f"{common} ({sci})", cls, f"{p:.2f}", band, key=code)

    def on_detection_stored(self, m: DetectionStored) -> None:
        self.rows[m.uuid] = m
        feed = self.query_one("#feed", DataTable)
        feed.add_row(
            m.heard_at,
            f"{m.common} [{m.code}]",
            m.scientific,
            m.taxon_class,
            f"{m.confidence:.2f}",
            m.band,
            "pending",
            key=m.uuid,
        )
        feed.move_cursor(row=feed.row_count - 1)
        self.refresh_summary()
        self.refresh_status()

    def on_sync_done(self, m: SyncDone) -> None:
        changed = self.online != m.ok
        self.online = m.ok
        if m.ok:
            self.last_sync = datetime.now().strftime("%H:%M:%S")
        if self._manual_sync or changed:  # background syncs speak only when something changes
            self.notify(m.text, severity="information" if m.ok else "warning")
        self._manual_sync = False
        self.refresh_statuses()
        self.refresh_status()

    def on_agent_stopped(self, m: AgentStopped) -> None:
        self.notify(
            f"listening stopped: {m.reason}",
            severity="warning" if m.reason.startswith("error") else "information",
        )

    @on(DataTable.RowHighlighted, "#feed")
    def show_card(self, event: DataTable.RowHighlighted) -> None:
        u = event.row_key.value if event.row_key is not None else None
        if u is None or u not in self.rows:
            return
        m = self.rows[u]
        st = self.agent.store
        tour = self.agent.tour_uuid
        same = st.query(
            "SELECT count(*) AS n, min(start_time) AS first, max(start_time) AS last FROM detections "
            "WHERE tour_uuid = ? AND species_code = ?",
            [tour, m.code],
        )[0]
        det = st.detection(u) or {}
        cloud = "not yet confirmed by the cloud"
        if det.get("cloud_species"):
            top = json.loads(det["cloud_species"])[0]
            verdict = {"confirmed": "agrees", "disputed": "disagrees"}.get(det.get("status", ""), "scored")
            cloud = f"cloud {verdict}: {top['common_name']} ({top['probability']:.2f})"
        self.query_one("#card", Static).update(
            Text.assemble(
                (f"{m.common}\n", "bold"),
                (f"{m.scientific}", "italic"),
                f"  ·  {m.taxon_class}  ·  {m.code}\n",
                f"heard {same['n']} times this tour; first {str(same['first'])[11:19]}, "
                f"last {str(same['last'])[11:19]}\n",
                f"status: {det.get('status', 'pending')}; {cloud}",
            )
        )

    # ------------------------------------------------------------------ actions
    def _selected(self) -> str | None:
        feed = self.query_one("#feed", DataTable)
        if not feed.row_count:
            self.notify("no detection selected", severity="warning")
            return None
        key = feed.coordinate_to_cell_key(feed.cursor_coordinate).row_key
        return str(key.value)

    def action_confirm(self) -> None:
        u = self._selected()
        if u:
            self.agent.feedback(u, "confirmed")
            self._set_status(u, "confirmed")
            self.notify(f"confirmed {self.rows[u].common}")

    def action_wrong(self) -> None:
        u = self._selected()
        if not u:
            return
        species = [
            (s.code, f"{s.common_name} ({s.scientific_name}) · {s.taxon_class} · {s.code}")
            for s in self.agent.scorer.labels
        ]

        def done(choice: str | None) -> None:
            if choice is None:
                return
            if choice == NOT_AN_ANIMAL:
                self.agent.feedback(u, "not_an_animal")
                self.notify("flagged: not an animal; the clip will be uploaded for review")
            else:
                self.agent.feedback(u, "wrong_species", choice)
                self.notify(
                    f"flagged: it was {self.agent.scorer.labels[choice].common_name}; clip queued for upload"
                )
            self._set_status(u, "disputed")
            self.refresh_status()

        self.push_screen(SpeciesPicker(species), done)

    def action_new_tour(self) -> None:
        self.agent.start_tour()
        self.query_one("#feed", DataTable).clear()
        self.rows.clear()
        self.refresh_summary()
        self.notify("new tour started")

    def action_sync_now(self) -> None:
        self.notify("syncing …")
        self._manual_sync = True
        self.run_sync()

    def _set_status(self, u: str, status: str) -> None:
        feed = self.query_one("#feed", DataTable)
        feed.update_cell(u, feed.ordered_columns[6].key, status)

    def refresh_statuses(self) -> None:
        feed = self.query_one("#feed", DataTable)
        for u in self.rows:
            d = self.agent.store.detection(u)
            if d is not None:
                feed.update_cell(u, feed.ordered_columns[6].key, d["status"])

    def refresh_summary(self) -> None:
        st = self.agent.store
        rows = st.query(
            "SELECT species_code, count(*) AS n FROM detections WHERE tour_uuid = ? GROUP BY species_code",
            [self.agent.tour_uuid],
        )
        labels = self.agent.scorer.labels
        by: dict[str, int] = {}
        for r in rows:
            cls = labels[r["species_code"]].taxon_class if r["species_code"] in labels else "?"
            by[cls] = by.get(cls, 0) + 1
        parts = ", ".join(f"{k} {v}" for k, v in sorted(by.items())) or "none yet"
        self.query_one("#summary", Static).update(
            Text.assemble(("tour summary: ", "bold"), f"{len(rows)} species so far — {parts}")
        )

    def refresh_status(self) -> None:
        p = self.agent.store.pending()
        net = {None: "not synced yet", True: "online", False: "offline"}[self.online]
        active = self.agent.store.active_model()
        model = active["version"] if active else self.agent.scorer.version
        self.query_one("#status", Static).update(
            f" {net} · pending {p['detections']} detections, {p['clips']} clips · last sync {self.last_sync} "
            f"· model {model}"
        )

    def on_unmount(self) -> None:
        self.agent.stop()


def make_app(
    settings: EdgeSettings,
    *,
    file: Any = None,
    device: str | None = None,
    agent: Agent | None = None,
    realtime: bool = True,
) -> SilencioApp:
    """The app for a settings object: microphone by default, ``file`` to replay a recording."""
    from edge.capture import FileSource, MicrophoneSource

    agent = agent or Agent(settings)

    def source() -> AudioSource:
        if file is not None:
            return FileSource(file, realtime=realtime)
        dev: int | str | None = int(device) if device and device.isdigit() else device
        return MicrophoneSource(device=dev)

    sync = None
    if settings.cloud_url and settings.token:

        def sync() -> Any:
            from edge.sync import SyncClient

            return SyncClient(
                agent.store,
                settings.cloud_url or "",
                settings.token or "",
                timeout=settings.sync_timeout_s,
                retries=1,
            )

    return SilencioApp(agent, source, sync)


def run_tui(settings: EdgeSettings, file: Any = None, device: str | None = None) -> int:
    app = make_app(settings, file=file, device=device)
    try:
        app.run()
    finally:
        app.agent.end_tour()
    return 0
