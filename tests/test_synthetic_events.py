"""Procedural events: burst counts and rates, durations, onsets, loudness, distinctness."""

import numpy as np
import pytest

from tagtune.synthetic.events import make_event
from tagtune.synthetic.sourcefilter import active_rms

SR = 24_000
SEEDS = range(8)
HOP_S = 0.005


def envelope_segments(x, rel=0.2, min_gap_s=0.02):
    """Sounding segments (start_s, end_s) from a 5 ms RMS envelope; gaps < 20 ms bridged."""
    hop = int(HOP_S * SR)
    n = len(x) // hop
    env = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1))
    on = np.concatenate([[0], (env > rel * env.max()).astype(int), [0]])
    starts, ends = np.nonzero(np.diff(on) == 1)[0], np.nonzero(np.diff(on) == -1)[0]
    segments = []
    for start, end in zip(starts, ends):
        if segments and (start - segments[-1][1]) * HOP_S < min_gap_s:
            segments[-1][1] = end
        else:
            segments.append([start, end])
    return [(a * HOP_S, b * HOP_S) for a, b in segments]


def pitch_and_voicing(x):
    """Median autocorrelation pitch (Hz) and peak height over the loud 40 ms frames."""
    size, hop = 960, 480
    frames = np.stack([x[i : i + size] for i in range(0, len(x) - size, hop)])
    energy = np.sqrt(np.mean(frames**2, axis=1))
    pitches, peaks = [], []
    for frame in frames[energy > 0.3 * energy.max()]:
        frame = frame - frame.mean()
        ac = np.correlate(frame, frame, "full")[size - 1 :]
        ac = ac / (ac[0] + 1e-12)
        lag = SR // 800 + int(np.argmax(ac[SR // 800 : SR // 70]))
        pitches.append(SR / lag)
        peaks.append(ac[lag])
    return float(np.median(pitches)), float(np.median(peaks))


@pytest.mark.parametrize(
    "kind, counts, rate, burst_s",
    [("giggle", (4, 8), (5.5, 9.0), (0.025, 0.09)), ("laugh", (3, 6), (3.5, 6.0), (0.06, 0.2))],
)
def test_bursts_have_expected_count_rate_and_length(kind, counts, rate, burst_s):
    seen = set()
    for seed in SEEDS:
        segments = envelope_segments(make_event(kind, np.random.default_rng(seed), SR, 0.1))
        assert counts[0] <= len(segments) <= counts[1], (seed, segments)
        onsets = [a for a, _ in segments]
        per_second = (len(onsets) - 1) / (onsets[-1] - onsets[0])
        assert rate[0] <= per_second <= rate[1], (seed, per_second)
        lengths = [b - a for a, b in segments]
        assert burst_s[0] <= min(lengths) and max(lengths) <= burst_s[1], (seed, lengths)
        seen.add(len(segments))
    assert len(seen) >= 3  # the count really varies


def test_sigh_is_one_breath_of_expected_length():
    lengths = []
    for seed in SEEDS:
        x = make_event("sigh", np.random.default_rng(seed), SR, 0.1)
        assert 0.6 <= len(x) / SR <= 1.4
        segments = envelope_segments(x)
        assert len(segments) == 1, segments
        lengths.append(len(x) / SR)
    assert max(lengths) - min(lengths) > 0.2


@pytest.mark.parametrize("kind", ["giggle", "laugh", "sigh"])
def test_every_event_starts_with_a_clear_onset(kind):
    for seed in SEEDS:
        x = make_event(kind, np.random.default_rng(seed), SR, 0.1)
        hop = int(HOP_S * SR)
        env = np.sqrt(np.mean(x[: len(x) // hop * hop].reshape(-1, hop) ** 2, axis=1))
        # sounding (a fifth of the loudest frame) within 10 ms of sample 0
        assert np.argmax(env > 0.2 * env.max()) * HOP_S <= 0.01
        if kind == "sigh":  # a sigh is loudest at its start: half its peak within 30 ms
            assert np.argmax(env > 0.5 * env.max()) * HOP_S <= 0.03
        assert abs(x[0]) < 1e-3  # it rises from silence: no click at the splice


@pytest.mark.parametrize("kind", ["giggle", "laugh", "sigh"])
def test_loudness_sets_active_rms(kind):
    quiet = make_event(kind, np.random.default_rng(3), SR, 0.05)
    loud = make_event(kind, np.random.default_rng(3), SR, 0.2)
    assert active_rms(quiet) == pytest.approx(0.05, rel=1e-3)
    np.testing.assert_allclose(loud, 4 * quiet, rtol=1e-4, atol=1e-6)
    assert quiet.dtype == np.float32


def test_kinds_are_acoustically_distinct():
    giggle, laugh, sigh = (
        [pitch_and_voicing(make_event(k, np.random.default_rng(s), SR, 0.1, f0=200.0)) for s in range(4)]
        for k in ("giggle", "laugh", "sigh")
    )
    assert min(p for p, _ in giggle) > 1.2 * max(p for p, _ in laugh)  # giggles are higher
    assert min(p for p, _ in giggle) > 1.5 * 200.0  # ... and well above the voice
    assert max(v for _, v in sigh) < 0.5 < min(v for _, v in laugh + giggle)  # sighs are breath


def test_pitch_follows_the_voice():
    low, _ = pitch_and_voicing(make_event("giggle", np.random.default_rng(0), SR, 0.1, f0=110.0))
    high, _ = pitch_and_voicing(make_event("giggle", np.random.default_rng(0), SR, 0.1, f0=230.0))
    assert high / low == pytest.approx(230 / 110, rel=0.1)


def test_events_are_deterministic_and_tag_spellings_resolve():
    a = make_event("laughs", np.random.default_rng(7), SR, 0.1)
    b = make_event("laugh", np.random.default_rng(7), SR, 0.1)
    c = make_event("laugh", np.random.default_rng(8), SR, 0.1)
    assert np.array_equal(a, b)
    assert len(a) != len(c) or not np.array_equal(a, c)


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown event kind 'cough'.*giggles"):
        make_event("cough", np.random.default_rng(0), SR, 0.1)
