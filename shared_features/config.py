"""``FeatureConfig``: the one, fingerprinted definition of audio → log-mel.

Every model carries the ``to_dict()`` of the config it was trained with and its ``fingerprint()``;
every loader compares that fingerprint with the code's (:func:`check_fingerprint`).

Why ``hop_length`` is 500 and not the customary 512: windows start every ``window_stride_seconds``
(2.5 s on the edge, 5 s for BirdCLEF scoring). At 32 kHz a hop of 500 samples is exactly 64 frames
per second, so every window starting on a 0.5 s boundary starts on an STFT frame boundary too.
That lets the streaming path compute each frame once and share it between overlapping windows
while returning bit-for-bit the windows of the batch path. With 512 (16 ms) a 2.5 s stride is
156.25 frames and no frame could be shared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from shared_features.errors import FeatureConfigError, FingerprintMismatchError

#: Bump when the *code* of the recipe changes (filterbank, framing, log, normalisation) in a way
#: that changes the numbers for the same config. The golden-vector test enforces it.
FEATURE_VERSION = 1

LogScale = Literal["db", "none"]
Normalization = Literal["standardize", "none"]

# Fields that only decide *which* windows are taken, not the numbers inside a window, and the
# preset's name. They are saved with the config but left out of the fingerprint, so an edge
# device may use a 2.5 s stride with a model trained on a 5 s stride.
_NOT_FINGERPRINTED = frozenset({"name", "window_stride_seconds", "min_final_window_seconds"})


@dataclass(frozen=True)
class FeatureConfig:
    """How audio becomes a log-mel spectrogram. Immutable; compare configs by ``fingerprint()``.

    A window of ``window_seconds`` gives ``[n_mels, n_frames]`` float32 features with
    ``n_frames = 1 + (window_samples - n_fft) // hop_length`` (frames lie wholly inside the
    window: no centre padding, so a window's features depend only on its own samples).
    """

    name: str = "default"
    sample_rate: int = 32_000
    window_seconds: float = 5.0
    window_stride_seconds: float = 5.0
    min_final_window_seconds: float = 1.0
    n_fft: int = 2048
    hop_length: int = 500
    n_mels: int = 128
    fmin: float = 50.0
    fmax: float = 14_000.0
    power: float = 2.0
    log_scale: LogScale = "db"
    amin: float = 1e-10
    top_db: float | None = 80.0
    normalization: Normalization = "standardize"
    norm_eps: float = 1e-6
    resample_quality: str = "HQ"

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.sample_rate <= 0:
            problems.append(f"sample_rate must be positive, got {self.sample_rate}")
        if self.window_seconds <= 0:
            problems.append(f"window_seconds must be positive, got {self.window_seconds}")
        if not 0 < self.window_stride_seconds:
            problems.append(f"window_stride_seconds must be positive, got {self.window_stride_seconds}")
        if self.n_fft <= 0 or self.hop_length <= 0:
            problems.append(f"n_fft and hop_length must be positive, got {self.n_fft}, {self.hop_length}")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            problems.append(
                f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin}, fmax={self.fmax}, "
                f"sample_rate={self.sample_rate}"
            )
        if self.n_mels <= 0:
            problems.append(f"n_mels must be positive, got {self.n_mels}")
        if self.log_scale not in ("db", "none"):
            problems.append(f"log_scale must be 'db' or 'none', got {self.log_scale!r}")
        if self.normalization not in ("standardize", "none"):
            problems.append(f"normalization must be 'standardize' or 'none', got {self.normalization!r}")
        if self.power not in (1.0, 2.0):
            problems.append(f"power must be 1.0 or 2.0, got {self.power}")
        if self.window_samples < self.n_fft:
            problems.append(
                f"window_seconds={self.window_seconds} gives {self.window_samples} samples, "
                f"fewer than n_fft ({self.n_fft})"
            )
        if abs(self.window_seconds * self.sample_rate - round(self.window_seconds * self.sample_rate)) > 1e-6:
            problems.append(f"window_seconds * sample_rate must be whole samples, got {self.window_seconds}")
        if problems:
            raise FeatureConfigError("invalid FeatureConfig: " + "; ".join(problems))

    # ----------------------------------------------------------------- derived sizes
    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * self.sample_rate))

    @property
    def stride_samples(self) -> int:
        return int(round(self.window_stride_seconds * self.sample_rate))

    @property
    def n_frames(self) -> int:
        """STFT frames per window."""
        return 1 + (self.window_samples - self.n_fft) // self.hop_length

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def frames_shareable(self) -> bool:
        """True when every window starts on the hop grid, so the streaming path can share frames."""
        return self.stride_samples % self.hop_length == 0

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["feature_version"] = FEATURE_VERSION
        d["fingerprint"] = self.fingerprint()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureConfig:
        """Rebuild a config; refuses unknown keys and a stored fingerprint that does not match."""
        data = dict(data)
        stored_fp = data.pop("fingerprint", None)
        data.pop("feature_version", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise FeatureConfigError(f"unknown FeatureConfig keys: {unknown}")
        cfg = cls(**data)
        if stored_fp is not None and stored_fp != cfg.fingerprint():
            raise FingerprintMismatchError(
                f"stored fingerprint {stored_fp} does not match this code's {cfg.fingerprint()} "
                f"(FEATURE_VERSION {FEATURE_VERSION}): the features were computed by another recipe"
            )
        return cfg

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureConfig:
        return cls.from_dict(json.loads(text))

    def canonical(self) -> dict[str, Any]:
        """The fields that determine a window's numbers, plus FEATURE_VERSION."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_FINGERPRINTED}
        d = {k: (float(v) if isinstance(v, float) else v) for k, v in d.items()}
        d["feature_version"] = FEATURE_VERSION
        return d

    def fingerprint(self) -> str:
        """Stable hash of :meth:`canonical`: ``fv<FEATURE_VERSION>-<16 hex digits>``."""
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return f"fv{FEATURE_VERSION}-" + hashlib.sha256(blob.encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> FeatureConfig:
        return dataclasses.replace(self, **changes)


def check_fingerprint(expected: str, cfg: FeatureConfig | None = None, what: str = "model") -> None:
    """Raise :class:`FingerprintMismatchError` unless ``expected`` equals ``cfg``'s fingerprint."""
    cfg = cfg or DEFAULT
    if expected != cfg.fingerprint():
        raise FingerprintMismatchError(
            f"{what} was built for features {expected!r} but this code computes "
            f"{cfg.fingerprint()!r} for preset {cfg.name!r}; retrain or re-export it"
        )


DEFAULT = FeatureConfig()

#: PANNs CNN14 recipe (32 kHz, 1024/320, 64 mels, 50–14000 Hz), for loading PANNs checkpoints.
PANNS = FeatureConfig(
    name="panns",
    n_fft=1024,
    hop_length=320,
    n_mels=64,
    fmin=50.0,
    fmax=14_000.0,
    top_db=None,
    normalization="none",
)

#: The edge device's default: the default recipe with a 2.5 s stride (same fingerprint).
EDGE = DEFAULT.replace(name="edge", window_stride_seconds=2.5)

PRESETS: dict[str, FeatureConfig] = {c.name: c for c in (DEFAULT, PANNS, EDGE)}


def get_preset(name: str) -> FeatureConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise FeatureConfigError(f"unknown feature preset {name!r}; known: {sorted(PRESETS)}") from None
