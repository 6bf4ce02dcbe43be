"""IndexTTS2 synthesis through the TTS object and `tagtune synth`: the official end-to-end PCM of the
indextts2-tiny fixture in compat mode, the emotion settings, segments, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from tagtune.audio_v2 import mel_frames_for_codes
from tagtune.cli import main
from tagtune.errors import UserError
from tagtune.generation.v2 import official_v2
from tagtune.synthesis.qwen_emotion import emotion_weights, parse_answer
from tagtune.synthesis.tts import TTS
from tagtune.synthesis.tts_v2 import INTERVAL_SILENCE_MS, TTSV2, EmotionError, parse_emotion_vector
from v2_fixture import PCM_LSB, V2_CHECKPOINT, V2_FIXTURE, expected, require_v2

SEED = 1234  # the fixture's seed before every CFM.inference
GREEDY_COMPAT = {"top_k": 1, "num_beams": 1, "max_new_tokens": 40}  # the fixture's end-to-end decoding


@pytest.fixture(scope="module")
def tts() -> TTSV2:
    require_v2()
    return TTS.load(V2_CHECKPOINT)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [t["text"] for t in json.loads((require_v2() / "inputs" / "texts.json").read_text(encoding="utf-8"))]


def ref(name: str):
    return V2_FIXTURE / "inputs" / name


def assert_pcm(audio: np.ndarray, run: str):
    want = expected(f"{run}_pcm16")[0]
    got = torch.from_numpy(np.asarray(audio, dtype=np.int64))
    assert got.shape == want.shape
    assert (got - want).abs().max() <= PCM_LSB


def test_tts_load_gives_the_v2_object(tts):
    assert isinstance(tts, TTSV2) and tts.sample_rate == 22050


@pytest.mark.parametrize("run, speaker, text, options", [
    ("a_en", "ref_a_24k.wav", 0, {}),
    ("b_emovec_zh", "ref_b_22k.wav", 1, {"emo_vector": [0, 0, 0.3, 0, 0, 0, 0.2, 0]}),
])
def test_compat_official_reproduces_the_official_pcm(tts, texts, run, speaker, text, options):
    out = tts.synthesize(texts[text], ref(speaker), generation=official_v2(**GREEDY_COMPAT), seed=SEED,
                         compat="official", **options)
    assert out.sample_rate == 22050
    assert len(out.codes) == 1 and torch.equal(out.codes[0], expected(f"{run}_codes")[0])
    assert_pcm(out.audio, run)


def test_cli_synth_with_an_emotion_reference_reproduces_the_official_pcm(tmp_path, texts, capsys):
    require_v2()
    out = tmp_path / "b_emoref_en.wav"
    rc = main(["synth", "--model", str(V2_CHECKPOINT), "--ref", str(ref("ref_b_22k.wav")), "--text", texts[0],
               "--out", str(out), "--emo-ref", str(ref("ref_a_16k.wav")), "--emo-alpha", "0.6", "--compat",
               "official", "--seed", str(SEED), "--top-k", "1", "--num-beams", "1", "--max-new-tokens", "40"])
    assert rc == 0 and f"wrote {out}" in capsys.readouterr().out
    audio, rate = sf.read(out, dtype="int16")
    assert rate == 22050
    assert_pcm(audio, "b_emoref_en")


def test_the_emotion_reference_changes_the_speech_and_seeds_reproduce(tts, texts):
    cfg = official_v2(do_sample=False, num_beams=1, max_new_tokens=12)
    plain = tts.synthesize(texts[0], ref("ref_b_22k.wav"), generation=cfg, seed=1)
    again = tts.synthesize(texts[0], ref("ref_b_22k.wav"), generation=cfg, seed=1)
    emotional = tts.synthesize(texts[0], ref("ref_b_22k.wav"), emotion=ref("ref_a_16k.wav"), generation=cfg, seed=1)
    assert np.array_equal(plain.audio, again.audio)
    assert not np.array_equal(plain.audio, emotional.audio)


def test_alpha_blends_the_speaker_and_emotion_vectors(tts):
    from tagtune.models.v2.gpt import feature_width_lengths as width

    speaker = tts.speaker(ref("ref_b_22k.wav"))
    emo = tts.emotion_features(ref("ref_a_16k.wav"))
    spk = speaker.spk_cond_emb
    with torch.no_grad():
        own, other = tts.gpt.get_emovec(spk, width(spk)), tts.gpt.get_emovec(emo, width(emo))
        for alpha in (0.0, 0.6, 1.0):
            got = tts.emotion_vector(speaker, emo, alpha)
            assert (got - (own + alpha * (other - own))).abs().max() < 1e-5
    assert (own - other).abs().max() > 1e-2


def test_segments_are_joined_with_the_official_silence(tts, texts):
    cfg = official_v2(do_sample=False, num_beams=1, max_new_tokens=8)
    out = tts.synthesize(texts[1], ref("ref_a_24k.wav"), generation=cfg, seed=3, max_sentence_tokens=12)
    assert len(out.sentences) > 1 and len(out.codes) > 1
    gap = int(22050 * INTERVAL_SILENCE_MS / 1000)
    frames = [int(mel_frames_for_codes(torch.tensor([len(c)]))[0]) for c in out.codes]
    assert len(out.audio) == sum(256 * f for f in frames) + gap * (len(frames) - 1)
    first = 256 * frames[0]
    assert not out.audio[first: first + gap].any()


def test_emotion_vectors_are_checked_and_parsed():
    assert parse_emotion_vector("0,0,0.3,0,0,0,0.2,0") == [0, 0, 0.3, 0, 0, 0, 0.2, 0]
    with pytest.raises(EmotionError, match="needs 8 values"):
        parse_emotion_vector("0.5,0.5")
    with pytest.raises(EmotionError, match="finite and >= 0"):
        parse_emotion_vector("0,0,-1,0,0,0,0,0")


@pytest.mark.parametrize("options, message", [
    ({"emo_alpha": 1.5}, r"emo_alpha must be in \[0, 1\]"),
    ({"emo_vector": [1, 2, 3]}, "needs 8 values"),
    ({"emo_text": "so happy"}, "no QwenEmotion model here"),
    ({"compat": "v1"}, "unknown compat mode"),
])
def test_bad_emotion_settings_are_one_clear_error(tts, texts, options, message):
    with pytest.raises(UserError, match=message):
        tts.synthesize(texts[0], ref("ref_a_24k.wav"), **options)


def test_a_tag_the_base_model_does_not_know_is_refused(tts, texts):
    with pytest.raises(UserError, match="giggles"):
        tts.synthesize(texts[3], ref("ref_a_24k.wav"))


def test_cli_errors_are_one_line(tmp_path, texts, capsys, shipped_base):
    require_v2()
    args = ["synth", "--model", str(V2_CHECKPOINT), "--ref", str(ref("ref_a_24k.wav")), "--text", texts[0],
            "--out", str(tmp_path / "x.wav")]
    assert main([*args, "--emo-vector", "1,2"]) == 2
    assert "needs 8 values" in capsys.readouterr().err
    assert main([*args, "--emo-text", "angry"]) == 2
    assert "QwenEmotion" in capsys.readouterr().err
    v1 = ["synth", "--model", str(shipped_base), "--ref", str(ref("ref_a_24k.wav")), "--text", "hello",
          "--out", str(tmp_path / "y.wav"), "--emo-alpha", "0.5"]
    assert main(v1) == 2
    assert "need an IndexTTS-2 model" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists() and not (tmp_path / "y.wav").exists()


@pytest.mark.parametrize("answer, text, weights", [
    ('{"高兴": 0.8, "惊讶": 0.3}', "what a day", [0.8, 0, 0, 0, 0, 0, 0.3, 0]),
    ('{"emotion": "angry"}', "grr", [0, 1.0, 0, 0, 0, 0, 0, 0]),
    ('高兴: 2.0, 悲伤: 0.4', "a gloomy day", [1.2, 0, 0, 0, 0, 0.4, 0, 0]),  # clamped; sad read as melancholic
    ("{}", "nothing", [0, 0, 0, 0, 0, 0, 0, 1.0]),  # nothing found: calm
])
def test_qwen_emotion_answers_become_the_official_weights(answer, text, weights):
    assert emotion_weights(parse_answer(answer), text) == weights


def test_web_page_speaks_with_an_emotion_vector(tts, texts, tmp_path):
    """The page's /synthesize endpoint with the IndexTTS-2 emotion fields gives what the TTS object gives."""
    pytest.importorskip("gradio")
    pytest.importorskip("gradio_client")
    import os
    import socket

    from gradio_client import Client, handle_file

    from tagtune.webui import build_demo

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    gen = official_v2(do_sample=False, num_beams=1, max_new_tokens=12)
    demo = build_demo(tts, generation=gen, stream=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}", verbose=False)
        vector = "0, 0, 0.3, 0, 0, 0, 0.2, 0"
        wav, _ = client.predict(handle_file(str(ref("ref_b_22k.wav"))), texts[1], False, 30, 0.8, 0.8, 1, 10.0, 12,
                                1.0, 0.0, 80, 5, None, 1.0, vector, "", api_name="/synthesize")
        with pytest.raises(Exception, match="needs 8 values"):
            client.predict(handle_file(str(ref("ref_b_22k.wav"))), texts[1], False, 30, 0.8, 0.8, 1, 10.0, 12,
                           1.0, 0.0, 80, 5, None, 1.0, "1, 2", "", api_name="/synthesize")
    finally:
        demo.close()
    want = tts.synthesize(texts[1], ref("ref_b_22k.wav"), generation=gen, seed=5,
                          emo_vector=parse_emotion_vector(vector))
    got, rate = sf.read(wav, dtype="int16")
    assert rate == 22050 and np.array_equal(got, want.audio)


def test_batch_file_items_carry_their_own_emotion(tts, texts, tmp_path, capsys):
    require_v2()
    import shutil

    for name in ("ref_b_22k.wav", "ref_a_16k.wav"):
        shutil.copy(ref(name), tmp_path / name)
    vector = [0, 0, 0.3, 0, 0, 0, 0.2, 0]
    lines = [{"text": texts[1], "ref": "ref_b_22k.wav", "out": "vec.wav", "seed": 2, "emo_vector": vector},
             {"text": texts[0], "ref": "ref_b_22k.wav", "out": "emo.wav", "seed": 2, "emo_ref": "ref_a_16k.wav",
              "emo_alpha": 0.6}]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines), encoding="utf-8")
    common = ["synth", "--model", str(V2_CHECKPOINT), "--greedy", "--max-new-tokens", "10", "--precision", "fp32"]
    assert main([*common, "--batch", str(batch)]) == 0
    gen = official_v2(do_sample=False, num_beams=1, max_new_tokens=10)
    fp32 = TTSV2(tts.model)
    for item, options in zip(lines, ({"emo_vector": vector}, {"emotion": ref("ref_a_16k.wav"), "emo_alpha": 0.6}),
                             strict=True):
        want = fp32.synthesize(item["text"], ref("ref_b_22k.wav"), generation=gen, seed=2, **options)
        got, rate = sf.read(tmp_path / item["out"], dtype="int16")
        assert rate == 22050 and np.array_equal(got, want.audio)
    lines[1]["emo_alpha"] = "high"
    batch.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines), encoding="utf-8")
    assert main([*common, "--batch", str(batch)]) == 2
    assert f"{batch}:2: emo_alpha must be a number" in capsys.readouterr().err


def _tiny_qwen_emotion(folder):
    """A random 1-layer Qwen3 chat model with a character-level tokenizer, saved as a QwenEmotion folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    vocab = {"<pad>": 0, "<|im_end|>": 1, "</think>": 2}
    for piece in ['"高兴"', '"惊讶"', "0.5", "0.25", *"{}:, abcdefghijklmnopqrstuvwxyz<>|_/\n文本情感分类"]:
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>",
                                   additional_special_tokens=["</think>"])
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and "
        "not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, eos_token_id=1, pad_token_id=0)
    Qwen3ForCausalLM(config).save_pretrained(folder)
    return vocab


def test_qwen_emotion_reads_the_answer_after_thinking(tmp_path):
    from tagtune.synthesis.qwen_emotion import QwenEmotion

    vocab = _tiny_qwen_emotion(tmp_path)
    qwen = QwenEmotion.load(tmp_path)
    reply = ["x", "</think>", "{", '"高兴"', ":", "0.5", ",", '"惊讶"', ":", "0.25", "}", "<|im_end|>"]
    generate = qwen.model.generate

    def scripted(**inputs):  # the real model runs once; its answer is replaced by a scripted one
        prompt = inputs["input_ids"]
        assert generate(**{**inputs, "max_new_tokens": 2, "min_new_tokens": 2}).shape[1] == prompt.shape[1] + 2
        return torch.cat([prompt, torch.tensor([[vocab[p] for p in reply]])], dim=1)

    qwen.model.generate = scripted
    assert qwen.answer("what a surprise") == '{"高兴":0.5,"惊讶":0.25}'
    assert qwen.weights("what a surprise") == [0.5, 0, 0, 0, 0, 0, 0.25, 0]


def test_emotion_text_uses_the_folders_qwen_emotion(tmp_path, texts, monkeypatch):
    from tagtune.synthesis import qwen_emotion

    require_v2()
    folder = tmp_path / "IndexTTS-2"
    folder.mkdir()
    for item in V2_CHECKPOINT.iterdir():
        (folder / item.name).symlink_to(item)
    _tiny_qwen_emotion(folder / "qwen0.6bemo4-merge")
    heard = []
    vector = [0, 0, 0.3, 0, 0, 0, 0.2, 0]
    monkeypatch.setattr(qwen_emotion.QwenEmotion, "weights", lambda self, text: heard.append(text) or vector)
    tts = TTS.load(folder, precision="fp32")
    gen = official_v2(do_sample=False, num_beams=1, max_new_tokens=10)
    got = tts.synthesize(texts[1], ref("ref_b_22k.wav"), emo_text="", generation=gen, seed=4)
    want = tts.synthesize(texts[1], ref("ref_b_22k.wav"), emo_vector=vector, generation=gen, seed=4)
    assert heard == [texts[1]]  # an empty description means the text itself
    assert np.array_equal(got.audio, want.audio)
