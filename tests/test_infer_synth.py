"""``synth_command`` end to end on the shipped base: wav files, the batch file, and every error a user can hit;
compat mode's samples against the official ones on the tiny fixture."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import soundfile as sf

from tagtune.errors import UserError
from tagtune.synthesis.jobs import BatchFileError, read_batch_file, synth_command
from tagtune.synthesis.reference import ReferenceAudioError, ReferenceCache
from tagtune.synthesis.tts import TTS, TextError
from tagtune.tags import TagSet, UnknownTagError, add_tag_pieces
from tagtune.text import TextTokenizer

HOP = 1024
TEXT = "Hello, World! This is IndexTTS speaking."
FAST = {"greedy": True, "max_new_tokens": 6, "precision": "fp32"}  # short, deterministic runs


@pytest.fixture(scope="module")
def ckpt(shipped_base):
    return shipped_base


@pytest.fixture(scope="module")
def ref(reference_wav):
    return reference_wav


@pytest.fixture(scope="module")
def tts(ckpt):
    return TTS.load(ckpt, precision="fp32")


def read_wav(path):
    info = sf.info(str(path))
    audio, rate = sf.read(str(path), dtype="int16")
    return info, audio, rate


def test_synth_writes_a_24k_pcm16_wav_of_the_code_length(ckpt, ref, tmp_path):
    out = tmp_path / "a.wav"
    assert synth_command(ckpt, ref=ref, text=TEXT, out=out, **FAST) == [out]
    info, audio, rate = read_wav(out)
    assert (rate, info.channels, info.subtype) == (24000, 1, "PCM_16")
    assert len(audio) == 6 * HOP and np.abs(audio).max() > 0  # 6 codes, no stop within 6 steps


def test_compat_greedy_writes_the_official_samples(fixture_dir, tmp_path, expected):
    out = tmp_path / "compat.wav"
    synth_command(fixture_dir / "checkpoint", ref=fixture_dir / "inputs" / "ref.wav", text=TEXT, out=out,
                  compat="official", greedy=True, repetition_penalty=1.0, max_new_tokens=40)  # as the fixture ran
    _, audio, _ = read_wav(out)
    want = expected["e2e_pcm16"][0].numpy()
    assert audio.shape == want.shape and np.abs(audio.astype(np.int64) - want).max() <= 1


def test_batch_file(ckpt, ref, tmp_path):
    lines = [
        {"text": TEXT, "ref": str(ref), "out": "one.wav", "seed": 3, "num_beams": 1, "max_new_tokens": 5},
        {"text": "你好，世界。", "ref": str(ref), "out": "sub/two.wav", "seed": 3, "max_new_tokens": 7},
    ]
    batch = tmp_path / "items.jsonl"
    batch.write_text("# comment\n" + "\n".join(json.dumps(x) for x in lines) + "\n\n")
    written = synth_command(ckpt, batch=batch, precision="fp32")
    assert written == [tmp_path / "one.wav", tmp_path / "sub" / "two.wav"]
    lengths = [len(read_wav(p)[1]) for p in written]
    assert 0 < lengths[0] <= 5 * HOP and 0 < lengths[1] <= 7 * HOP and lengths[0] % HOP == lengths[1] % HOP == 0
    again = synth_command(ckpt, batch=batch, precision="fp32")  # the seeds make it reproducible
    assert all(np.array_equal(read_wav(a)[1], read_wav(b)[1]) for a, b in zip(written, again))


@pytest.mark.parametrize("line, message", [
    ("{not json", "items.jsonl:2: not valid JSON"),
    ('{"text": "hi", "ref": "r.wav"}', "items.jsonl:2: missing or empty out"),
    ('{"text": "hi", "ref": "r.wav", "out": "o.wav", "beams": 2}', "unknown keys ['beams']"),
    ('{"text": "hi", "ref": "r.wav", "out": "o.wav", "top_p": 1.5}', "items.jsonl:2: invalid sampling"),
    ('{"text": "hi", "ref": "r.wav", "out": "o.wav", "seed": "x"}', "seed must be an integer"),
])
def test_batch_file_errors_name_the_line(tmp_path, line, message):
    batch = tmp_path / "items.jsonl"
    batch.write_text('{"text": "ok", "ref": "r.wav", "out": "o.wav"}\n' + line + "\n")
    with pytest.raises(BatchFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_batch_file(batch)


def test_missing_and_unreadable_reference(ckpt, tts, tmp_path):
    with pytest.raises(ReferenceAudioError, match="nope.wav: not found"):
        synth_command(ckpt, ref=tmp_path / "nope.wav", text=TEXT, out=tmp_path / "o.wav", **FAST)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF not really a wav file" * 10)
    with pytest.raises(ReferenceAudioError, match="junk.wav: cannot decode"):
        tts.synthesize(TEXT, junk)
    assert not (tmp_path / "o.wav").exists()


def test_short_reference_fails_and_long_one_is_trimmed(tts, ref, tmp_path, caplog):
    audio, rate = sf.read(str(ref), dtype="int16")
    short = tmp_path / "short.wav"
    sf.write(str(short), audio[: rate // 2], rate, subtype="PCM_16")
    with pytest.raises(ReferenceAudioError, match="0.50 s long; at least 1 s"):
        tts.reference(short)
    cache = ReferenceCache(tts.gpt, tts.vocoder, tts.references.mel, max_seconds=2.0)
    with caplog.at_level(logging.WARNING):
        trimmed = cache.get(ref)
    assert trimmed.trimmed and trimmed.seconds == 2.0 and "using its first 2 s" in caplog.text
    assert trimmed.cond_mel.shape[-1] == 2 * rate // 256 + 1


def test_empty_text(tts, ref):
    for text in ("", "   \n"):
        with pytest.raises(TextError, match="empty"):
            tts.synthesize(text, ref)


def test_unknown_tag_lists_known_tags(tts, ref, ckpt):
    with pytest.raises(UnknownTagError, match=r"unknown tag <giggles>; known tags: \(none\)"):
        tts.synthesize("<giggles> Hello there.", ref)
    model, _ = add_tag_pieces(ckpt / "bpe.model", ["<laughs>", "<sighs>"])
    tagged = TextTokenizer(model, tagset=TagSet(["<laughs>", "<sighs>"]))
    tagged_tts = TTS(tts.gpt, tts.vocoder, tagged, None, references=tts.references)
    with pytest.raises(UnknownTagError, match="known tags: <laughs>, <sighs>"):
        tagged_tts.sentences("Well <giggles> that is funny.")
    ids = tagged_tts.sentences("Well <laugh> that is funny. <sighs>")  # variant merged; lone tag kept whole
    vocab = tts.tokenizer.vocab_size  # the tags' ids follow the base vocabulary
    assert len(ids) == 1 and {vocab, vocab + 1} <= set(ids[0])


def test_command_level_errors_are_user_errors(ckpt, ref, tmp_path):
    cases = [
        dict(ref=ref, text=TEXT),  # no --out
        dict(ref=ref, batch=tmp_path / "b.jsonl", text=TEXT),
        dict(ref=ref, text=TEXT, out=tmp_path / "o.wav", compat="fastest"),
        dict(ref=ref, text=TEXT, out=tmp_path / "o.wav", adapter=tmp_path / "no-adapter"),
        dict(ref=ref, text=TEXT, out=tmp_path / "o.wav", top_k=-1),
    ]
    for kwargs in cases:
        with pytest.raises(UserError):
            synth_command(ckpt, **kwargs)
    with pytest.raises(UserError, match="not a folder"):
        synth_command(tmp_path / "missing-model", ref=ref, text=TEXT, out=tmp_path / "o.wav")
