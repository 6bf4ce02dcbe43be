"""Decoding: resampling, mono, trimming, and the reason given for every kind of bad audio or text."""

from __future__ import annotations

import numpy as np
import pytest

from tagtune.data.decode import DecodeSettings, Rejection, codes_for_samples, decode_clip
from tagtune.data.encode import clean_text, encode_text
from test_data_support import ToyTextEncoder, speechy, wav_bytes


def test_stereo_44k_becomes_mono_24k():
    x = speechy(1.0, 44100, channels=2)  # right = 0.8 x left
    wav = decode_clip(wav_bytes(x, 44100, "FLOAT"), DecodeSettings())
    assert wav.dtype == np.float32 and wav.shape == (24000,)
    ref = decode_clip(wav_bytes(x[:, 0] * 0.9, 44100, "FLOAT"), DecodeSettings())
    np.testing.assert_allclose(wav, ref, atol=1e-6)  # channel mean = 0.9 x left


def test_trim_keeps_margin_around_speech():
    x = np.concatenate([np.zeros(24000, np.float32), speechy(1.0), np.zeros(12000, np.float32)])
    wav = decode_clip(wav_bytes(x, subtype="FLOAT"), DecodeSettings(trim_silence=True, trim_margin_s=0.1))
    # speech spans samples 24000..48000: 512-sample frames 46..93 hold some of it; 2400-sample margins
    assert len(wav) == (94 * 512 + 2400) - (46 * 512 - 2400)
    assert decode_clip(wav_bytes(x, subtype="FLOAT"), DecodeSettings()).shape == (60000,)


def test_codes_for_samples_matches_dvae_arithmetic():
    assert [codes_for_samples(n) for n in (28800, 1024 * 10, 1024 * 10 - 1)] == [29, 11, 10]


BAD = {
    "missing": ("/nonexistent/x.wav", "missing_audio"),
    "no bytes": (b"", "empty_audio"),
    "header only": (wav_bytes(np.zeros(0, np.float32)), "empty_audio"),
    "truncated header": (wav_bytes(speechy(1.0))[:30], "undecodable_audio"),
    "text bytes": (b"this is not a wav file at all, just words" * 20, "undecodable_audio"),
    "nan": (wav_bytes(np.where(np.arange(24000) == 5, np.nan, speechy(1.0)).astype(np.float32), subtype="FLOAT"),
            "non_finite_audio"),
    "inf": (wav_bytes(np.where(np.arange(24000) == 9, np.inf, speechy(1.0)).astype(np.float32), subtype="FLOAT"),
            "non_finite_audio"),
    "silence": (wav_bytes(np.zeros(24000, np.float32)), "silent_audio"),
    "1 kHz": (wav_bytes(speechy(1.0, 1000), 1000), "bad_sample_rate"),
    "16 channels": (wav_bytes(speechy(1.0, channels=16)), "too_many_channels"),
    "0.2 s": (wav_bytes(speechy(0.2)), "too_short"),
    "40 s": (wav_bytes(speechy(40.0)), "too_long"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_audio_reasons(case):
    blob, reason = BAD[case]
    out = decode_clip(blob, DecodeSettings(max_codes=800))
    assert isinstance(out, Rejection) and out.reason == reason, out


@pytest.mark.parametrize(
    "raw,reason",
    [("", "empty_text"), (" \t\n ", "empty_text"), (None, "empty_text"), (b"caf\xe9", "undecodable_text"),
     ("caf\udce9", "undecodable_text"), ("bad \ufffd char", "undecodable_text"), ("a § b", "unknown_pieces"),
     ("x" * 11, "text_too_long")],
)
def test_bad_text_reasons(raw, reason):
    out = encode_text(raw, ToyTextEncoder(), max_text_tokens=10)
    assert isinstance(out, Rejection) and out.reason == reason


def test_text_is_cleaned_and_encoded():
    assert clean_text(b"  two\n words ") == "two words"
    enc = encode_text("hi <laughs>", ToyTextEncoder(), max_text_tokens=10)
    assert enc.tags == ["<laughs>"] and enc.ids[-1] == 100 and enc.text == "hi <laughs>"


def test_events_follow_resampling_and_trimming():
    from tagtune.data.decode import DecodedClip, map_events

    clip = DecodedClip(np.zeros(24000, np.float32), source_rate=22050, trim_start=2400)
    events = [{"tag": "<laughs>", "start_sample": 22050, "end_sample": 33075},  # 1.0-1.5 s at 22.05 kHz
              {"tag": "<sighs>", "start_sample": 0, "end_sample": 1000},  # inside the trimmed lead-in
              {"tag": "<bad>", "start_sample": "x", "end_sample": 3}]
    got = map_events(events, clip, 24000, 24000)
    assert got == [{"tag": "<laughs>", "start_sample": 24000 - 2400, "end_sample": 24000}]
    assert map_events("not a list", clip, 24000, 24000) is None
