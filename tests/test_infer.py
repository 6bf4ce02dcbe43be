"""TTS object: fast-path equality, caching, seeds and limits on the shipped base; official-compat parity on the
tiny fixture."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tagtune.generation import GenerationConfig, generate_codes
from tagtune.synthesis.tts import TTS

MAX_NEW = 40  # the fixture's max_mel_tokens for every generation
HOP = 1024
JOIN_REACH = 24 * HOP  # BigVGAN's receptive field: ~20 latent frames either side of a sentence join
TEXTS = ["Hello, World! This is IndexTTS speaking.", "你好，世界。我们在测试语音合成。",
         "IndexTTS 是一个语音合成模型, it's great!"]  # the fixture's first three texts
LONG_SENTENCE = "This is a fairly long sentence, with a comma, spoken slowly."
SENTENCE_TOKENS = 40  # the fixture's max_text_tokens: TEXTS become several sentences


@pytest.fixture(scope="module")
def tts(shipped_base):
    return TTS.load(shipped_base, precision="fp32")


@pytest.fixture(scope="module")
def official_tts(fixture_dir):
    return TTS.load(fixture_dir / "checkpoint", precision="fp32")


@pytest.fixture(scope="module")
def texts(fixture_dir):
    return [t["text"] for t in json.loads((fixture_dir / "inputs" / "texts.json").read_text())]


@pytest.fixture(scope="module")
def ref_path(fixture_dir):
    return fixture_dir / "inputs" / "ref.wav"


def greedy(**kw) -> GenerationConfig:
    """Argmax decoding as the fixture's greedy runs made it (repetition penalty 1.0)."""
    return GenerationConfig.greedy(**{"max_new_tokens": MAX_NEW, "repetition_penalty": 1.0, **kw})


def test_sentences_are_the_official_ids(official_tts, texts, expected):
    assert official_tts.sentences(texts[0]) == [expected["gen_text_ids"][0].tolist()]


def test_reference_is_computed_once_per_file(tts, reference_wav, base_inputs):
    ref = tts.reference(reference_wav)
    assert tts.reference(reference_wav) is ref  # computed once per file
    torch.testing.assert_close(ref.cond_mel, base_inputs["cond_mel"], atol=1e-6, rtol=0)
    torch.testing.assert_close(ref.conds, base_inputs["conds"], atol=1e-5, rtol=0)
    with torch.no_grad():
        speaker = tts.vocoder.speaker_embedding(base_inputs["cond_mel"].transpose(1, 2))
    torch.testing.assert_close(ref.speaker, speaker, atol=1e-5, rtol=0)
    assert ref.seconds == pytest.approx(2.5) and not ref.trimmed


def test_reference_matches_fixture(official_tts, ref_path, expected):
    ref = official_tts.reference(ref_path)
    torch.testing.assert_close(ref.cond_mel, expected["cond_mel"], atol=2e-3, rtol=0)
    torch.testing.assert_close(ref.conds, expected["conds"], atol=1e-4, rtol=0)
    torch.testing.assert_close(ref.speaker, expected["spk_emb"], atol=1e-4, rtol=0)
    assert ref.seconds == pytest.approx(2.5) and not ref.trimmed


def test_compat_reproduces_official_infer(official_tts, texts, ref_path, expected):
    out = official_tts.synthesize(texts[0], ref_path, generation=greedy(), compat="official")
    assert [c.tolist() for c in out.codes] == [expected["e2e_codes"][0].tolist()]
    want = expected["e2e_pcm16"][0].numpy()
    assert out.audio.dtype == np.int16 and out.audio.shape == want.shape == (28 * HOP,)
    diff = np.abs(out.audio.astype(np.int64) - want)
    # BigVGAN agrees with the official fp32 run to ~1e-5 (0.3 LSB): int16 truncation then flips a few samples
    assert diff.max() <= 1 and (diff > 0).mean() < 0.05


def test_fast_fp32_greedy_equals_compat(tts, reference_wav):
    short = {"precision": "fp32", "references": tts.references, "max_sentence_tokens": SENTENCE_TOKENS}
    fast = TTS(tts.gpt, tts.vocoder, tts.tokenizer, None, position_mode="official", **short)
    text = " ".join(TEXTS)  # several sentences, generated as one padded batch
    compat = TTS(tts.gpt, tts.vocoder, tts.tokenizer, None, **short).synthesize(
        text, reference_wav, generation=greedy(), compat="official")
    out = fast.synthesize(text, reference_wav, generation=greedy())
    assert len(out.sentences) == len(compat.sentences) > 1
    assert [c.tolist() for c in out.codes] == [c.tolist() for c in compat.codes]
    assert len(out.audio) == out.tokens * HOP == len(compat.audio)
    # the fast path vocodes the sentences joined: away from the joins the audio is the compat audio
    far = np.ones(len(out.audio), dtype=bool)
    for join in np.cumsum([len(c) * HOP for c in out.codes])[:-1]:
        far[max(0, join - JOIN_REACH) : join + JOIN_REACH] = False
    diff = np.abs(out.audio.astype(np.int64) - compat.audio)
    assert far.sum() >= 20 * HOP and diff[far].max() <= 2 and diff[~far].max() > 2


def test_train_positions_differ_from_official(official_tts, texts, ref_path, expected):
    out = official_tts.synthesize(texts[0], ref_path, generation=greedy())  # default: training positions
    want = expected["codes_greedy_nocache"][0]  # official no-cache path = training positions
    assert out.codes[0].tolist() == want[want != 129].tolist()


def test_default_positions_are_the_training_ones(tts, reference_wav):
    out = tts.synthesize(TEXTS[0], reference_wav, generation=greedy())  # default: training positions
    conds = tts.reference(reference_wav).conds
    ids = torch.tensor(tts.sentences(TEXTS[0]))
    want, n = generate_codes(tts.gpt, ids, greedy(use_cache=False, position_mode="train"), conds=conds)
    assert out.codes[0].tolist() == want[0, : int(n[0])].tolist()


def test_seed_makes_sampling_reproducible(tts, reference_wav):
    cfg = GenerationConfig(max_new_tokens=20)  # official 3-beam multinomial sampling
    a = tts.synthesize(TEXTS[0], reference_wav, generation=cfg, seed=7)
    b = tts.synthesize(TEXTS[0], reference_wav, generation=cfg, seed=7)
    c = tts.synthesize(TEXTS[0], reference_wav, generation=cfg, seed=8)
    assert np.array_equal(a.audio, b.audio) and len(a.audio) > 0
    assert [x.tolist() for x in a.codes] != [x.tolist() for x in c.codes]


def test_long_text_is_split_within_the_model_limit(tts, reference_wav):
    per_sentence = len(tts.sentences(LONG_SENTENCE)[0])
    text = " ".join([LONG_SENTENCE] * (3 * tts.gpt.cfg.max_text_tokens // per_sentence + 1))
    ids = tts.sentences(text)
    assert len(ids) >= 4 and max(len(s) for s in ids) <= tts.gpt.cfg.max_text_tokens
    out = tts.synthesize(text, reference_wav, generation=greedy(max_new_tokens=4))
    assert len(out.audio) == out.tokens * HOP and len(out.codes) == len(ids)


def test_int8_and_bf16_paths_run(tts, reference_wav):
    for precision in ("bf16", "int8"):
        fast = TTS(tts.gpt, tts.vocoder, tts.tokenizer, None, precision=precision, references=tts.references)
        out = fast.synthesize(TEXTS[0], reference_wav, generation=greedy(max_new_tokens=8))
        assert fast.fast_gpt is not tts.gpt and len(out.audio) == out.tokens * HOP > 0
