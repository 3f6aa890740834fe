"""The guide's terminal UI (Textual). The app only displays state: capture + inference + store run in
a worker thread (the :class:`edge.agent.Agent`), sync and the guide's actions in others; they report
back with typed messages (the app never reads the database). ``make_app`` is the factory used by
``silencio edge tui`` and by the pilot tests. ``run_tui`` sends every log line — Python's and the
C-level stderr of LiteRT/ONNX Runtime — to ``$SILENCIO_HOME/edge/edge.log``, never onto the screen.

Keys: ``c`` confirm the selected detection, ``x`` wrong species (pick the right one from a
searchable list, or "not an animal") — writes feedback and flags the clip for upload, ``n`` new
tour, ``s`` sync now, ``q`` quit.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

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

from edge.agent import Agent, TourView
from edge.capture import AudioSource
from edge.detector import Event, WindowResult
from edge.records import Detection, GuideVerdict, SyncState
from edge.settings import EdgeSettings
from edge.status import DeviceReport

log = logging.getLogger(__name__)
SHADES = " ▁▂▃▄▅▆▇█"
NOT_AN_ANIMAL = "__not_an_animal__"


# ---------------------------------------------------------------------------------- messages
@dataclass
class WindowScored(Message):
    mel: np.ndarray  # [n_mels, frames] log-mel of the window
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
class StatusUpdated(Message):
    """The device's status and the tour's species so far (from a worker's store reads)."""

    report: DeviceReport
    tour: TourView


@dataclass
class DetectionsUpdated(Message):
    """The current state of detections in the feed: the cloud's verdict, the guide's, sync."""

    detections: list[Detection]


@dataclass
class SyncDone(Message):
    text: str
    ok: bool
    at: str


@dataclass
class Notice(Message):
    text: str
    severity: str = "information"


@dataclass
class AgentStopped(Message):
    reason: str
    ended: bool  # the source ended by itself (a --file replay is over)
    detections: int = 0


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
FEED_STATUS = {
    SyncState.OPEN: "calling",
    SyncState.PENDING: "pending",
    SyncState.SYNCED: "synced",
    SyncState.REJECTED: "rejected",
}


def local_time(iso: str) -> str:
    """A stored UTC time as the guide's clock shows it (HH:MM:SS)."""
    return datetime.fromisoformat(iso).astimezone().strftime("%H:%M:%S")


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def row_status(d: Detection) -> str:
    """The feed's status cell: the cloud's verdict once it came, else where sync stands; the guide's
    own verdict beside it."""
    if d.sync_state is SyncState.REJECTED:
        text = "rejected"
    elif d.status != "pending":
        text = f"cloud {d.status}"
    else:
        text = FEED_STATUS[d.sync_state]
    if d.guide_verdict is not None:
        marks = {"confirmed": "✓", "wrong_species": "✗", "not_an_animal": "✗ noise"}
        text += f" · you {marks[d.guide_verdict]}"
    return text


class SilencioApp(App[int]):
    TITLE = "El Silencio Acoustic Explorer"
    CSS = """
    #left { width: 2fr; max-width: 66; }
    #right { width: 3fr; }
    .narrow #left { display: none; }
    #spectrogram { height: 1fr; min-height: 6; border: round $accent; }
    #level { height: 1; }
    #calling { height: 9; border: round $accent; }
    #feed { height: 1fr; border: round $accent; }
    #card { height: 6; border: round $accent; }
    #summary { height: 3; border: round $accent; }
    #status { height: auto; max-height: 3; background: $boost; }
    #picker { width: 90%; max-width: 100; height: 30; border: thick $accent; background: $surface; }
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
        replay: str | None = None,
        driver_class: Any = None,
    ) -> None:
        super().__init__(driver_class=driver_class)
        self.sync_every = sync_every
        self._manual_sync = False
        self.agent = agent
        self.source_factory = source_factory
        self.sync_factory = sync_factory
        self.replay = replay
        self.rows: dict[str, DetectionStored] = {}
        self.states: dict[str, Detection] = {}
        self.online: bool | None = None
        self.report: DeviceReport | None = None
        self.tour = TourView(None, [], {})
        self.ended: str | None = None  # shown once the replay is over

    def compose(self) -> ComposeResult:
        yield Header(show_clock=True)
        with Horizontal():
            with Vertical(id="left"):
                yield Static("waiting for audio …", id="spectrogram")
                yield Static(level_text(-120), id="level")
                yield DataTable(id="calling", cursor_type="none")
            with Vertical(id="right"):
                yield DataTable(id="feed", cursor_type="row")
                yield Static("select a detection to see its species card", id="card")
                yield Static("", id="summary")
        yield Static("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        calling = self.query_one("#calling", DataTable)
        calling.add_columns("calling now", "class", "score")
        feed = self.query_one("#feed", DataTable)
        feed.add_columns("time", "species", "class", "score", "status")
        self.query_one("#spectrogram", Static).border_title = "spectrogram (current window)"
        feed.border_title = "detections this tour"
        self.sub_title = self.agent.scorer.version
        self.on_resize()
        if self.agent.store.notice:
            self.notify(self.agent.store.notice, severity="error", timeout=30)
        self.refresh_summary()
        self.refresh_status()
        self.run_agent()
        self.post_status()
        if self.sync_factory is not None:  # background sync whenever the cloud answers
            self.set_interval(self.sync_every, self.run_sync)

    # ------------------------------------------------------------------ workers
    @work(thread=True, exclusive=True, group="agent")
    def run_agent(self) -> None:
        agent = self.agent

        def on_window(r: WindowResult, active: list[Event]) -> None:
            from shared_features import log_mel

            mel = log_mel(r.samples[None], agent.detector.cfg)[0]
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
            self.post_message(WindowScored(mel, agent.level(), calling, r.window.end))
            self.post_message(StatusUpdated(agent.report(), agent.tour_view()))

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
                    local_time(info["start_time"]),
                )
            )

        agent.on_window, agent.on_detection = on_window, on_detection
        try:
            if agent.tour_uuid is None:
                agent.start_tour()
            res = agent.run(self.source_factory())
            reason = f"the replay of {self.replay} ended" if self.replay else "the microphone stream ended"
            self.post_message(AgentStopped(reason, True, res.detections))
        except Exception as exc:  # noqa: BLE001 - shown to the guide, logged in full
            log.exception("agent stopped")
            self.post_message(AgentStopped(f"error: {exc}", False))
        self.post_message(StatusUpdated(agent.report(), agent.tour_view()))
        self.post_message(DetectionsUpdated(agent.detections_now(list(self.rows))))

    @work(thread=True, group="status")
    def post_status(self) -> None:
        self.post_message(StatusUpdated(self.agent.report(), self.agent.tour_view()))

    @work(thread=True, exclusive=True, group="sync")
    def run_sync(self) -> None:
        at = datetime.now().strftime("%H:%M:%S")
        if self.sync_factory is None:
            self.post_message(SyncDone("no cloud configured (SILENCIO_EDGE_CLOUD_URL / _TOKEN)", False, at))
        else:
            client = self.sync_factory()
            try:
                rep = client.run(clips=50)
                self.post_message(
                    SyncDone(
                        f"sent {rep.detections} detections, {rep.clips} clips; the cloud confirmed "
                        f"{rep.confirmed} and disputed {rep.disputed}",
                        True,
                        at,
                    )
                )
            except Exception as exc:  # noqa: BLE001 - offline is normal in the forest
                self.post_message(SyncDone(f"offline: {exc}", False, at))
            finally:
                client.close()
        self.post_message(DetectionsUpdated(self.agent.detections_now(list(self.rows))))
        self.post_message(StatusUpdated(self.agent.report(), self.agent.tour_view()))

    @work(thread=True, group="actions")
    def run_feedback(self, u: str, kind: GuideVerdict, code: str | None, text: str) -> None:
        try:
            self.agent.feedback(u, kind, code)
        except Exception as exc:  # noqa: BLE001 - a full disk or a vanished detection: tell the guide
            log.exception("feedback failed")
            self.post_message(Notice(f"not recorded: {exc}", "error"))
            return
        self.post_message(Notice(text))
        self.post_message(DetectionsUpdated(self.agent.detections_now([u])))
        self.post_message(StatusUpdated(self.agent.report(), self.agent.tour_view()))

    @work(thread=True, group="actions")
    def run_new_tour(self) -> None:
        self.agent.start_tour()
        self.post_message(StatusUpdated(self.agent.report(), self.agent.tour_view()))

    # ------------------------------------------------------------------ messages
    def on_resize(self, event: object = None) -> None:
        """Narrow terminals (< 120 columns) show the feed at full width, without the spectrogram."""
        self.set_class(self.size.width < 120, "narrow")

    def on_window_scored(self, m: WindowScored) -> None:
        spec = self.query_one("#spectrogram", Static)
        size = spec.content_region.size
        if size.width > 4 and size.height > 2:
            spec.update(spectrogram_text(render_spectrogram(m.mel, size.height, size.width)))
        self.query_one("#level", Static).update(level_text(m.level_dbfs))
        t = self.query_one("#calling", DataTable)
        t.clear()
        for code, common, _sci, cls, p, band in m.calling[:7]:
            t.add_row(common, cls, f"{p:.2f} {band}", key=code)

    def on_detection_stored(self, m: DetectionStored) -> None:
        self.rows[m.uuid] = m
        feed = self.query_one("#feed", DataTable)
        feed.add_row(
            m.heard_at, m.common, m.taxon_class, f"{m.confidence:.2f} {m.band}", "calling", key=m.uuid
        )
        feed.move_cursor(row=feed.row_count - 1)

    def on_status_updated(self, m: StatusUpdated) -> None:
        self.report, self.tour = m.report, m.tour
        self.refresh_summary()
        self.refresh_status()

    def on_detections_updated(self, m: DetectionsUpdated) -> None:
        feed = self.query_one("#feed", DataTable)
        for d in m.detections:
            self.states[d.uuid] = d
            if d.uuid in self.rows:
                feed.update_cell(d.uuid, feed.ordered_columns[4].key, row_status(d), update_width=True)
        if feed.row_count:
            self._show_card(self._selected(quiet=True))

    def on_sync_done(self, m: SyncDone) -> None:
        changed = self.online != m.ok
        self.online = m.ok
        if self._manual_sync or changed:  # background syncs speak only when something changes
            self.notify(m.text, severity="information" if m.ok else "warning")
        self._manual_sync = False
        self.refresh_status()

    def on_notice(self, m: Notice) -> None:
        self.notify(m.text, severity=m.severity)  # type: ignore[arg-type]

    def on_agent_stopped(self, m: AgentStopped) -> None:
        if m.ended:
            self.ended = f"{m.reason} ({m.detections} detections) — q quits, n starts a new tour"
        else:
            self.ended = f"listening stopped: {m.reason}"
        self.notify(self.ended, severity="information" if m.ended else "error", timeout=15)
        self.refresh_status()

    @on(DataTable.RowHighlighted, "#feed")
    def show_card(self, event: DataTable.RowHighlighted) -> None:
        self._show_card(event.row_key.value if event.row_key is not None else None)

    def _show_card(self, u: str | None) -> None:
        if u is None or u not in self.rows:
            return
        m = self.rows[u]
        same = [r for r in self.rows.values() if r.code == m.code]
        d = self.states.get(u)
        cloud = "the cloud has not judged it yet"
        if d is not None and d.sync_state is SyncState.REJECTED:
            cloud = f"rejected by the cloud: {d.sync_error}"
        elif d is not None and d.cloud_species:
            top = d.cloud_species[0]
            verdict = {"confirmed": "agrees", "disputed": "disagrees"}.get(d.status, "scored it")
            cloud = f"cloud {verdict}: {top.common_name or top.code} ({top.probability:.2f})"
        guide = f"; you said: {d.guide_verdict}" if d is not None and d.guide_verdict else ""
        self.query_one("#card", Static).update(
            Text.assemble(
                (f"{m.common}\n", "bold"),
                (f"{m.scientific}", "italic"),
                f"  ·  {m.taxon_class}  ·  {m.code}\n",
                f"heard {_times(len(same))} this tour; first {same[0].heard_at}, last {same[-1].heard_at}\n",
                f"{cloud}{guide}",
            )
        )

    # ------------------------------------------------------------------ actions
    def _selected(self, quiet: bool = False) -> str | None:
        feed = self.query_one("#feed", DataTable)
        if not feed.row_count:
            if not quiet:
                self.notify("no detection selected", severity="warning")
            return None
        key = feed.coordinate_to_cell_key(feed.cursor_coordinate).row_key
        return str(key.value)

    def action_confirm(self) -> None:
        u = self._selected()
        if u:
            self.run_feedback(u, GuideVerdict.CONFIRMED, None, f"confirmed {self.rows[u].common}")

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
                self.run_feedback(
                    u, GuideVerdict.NOT_AN_ANIMAL, None, "flagged: not an animal; the clip will be uploaded"
                )
            else:
                name = self.agent.scorer.labels[choice].common_name
                self.run_feedback(
                    u, GuideVerdict.WRONG_SPECIES, choice, f"flagged: it was {name}; clip queued for upload"
                )

        self.push_screen(SpeciesPicker(species), done)

    def action_new_tour(self) -> None:
        self.query_one("#feed", DataTable).clear()
        self.rows.clear()
        self.run_new_tour()
        self.notify("new tour started")

    def action_sync_now(self) -> None:
        self.notify("syncing …")
        self._manual_sync = True
        self.run_sync()

    def refresh_summary(self) -> None:
        t = self.tour
        parts = ", ".join(f"{k} {v}" for k, v in sorted(t.by_class.items())) or "none yet"
        confirmed = sum(1 for sc in t.species if sc.confirmed)
        self.query_one("#summary", Static).update(
            Text.assemble(
                ("tour summary: ", "bold"),
                f"{len(t.species)} species so far — {parts}; {confirmed} confirmed by the cloud",
            )
        )

    def refresh_status(self) -> None:
        r = self.report
        parts: list[str] = []
        if r is not None:
            last = local_time(r.sync.last_sync) if r.sync.last_sync else None
            if self.online is True:
                parts.append(f"online · last sync {last}")
            elif self.online is False:
                parts.append(f"offline · last sync {last}" if last else "offline · never synced")
            else:
                parts.append(f"last sync {last}" if last else "never synced")
            p = r.pending
            pending = f"pending {p.detections} detections, {p.clips} clips"
            if p.rejected_detections:
                pending += f", {p.rejected_detections} rejected"
            parts.append(pending)
            if r.audio_pause is not None:
                parts.append(f"AUDIO PAUSED: {r.audio_pause.reason}")
            if r.speech_suppressed:
                parts.append(f"speech not kept ×{r.speech_suppressed}")
            parts.append(f"model {r.model_version}")
        text = " · ".join(parts)
        if self.ended:
            text = f"{self.ended}\n {text}"
        self.query_one("#status", Static).update(Text(" " + text))

    def on_unmount(self) -> None:
        self.agent.stop()


def make_app(
    settings: EdgeSettings,
    *,
    file: Any = None,
    device: str | None = None,
    agent: Agent | None = None,
    realtime: bool = True,
    driver_class: Any = None,
) -> SilencioApp:
    """The app for a settings object: microphone by default, ``file`` to replay a recording."""
    from edge.capture import FileSource, MicrophoneSource

    agent = agent or Agent(settings)

    def source() -> AudioSource:
        if file is not None:
            return FileSource(file, realtime=realtime, tz=settings.recorder_timezone)
        dev: int | str | None = int(device) if device and device.isdigit() else device
        return MicrophoneSource(device=dev)

    sync = None
    if settings.cloud_url and settings.token:

        def sync() -> Any:
            from edge.status import device_report
            from edge.sync import SyncClient

            return SyncClient(
                agent.store,
                settings.cloud_url or "",
                settings.token or "",
                timeout=settings.sync_timeout_s,
                retries=1,
                device=lambda: device_report(agent.store, settings.clip_dir, agent.scorer.version).wire(),
            )

    return SilencioApp(
        agent, source, sync, replay=Path(file).name if file is not None else None, driver_class=driver_class
    )


@contextmanager
def logs_to_file(path: Path) -> Iterator[IO[str]]:
    """While the TUI runs: Python logging goes to ``path`` (not the screen), and so does anything
    written to file descriptor 2 (LiteRT's ``INFO: Created TensorFlow Lite XNNPACK delegate``, ONNX
    Runtime warnings). Yields a stream on the real terminal for the TUI to draw on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    screen = [
        h
        for h in root.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    for h in screen:
        root.removeHandler(h)
    log_file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed below
    handler = logging.StreamHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    level = root.level
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    sys.stderr.flush()
    saved = os.dup(2)
    terminal = os.fdopen(os.dup(saved), "w", encoding="utf-8", errors="replace")
    try:
        os.dup2(log_file.fileno(), 2)
        yield terminal
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        terminal.close()
        logging.captureWarnings(False)
        root.removeHandler(handler)
        log_file.close()
        root.setLevel(level)
        for h in screen:
            root.addHandler(h)


def terminal_driver(stream: IO[str]) -> Any:
    """Textual's Linux driver drawing on ``stream`` (it would draw on ``sys.__stderr__``, fd 2, which
    :func:`logs_to_file` sends to the log)."""
    from textual.drivers.linux_driver import LinuxDriver

    class TerminalDriver(LinuxDriver):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self._file = stream  # type: ignore[assignment]

    return TerminalDriver


def run_tui(
    settings: EdgeSettings,
    file: Any = None,
    device: str | None = None,
    agent: Agent | None = None,
    realtime: bool = True,
) -> int:
    """``silencio edge tui`` (and the demo): the app on the real terminal, everything that would print
    going to ``settings.log_path``."""
    if file is not None and not Path(file).is_file():
        from edge.errors import InputError

        raise InputError(f"{file}: no such recording")
    with logs_to_file(settings.log_path) as terminal:
        driver = terminal_driver(terminal) if sys.platform != "win32" else None
        app = make_app(
            settings, file=file, device=device, agent=agent, realtime=realtime, driver_class=driver
        )
        try:
            app.run()
        finally:
            app.agent.stop()
            app.agent.end_tour()
    print(f"log: {settings.log_path}")
    return 0
