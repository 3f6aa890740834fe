"""shared_features: the one place where audio becomes features, and the label space.

Imports nothing of the project and never torch (the torch path is
:mod:`shared_features.mel_torch`, imported on demand).
"""

from shared_features.audio import (
    AudioInfo,
    AudioQuality,
    audio_info,
    audio_quality,
    iter_audio_chunks,
    load_audio,
    resample,
)
from shared_features.config import (
    DEFAULT,
    EDGE,
    FEATURE_VERSION,
    PANNS,
    PRESETS,
    FeatureConfig,
    check_fingerprint,
    get_preset,
)
from shared_features.errors import (
    AudioDecodeError,
    AudioError,
    AudioTooLongError,
    AudioTooShortError,
    ClippedAudioError,
    EmptyAudioError,
    FeatureConfigError,
    FingerprintMismatchError,
    InvalidSamplesError,
    LabelError,
    SilencioFeatureError,
    SilentAudioError,
    UnsupportedFormatError,
)
from shared_features.labels import (
    DEFAULT_TAXONOMY,
    LabelSpace,
    Species,
    parse_secondary_labels,
    taxonomy_path,
)
from shared_features.mel import features_from_audio, log_mel, mel_filterbank
from shared_features.streaming import StreamingLogMel, iter_window_features
from shared_features.windows import Window, count_windows, frame_windows, window_times

__all__ = [
    "AudioDecodeError",
    "AudioError",
    "AudioInfo",
    "AudioQuality",
    "AudioTooLongError",
    "AudioTooShortError",
    "ClippedAudioError",
    "DEFAULT",
    "EDGE",
    "EmptyAudioError",
    "FEATURE_VERSION",
    "FeatureConfig",
    "FeatureConfigError",
    "FingerprintMismatchError",
    "InvalidSamplesError",
    "LabelError",
    "DEFAULT_TAXONOMY",
    "LabelSpace",
    "taxonomy_path",
    "PANNS",
    "PRESETS",
    "SilencioFeatureError",
    "SilentAudioError",
    "Species",
    "StreamingLogMel",
    "UnsupportedFormatError",
    "Window",
    "audio_info",
    "audio_quality",
    "check_fingerprint",
    "count_windows",
    "features_from_audio",
    "frame_windows",
    "get_preset",
    "iter_audio_chunks",
    "iter_window_features",
    "load_audio",
    "log_mel",
    "mel_filterbank",
    "parse_secondary_labels",
    "resample",
    "window_times",
]
__version__ = "0.1.0"
