"""A synthetic El Silencio dataset in the exact BirdCLEF 2025 layout.

**Synthetic, not real.** The species, their names and their calls are generated; no figure
computed on this data says anything about real animals. It exists so that the whole system can be
trained, tested and demonstrated reproducibly without the 12 GB Kaggle download.

Every species gets a parametric call drawn from its taxon class:

* Aves: FM sweeps, harmonic stacks with vibrato, trills of short notes (1.5–8 kHz);
* Amphibia: pulse trains with a carrier (0.4–4 kHz, 4–40 pulses/s), like frogs;
* Insecta: amplitude-modulated buzzes and stridulation of narrow noise bands (3.5–12 kHz);
* Mammalia: low harmonic grunts and howls with slow FM (120–1200 Hz).

Bands of species of one class overlap; calls vary in pitch, tempo, duration and loudness; clips
carry pink background noise, un-labelled distractor calls and occasional secondary species; and
soundscapes mix 2–4 species (1–4 call bouts each per minute, SNR 0–15 dB against the noise)
over forest-like noise, so windows hold 0 to 4 overlapping species. The output is deterministic for
a seed (same numbers on the same numpy / libsndfile). Written files:

    taxonomy.csv, train.csv (the full Kaggle columns), train_audio/<code>/XC<n>.ogg,
    train_soundscapes/<name>.ogg, soundscape_solution.csv (truth per 5 s window, solution format),
    soundscape_events.csv (every call: file, species, start, end), SYNTHETIC.md
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile

log = logging.getLogger(__name__)

SR = 32_000
CLASSES = ("Aves", "Amphibia", "Insecta", "Mammalia")
_SHORT = {"Aves": "av", "Amphibia": "am", "Insecta": "in", "Mammalia": "ma"}
_LATIN = {"Aves": "avis", "Amphibia": "rana", "Insecta": "cicada", "Mammalia": "mammalis"}
_KINDS = {
    "Aves": ("sweep", "stack", "trill"),
    "Amphibia": ("pulses",),
    "Insecta": ("buzz", "stridulation"),
    "Mammalia": ("grunt", "howl"),
}
#: Share of species per class, like BirdCLEF 2025 (146/34/17/9).
_CLASS_SHARE = (0.55, 0.2, 0.15, 0.1)


@dataclass(frozen=True)
class SynthConfig:
    species: int = 12
    clips_per_species: int = 16
    clip_seconds: tuple[float, float] = (5.0, 14.0)
    soundscapes: int = 8
    soundscape_seconds: float = 60.0
    species_per_soundscape: tuple[int, int] = (2, 4)
    calls_per_species: tuple[int, int] = (1, 4)
    secondary_probability: float = 0.2
    seed: int = 0
    #: extra soundscapes *without* published truth (like BirdCLEF's train_soundscapes), for
    #: pseudo-labelling; generated after everything else, so adding them changes nothing else
    unlabelled_soundscapes: int = 0


@dataclass(frozen=True)
class SpeciesSpec:
    code: str
    scientific_name: str
    common_name: str
    taxon_class: str
    kind: str
    f_lo: float
    f_hi: float
    rate: float  # notes or pulses per second
    duration: float  # seconds of one call bout
    harmonics: int


def _fast_len(n: int) -> int:
    """FFT length ≥ n that is a power of two (odd lengths can make numpy's FFT very slow)."""
    return 1 << max(0, int(n - 1).bit_length())


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    m = _fast_len(n)
    spec = np.fft.rfft(rng.standard_normal(m))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), m)[:n]
    return (x / (np.abs(x).max() + 1e-12)).astype(np.float32)


def _env(n: int, attack: float = 0.1) -> np.ndarray:
    a = max(1, int(n * attack))
    e = np.ones(n, np.float32)
    e[:a] = np.linspace(0, 1, a)
    e[-a:] = np.linspace(1, 0, a)
    return e


def _tone(freq: np.ndarray, harmonics: int = 1) -> np.ndarray:
    phase = 2 * np.pi * np.cumsum(freq) / SR
    return sum(np.sin(k * phase) / k for k in range(1, harmonics + 1)).astype(np.float32)


def _bandnoise(n: int, f_lo: float, f_hi: float, rng: np.random.Generator) -> np.ndarray:
    m = _fast_len(n)
    spec = np.fft.rfft(rng.standard_normal(m))
    freqs = np.fft.rfftfreq(m, 1 / SR)
    spec[(freqs < f_lo) | (freqs > f_hi)] = 0
    x = np.fft.irfft(spec, m)[:n]
    return (x / (np.abs(x).max() + 1e-12)).astype(np.float32)


def render_call(sp: SpeciesSpec, rng: np.random.Generator) -> np.ndarray:
    """One call bout of ``sp`` with natural variation, ``[n] float32`` at 32 kHz, peak 1."""
    pitch = rng.uniform(0.94, 1.06)
    tempo = rng.uniform(0.85, 1.15)
    dur = sp.duration * rng.uniform(0.8, 1.2)
    n = int(dur * SR)
    t = np.arange(n) / SR
    lo, hi = sp.f_lo * pitch, sp.f_hi * pitch
    if sp.kind == "sweep":
        note = int(0.25 * SR / tempo)
        k = np.arange(note) / note
        f = lo + (hi - lo) * (k if sp.rate > 3 else 1 - k)
        one = _tone(f, sp.harmonics) * _env(note, 0.2)
        gap = int(SR / (sp.rate * tempo)) - note
        x = np.concatenate(
            [
                np.concatenate([one, np.zeros(max(gap, 200), np.float32)])
                for _ in range(max(1, int(dur * sp.rate * tempo)))
            ]
        )
    elif sp.kind == "stack":
        f = (lo + hi) / 2 + (hi - lo) / 4 * np.sin(2 * np.pi * sp.rate * tempo * t)
        x = _tone(f, sp.harmonics) * _env(n)
    elif sp.kind == "trill":
        f = np.full(n, (lo + hi) / 2)
        am = (np.sin(2 * np.pi * sp.rate * tempo * t) > 0.2).astype(np.float32)
        x = _tone(f + (hi - lo) / 3 * np.sin(2 * np.pi * sp.rate * tempo * t), sp.harmonics) * am * _env(n)
    elif sp.kind == "pulses":
        period = int(SR / (sp.rate * tempo))
        plen = max(40, int(period * 0.35))
        carrier = _tone(np.full(plen, lo * 1.0), sp.harmonics) * np.hanning(plen).astype(np.float32)
        x = np.zeros(n, np.float32)
        for s in range(0, n - plen, period):
            x[s : s + plen] += carrier
    elif sp.kind in ("buzz", "stridulation"):
        x = _bandnoise(n, lo, hi, rng)
        am_rate = sp.rate * tempo * (10 if sp.kind == "buzz" else 3)
        x *= (0.5 + 0.5 * np.sin(2 * np.pi * am_rate * t)).astype(np.float32) ** 2
        if sp.kind == "stridulation":
            x *= (np.sin(2 * np.pi * sp.rate * tempo * t) > 0).astype(np.float32)
        x *= _env(n, 0.05)
    elif sp.kind in ("grunt", "howl"):
        f = lo + (hi - lo) * (0.5 + 0.5 * np.sin(2 * np.pi * sp.rate * tempo * t / 4))
        x = _tone(f, sp.harmonics) * _env(n, 0.3)
        if sp.kind == "grunt":
            x *= (np.sin(2 * np.pi * sp.rate * tempo * t) > -0.3).astype(np.float32)
    else:  # pragma: no cover - kinds are fixed above
        raise ValueError(sp.kind)
    return (x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def make_species(n: int, rng: np.random.Generator) -> list[SpeciesSpec]:
    counts = [max(1, int(round(n * s))) for s in _CLASS_SHARE]
    while sum(counts) > n:
        counts[int(np.argmax(counts))] -= 1
    while sum(counts) < n:
        counts[0] += 1
    out: list[SpeciesSpec] = []
    for cls, k in zip(CLASSES, counts):
        for i in range(1, k + 1):
            kind = _KINDS[cls][(i - 1) % len(_KINDS[cls])]
            if cls == "Aves":
                centre = rng.uniform(2000, 6500)
                width = rng.uniform(600, 2500)
                rate, dur, harm = rng.uniform(2, 14), rng.uniform(0.8, 2.5), int(rng.integers(1, 4))
            elif cls == "Amphibia":
                centre, width = rng.uniform(500, 3500), 200.0
                rate, dur, harm = rng.uniform(4, 40), rng.uniform(0.8, 2.5), int(rng.integers(1, 4))
            elif cls == "Insecta":
                centre = rng.uniform(4500, 10500)
                width = rng.uniform(800, 2500)
                rate, dur, harm = rng.uniform(3, 20), rng.uniform(1.0, 3.0), 1
            else:
                centre, width = rng.uniform(200, 900), rng.uniform(100, 500)
                rate, dur, harm = rng.uniform(1, 6), rng.uniform(1.0, 3.0), int(rng.integers(3, 7))
            lo, hi = max(100.0, centre - width / 2), min(15_000.0, centre + width / 2)
            code = f"syn{_SHORT[cls]}{i:02d}"
            out.append(
                SpeciesSpec(
                    code,
                    f"Synthetica {_LATIN[cls]}-{i:02d}",
                    f"Synthetic {kind} {cls.lower()} {i:02d}",
                    cls,
                    kind,
                    float(lo),
                    float(hi),
                    float(rate),
                    float(dur),
                    harm,
                )
            )
    return out


def _mix(bg: np.ndarray, call: np.ndarray, at: int, snr_db: float, noise_rms: float) -> tuple[int, int]:
    """Add ``call`` at sample ``at`` with ``snr_db`` relative to the background noise alone
    (``noise_rms``, measured before any call was mixed in)."""
    end = min(bg.size, at + call.size)
    seg = call[: end - at]
    sig_rms = float(np.sqrt(np.mean(seg**2)) + 1e-9)
    bg[at:end] += seg * (noise_rms / sig_rms) * 10 ** (snr_db / 20)
    return at, end


def _background(n: int, rng: np.random.Generator, level: float) -> np.ndarray:
    bg = _pink(n, rng) * level
    # slow "wind" modulation and a faint continuous band (not a species) for realism
    t = np.arange(n) / SR
    bg *= (0.7 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 6))).astype(np.float32)
    bg += 0.3 * level * _bandnoise(n, 2500, 3200, rng) * rng.uniform(0, 1)
    return bg.astype(np.float32)


def _distractor(rng: np.random.Generator) -> np.ndarray:
    """An un-labelled sound (not one of the species): a chirp or click burst."""
    n = int(rng.uniform(0.2, 1.0) * SR)
    f = np.linspace(rng.uniform(800, 9000), rng.uniform(800, 9000), n)
    return (_tone(f) * _env(n)).astype(np.float32)


def _write(path: Path, x: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    peak = float(np.abs(x).max())
    if peak > 0.95:
        x = x * (0.95 / peak)
    soundfile.write(path, x.astype(np.float32), SR, format="OGG", subtype="VORBIS")


def _soundscapes(
    out: Path,
    cfg: SynthConfig,
    count: int,
    prefix: str,
    day: str,
    species: list[SpeciesSpec],
    rng: np.random.Generator,
    tick: Callable[[], None],
) -> tuple[list[tuple[str, str, float, float]], list[tuple[str, np.ndarray]]]:
    """Write ``count`` soundscapes; return their call events and truth rows per 5 s window."""
    win = 5.0
    codes = [s.code for s in species]
    events: list[tuple[str, str, float, float]] = []
    truth_rows: list[tuple[str, np.ndarray]] = []
    for k in range(count):
        name = f"{prefix}{k:02d}_{day}_{6 + k % 12:02d}0000"
        n = int(cfg.soundscape_seconds * SR)
        x = _background(n, rng, level=rng.uniform(0.01, 0.03))
        nrms = float(np.sqrt(np.mean(x**2)) + 1e-9)
        lo, hi = cfg.species_per_soundscape
        k_present = min(len(species), int(rng.integers(lo, hi, endpoint=True)))
        present = rng.choice(len(species), size=k_present, replace=False)
        mine: list[tuple[str, str, float, float]] = []
        for j in present:
            sp = species[int(j)]
            for _ in range(int(rng.integers(*cfg.calls_per_species, endpoint=True))):
                call = render_call(sp, rng)
                at = int(rng.uniform(0, n - call.size))
                a, b = _mix(x, call, at, rng.uniform(0, 15), nrms)
                mine.append((name, sp.code, a / SR, b / SR))
        for _ in range(int(rng.integers(1, 5))):
            _mix(x, _distractor(rng), int(rng.uniform(0, n - SR)), rng.uniform(0, 10), nrms)
        _write(out / "train_soundscapes" / f"{name}.ogg", x)
        for w_i in range(int(cfg.soundscape_seconds // win)):
            wlo, whi = w_i * win, (w_i + 1) * win
            y = np.zeros(len(species), np.int8)
            for _, code, a, b in mine:
                # present when at least 0.5 s of the call falls inside the window
                if min(b, whi) - max(a, wlo) >= 0.5:
                    y[codes.index(code)] = 1
            truth_rows.append((f"{name}_{int(whi)}", y))
        events += mine
        tick()
    return events, truth_rows


def _write_truth(path: Path, codes: list[str], rows: list[tuple[str, np.ndarray]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row_id", *codes])
        for rid, y in rows:
            w.writerow([rid, *y.tolist()])


def _write_events(path: Path, events: list[tuple[str, str, float, float]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["soundscape", "primary_label", "start", "end"])
        for e in events:
            w.writerow([e[0], e[1], f"{e[2]:.3f}", f"{e[3]:.3f}"])


def generate(
    out: Path, cfg: SynthConfig = SynthConfig(), progress: Callable[[int, int], None] | None = None
) -> dict[str, object]:
    """Write the dataset to ``out``; return a summary. Refuses a non-empty foreign directory."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "SYNTHETIC.md").exists():
        raise FileExistsError(f"{out} is not empty and not a synthetic dataset; choose another --out")
    if cfg.species < 4:
        raise ValueError(f"need at least 4 species (one per taxon class), got {cfg.species}")
    rng = np.random.default_rng(cfg.seed)
    species = make_species(cfg.species, rng)
    total = len(species) * cfg.clips_per_species + cfg.soundscapes + cfg.unlabelled_soundscapes
    done = 0
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "taxonomy.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["primary_label", "inat_taxon_id", "scientific_name", "common_name", "class_name"])
        for i, s in enumerate(species):
            w.writerow([s.code, 900_000 + i, s.scientific_name, s.common_name, s.taxon_class])
    rows = []
    collections = ("XC", "iNat", "CSA")
    catalogue = {c: int(rng.integers(10_000, 20_000)) for c in collections}
    for sp in species:
        for _ in range(cfg.clips_per_species):
            coll = collections[int(rng.choice(3, p=[0.7, 0.25, 0.05]))]
            catalogue[coll] += int(rng.integers(1, 500))
            fname = f"{sp.code}/{coll}{catalogue[coll]}.ogg"
            n = int(rng.uniform(*cfg.clip_seconds) * SR)
            x = _background(n, rng, level=rng.uniform(0.005, 0.03))
            nrms = float(np.sqrt(np.mean(x**2)) + 1e-9)
            pos = 0
            while pos < n:
                call = render_call(sp, rng)
                pos += int(rng.uniform(0.2, 2.0) * SR)
                if pos >= n:
                    break
                _mix(x, call, pos, rng.uniform(0, 18), nrms)
                pos += call.size
            secondary: list[str] = []
            if rng.random() < cfg.secondary_probability:
                other = species[int(rng.integers(len(species)))]
                if other.code != sp.code:
                    _mix(
                        x,
                        render_call(other, rng),
                        int(rng.uniform(0, max(1, n - SR))),
                        rng.uniform(-6, 6),
                        nrms,
                    )
                    secondary.append(other.code)
            if rng.random() < 0.5:
                _mix(x, _distractor(rng), int(rng.uniform(0, max(1, n - SR))), rng.uniform(0, 10), nrms)
            _write(out / "train_audio" / fname, x)
            lat, lon = 6.8 + rng.normal(0, 0.3), -74.0 + rng.normal(0, 0.3)
            rows.append(
                {
                    "primary_label": sp.code,
                    "secondary_labels": str(secondary),
                    "type": "['call']",
                    "filename": fname,
                    "collection": coll,
                    "rating": f"{rng.choice([3.0, 3.5, 4.0, 4.5, 5.0]):.1f}",
                    "url": f"synthetic://{fname}",
                    "latitude": f"{lat:.4f}",
                    "longitude": f"{lon:.4f}",
                    "scientific_name": sp.scientific_name,
                    "common_name": sp.common_name,
                    "author": "silencio synth",
                    "license": "CC0 (synthetic)",
                }
            )
            done += 1
            if progress:
                progress(done, total)
    with open(out / "train.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    # soundscapes with their truth per 5 s window
    codes = [s.code for s in species]

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    events, truth_rows = _soundscapes(out, cfg, cfg.soundscapes, "SYN", "20250101", species, rng, tick)
    _write_truth(out / "soundscape_solution.csv", codes, truth_rows)
    _write_events(out / "soundscape_events.csv", events)
    if cfg.unlabelled_soundscapes:
        u_events, u_rows = _soundscapes(
            out, cfg, cfg.unlabelled_soundscapes, "SYNU", "20250102", species, rng, tick
        )
        # hidden truth: never read by training, only by the pseudo-label quality check
        hidden = out / "hidden_truth"
        hidden.mkdir(exist_ok=True)
        _write_truth(hidden / "unlabelled_solution.csv", codes, u_rows)
        _write_events(hidden / "unlabelled_events.csv", u_events)
    summary = {
        "config": asdict(cfg),
        "species": [asdict(s) for s in species],
        "clips": len(rows),
        "soundscapes": cfg.soundscapes,
        "unlabelled_soundscapes": cfg.unlabelled_soundscapes,
        "events": len(events),
    }
    (out / "synth_config.json").write_text(json.dumps(summary, indent=2))
    (out / "SYNTHETIC.md").write_text(
        "# Synthetic El Silencio dataset\n\nGenerated by `silencio data synth` "
        f"(seed {cfg.seed}, {cfg.species} species). **Synthetic audio, not real animals**: the "
        "species, names and calls are parametric inventions in the BirdCLEF 2025 layout, for "
        "reproducible training, tests and demos. Figures computed on it say nothing about real "
        "species. `soundscape_solution.csv` is the truth of every 5 s soundscape window "
        "(solution format); `soundscape_events.csv` lists every call.\n"
    )
    log.info(
        "synthetic dataset: %d species, %d clips, %d soundscapes → %s",
        len(species),
        len(rows),
        cfg.soundscapes,
        out,
    )
    return summary


# ------------------------------------------------------------------ the closed loop's scenario
def species_of(dataset: Path) -> list[SpeciesSpec]:
    """The species of a synthetic dataset (from its ``synth_config.json``)."""
    summary = json.loads((Path(dataset) / "synth_config.json").read_text())
    return [SpeciesSpec(**s) for s in summary["species"]]


def field_soundscapes(dataset: Path, out: Path, count: int, seed: int) -> tuple[list[Path], Path]:
    """``count`` fresh 60 s soundscapes of ``dataset``'s species, as a guide's later tours would
    record them: drawn like the dataset's soundscapes (same mix, noise and distractors) from their
    own seed, so they are in neither the training data nor the frozen held-out set. Written to
    ``out/train_soundscapes/FIELDnn_….ogg`` with every call in ``out/field_events.csv`` (their truth);
    deterministic for a seed, and an existing complete set is reused. Returns (files, events csv)."""
    out = Path(out)
    events_csv = out / "field_events.csv"
    summary = json.loads((Path(dataset) / "synth_config.json").read_text())
    cfg = SynthConfig(**{**summary["config"], "clip_seconds": tuple(summary["config"]["clip_seconds"])})
    names = [f"FIELD{k:02d}_20250201_{6 + k % 12:02d}0000" for k in range(count)]
    files = [out / "train_soundscapes" / f"{n}.ogg" for n in names]
    if events_csv.exists() and all(f.exists() for f in files):
        return files, events_csv
    rng = np.random.default_rng([seed, 0xF1E1D])
    events, _ = _soundscapes(out, cfg, count, "FIELD", "20250201", species_of(dataset), rng, lambda: None)
    _write_events(events_csv, events)
    return files, events_csv


def whine(n: int, rng: np.random.Generator) -> np.ndarray:
    """The scenario's noise source — not an animal: a machine's whine (a steady tone near 3.4 kHz
    with harmonics and a slow wobble) chopped by a ticking relay, ``[n] float32`` peak 1."""
    t = np.arange(n) / SR
    f = 3400.0 * rng.uniform(0.98, 1.02) * (1 + 0.01 * np.sin(2 * np.pi * 0.7 * t))
    x = _tone(f, 3) * (0.6 + 0.4 * (np.sin(2 * np.pi * 9.0 * t) > 0))
    return (x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def render_clip(
    seconds: float,
    rng: np.random.Generator,
    species: list[SpeciesSpec] | tuple[SpeciesSpec, ...] = (),
    *,
    noise: bool = False,
    snr_db: tuple[float, float] = (6.0, 14.0),
) -> np.ndarray:
    """A field recording of ``seconds``: background, a call bout of each of ``species`` at a random
    time, and with ``noise`` the :func:`whine` over its whole length. ``[n] float32``."""
    n = int(seconds * SR)
    x = _background(n, rng, level=rng.uniform(0.01, 0.02))
    nrms = float(np.sqrt(np.mean(x**2)) + 1e-9)
    for sp in species:
        pos = int(rng.uniform(0.1, 0.5) * SR)
        while pos < n - SR // 2:
            call = render_call(sp, rng)
            _mix(x, call, pos, rng.uniform(*snr_db), nrms)
            pos += call.size + int(rng.uniform(0.2, 1.0) * SR)
    if noise:
        _mix(x, whine(n, rng), 0, rng.uniform(*snr_db), nrms)
    peak = float(np.abs(x).max())
    return (x * (0.9 / peak) if peak > 0.9 else x).astype(np.float32)


def confound(
    dataset: Path,
    code: str,
    *,
    also: SpeciesSpec | None = None,
    noise: bool = False,
    relabel_from: str | None = None,
    relabel: int = 0,
    seed: int = 0,
) -> dict[str, int]:
    """Make a synthetic dataset mislead a model the way real training data does (the closed loop's
    scenario): mix ``also``'s calls (not annotated) and/or the :func:`whine` into every training
    recording of ``code``, and move ``relabel`` recordings of ``relabel_from`` to ``code``'s label
    (a mislabelled archive recording). Rewrites the files and ``train.csv`` in place."""
    dataset = Path(dataset)
    rng = np.random.default_rng(seed)
    with open(dataset / "train.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    moved = 0
    if relabel_from is not None and relabel:
        for r in rows:
            if r["primary_label"] == relabel_from and moved < relabel:
                r["primary_label"] = code
                moved += 1
    mixed = 0
    for r in rows:
        if r["primary_label"] != code or (also is None and not noise):
            continue
        path = dataset / "train_audio" / r["filename"]
        x, _ = soundfile.read(path, dtype="float32")
        nrms = float(np.sqrt(np.mean(x[: SR // 2] ** 2)) + 1e-4)
        if also is not None:
            pos = int(rng.uniform(0.1, 0.8) * SR)
            while pos < x.size - SR // 2:
                call = render_call(also, rng)
                _mix(x, call, pos, rng.uniform(6, 14), nrms)
                pos += call.size + int(rng.uniform(0.3, 1.5) * SR)
        if noise:
            _mix(x, whine(x.size, rng), 0, rng.uniform(8, 14), nrms)
        _write(path, x)
        mixed += 1
    with open(dataset / "train.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return {"mixed": mixed, "relabelled": moved}
