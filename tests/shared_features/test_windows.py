from __future__ import annotations

import numpy as np
import pytest

from shared_features import DEFAULT, EDGE, count_windows, frame_windows, window_times

SR = 32_000


@pytest.mark.parametrize(
    "seconds,expected",
    [
        (0.5, 1),
        (4.9, 1),
        (5.0, 1),
        (5.9, 1),
        (6.0, 2),
        (10.0, 2),
        (60.0, 12),
        (61.5, 13),
    ],
)
def test_window_policy_stride5(seconds, expected):
    assert count_windows(int(seconds * SR), DEFAULT) == expected


@pytest.mark.parametrize("seconds,expected", [(5.0, 1), (7.5, 2), (60.0, 23), (61.0, 24), (60.5, 23)])
def test_window_policy_stride2_5(seconds, expected):
    assert count_windows(int(seconds * SR), EDGE) == expected


def test_times_and_padding():
    x = np.ones(int(7.0 * SR), np.float32)
    wins, times = frame_windows(x)
    assert wins.shape == (2, 160_000)
    assert times[1].start == 5.0 and times[1].end == 10.0 and times[1].valid == pytest.approx(2.0)
    assert wins[1, : 2 * SR].min() == 1 and wins[1, 2 * SR :].max() == 0
    assert [w.end_second for w in window_times(60 * SR)] == list(range(5, 65, 5))


def test_empty():
    assert count_windows(0) == 0
