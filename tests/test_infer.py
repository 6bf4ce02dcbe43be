"""TTS object on the tiny parity fixture: official-compat parity, fast-path equality, caching, seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tagtune.generation import GenerationConfig
from tagtune.synthesis.tts import TTS

MAX_NEW = 40  # the fixture's max_mel_tokens for every generation
HOP = 1024
JOIN_REACH = 24 * HOP  # BigVGAN's receptive field: ~20 latent frames either side of a sentence join




@pytest.fixture(scope="module")
def tts(fixture_dir):
    return TTS.load(fixture_dir / "checkpoint", precision="fp32")


@pytest.fixture(scope="module")
def texts(fixture_dir):
    return [t["text"] for t in json.loads((fixture_dir / "inputs" / "texts.json").read_text())]


@pytest.fixture(scope="module")
def ref_path(fixture_dir):
    return fixture_dir / "inputs" / "ref.wav"


def greedy(**kw) -> GenerationConfig:
    return GenerationConfig.greedy(**{"max_new_tokens": MAX_NEW, **kw})


def test_sentences_are_the_official_ids(tts, texts, expected):
    assert tts.sentences(texts[0]) == [expected["gen_text_ids"][0].tolist()]


def test_reference_matches_fixture_and_is_cached(tts, ref_path, expected):
    ref = tts.reference(ref_path)
    assert tts.reference(ref_path) is ref  # computed once per file
    torch.testing.assert_close(ref.cond_mel, expected["cond_mel"], atol=2e-3, rtol=0)
    torch.testing.assert_close(ref.conds, expected["conds"], atol=1e-4, rtol=0)
    torch.testing.assert_close(ref.speaker, expected["spk_emb"], atol=1e-4, rtol=0)
    assert ref.seconds == pytest.approx(2.5) and not ref.trimmed


def test_compat_reproduces_official_infer(tts, texts, ref_path, expected):
    out = tts.synthesize(texts[0], ref_path, generation=greedy(), compat="official")
    assert [c.tolist() for c in out.codes] == [expected["e2e_codes"][0].tolist()]
    want = expected["e2e_pcm16"][0].numpy()
    assert out.audio.dtype == np.int16 and out.audio.shape == want.shape == (28 * HOP,)
    diff = np.abs(out.audio.astype(np.int64) - want)
    # BigVGAN agrees with the official fp32 run to ~1e-5 (0.3 LSB): int16 truncation then flips a few samples
    assert diff.max() <= 1 and (diff > 0).mean() < 0.05


def test_fast_fp32_greedy_equals_compat(fixture_dir, tts, texts, ref_path):
    fast = TTS(tts.gpt, tts.vocoder, tts.tokenizer, None, precision="fp32", position_mode="official",
               references=tts.references)
    text = " ".join(texts[:3])  # several sentences, generated as one padded batch
    compat = tts.synthesize(text, ref_path, generation=greedy(), compat="official")
    out = fast.synthesize(text, ref_path, generation=greedy())
    assert len(out.sentences) == len(compat.sentences) > 1
    assert [c.tolist() for c in out.codes] == [c.tolist() for c in compat.codes]
    assert len(out.audio) == out.tokens * HOP == len(compat.audio)
    # the fast path vocodes the sentences joined: away from the joins the audio is the compat audio
    far = np.ones(len(out.audio), dtype=bool)
    for join in np.cumsum([len(c) * HOP for c in out.codes])[:-1]:
        far[max(0, join - JOIN_REACH) : join + JOIN_REACH] = False
    diff = np.abs(out.audio.astype(np.int64) - compat.audio)
    assert far.sum() >= 20 * HOP and diff[far].max() <= 2 and diff[~far].max() > 2


def test_train_positions_differ_from_official(tts, texts, ref_path, expected):
    out = tts.synthesize(texts[0], ref_path, generation=greedy())  # default: training positions
    want = expected["codes_greedy_nocache"][0]  # official no-cache path = training positions
    assert out.codes[0].tolist() == want[want != 129].tolist()


def test_seed_makes_sampling_reproducible(tts, texts, ref_path):
    cfg = GenerationConfig(max_new_tokens=20)  # official 3-beam multinomial sampling
    a = tts.synthesize(texts[0], ref_path, generation=cfg, seed=7)
    b = tts.synthesize(texts[0], ref_path, generation=cfg, seed=7)
    c = tts.synthesize(texts[0], ref_path, generation=cfg, seed=8)
    assert np.array_equal(a.audio, b.audio) and len(a.audio) > 0
    assert [x.tolist() for x in a.codes] != [x.tolist() for x in c.codes]


def test_long_text_is_split_within_the_model_limit(tts, ref_path):
    text = " ".join(["This is a fairly long sentence, with a comma, spoken slowly."] * 4)
    ids = tts.sentences(text)
    assert len(ids) >= 4 and max(len(s) for s in ids) <= tts.gpt.cfg.max_text_tokens == 40
    out = tts.synthesize(text, ref_path, generation=greedy(max_new_tokens=4))
    assert len(out.audio) == out.tokens * HOP and len(out.codes) == len(ids)


def test_int8_and_bf16_paths_run(tts, texts, ref_path):
    for precision in ("bf16", "int8"):
        fast = TTS(tts.gpt, tts.vocoder, tts.tokenizer, None, precision=precision, references=tts.references)
        out = fast.synthesize(texts[0], ref_path, generation=greedy(max_new_tokens=8))
        assert fast.fast_gpt is not tts.gpt and len(out.audio) == out.tokens * HOP > 0
