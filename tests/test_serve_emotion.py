"""IndexTTS-2 emotion settings through ``tagtune serve``: ``emo_voice``, ``emo_alpha``, ``emo_vector``, ``emo_text``.

A request's audio is compared with ``TTSV2.synthesize`` given the same emotion keywords, model, decoding and seed
(within the streaming tolerance, as tests/test_serve_v2.py compares the default emotion), and the server's
emotion vector with synthesize's; each setting must change that vector, and an emotion vector the audio
(the tiny base's emotion encoder barely tells clips apart, so an emotion reference moves the audio very little).
Unusable settings are refused with a 400 naming the field, before anything is decoded.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch

from base_fixtures import babble_clip
from serve_fixtures import V2_RATE, running_server, v2_pcm, within_stream_tolerance
from tagtune.folders import shipped_base_v2
from tagtune.generation import GenerationConfig
from tagtune.serve import build_app
from tagtune.serve.limits import Limits
from tagtune.synthesis.tts import TTS

TEXT = "Well, that is funny."
MAX_CODES = 40  # the tiny model's segments stay short
TIMEOUT = 300
SEED = 5
VECTOR = [0, 0, 0.3, 0, 0, 0, 0.2, 0]  # sad and surprised
MAX_TEXT_CHARS = 200


@pytest.fixture(scope="module")
def base_v2() -> Path:
    return shipped_base_v2()


@pytest.fixture(scope="module")
def emotion_wav(tmp_path_factory) -> Path:
    """A second clip (other words than the speaker reference) to serve as the emotion reference."""
    path = tmp_path_factory.mktemp("emotion") / "emotion.wav"
    sf.write(path, babble_clip(24000, text="Oh no, not again, why does this always happen to me?"), 24000,
             subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def server(base_v2, reference_wav, emotion_wav):
    app = build_app(base_v2, None, {"alice": reference_wav, "moody": emotion_wav},
                    limits=Limits(max_text_chars=MAX_TEXT_CHARS))
    with running_server(app) as url:
        yield url, app.state.scheduler


@pytest.fixture(scope="module")
def server_v1(shipped_base, reference_wav):
    with running_server(build_app(shipped_base, None, {"alice": reference_wav})) as url:
        yield url


@pytest.fixture(scope="module")
def tts(base_v2):
    return TTS.load(base_v2, precision="fp32")



def _speech(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/audio/speech", json={"model": "base", "input": TEXT, "voice": "alice",
                                                      "max_new_tokens": MAX_CODES, "greedy": True, "seed": SEED,
                                                      **body}, timeout=TIMEOUT)


def _spoken(url: str, **body) -> np.ndarray:
    reply = _speech(url, **body)
    assert reply.status_code == 200, reply.text
    return v2_pcm(reply.content)


def _synthesized(tts, reference, **emotion) -> np.ndarray:
    out = tts.synthesize(TEXT, reference, generation=GenerationConfig.greedy(max_new_tokens=MAX_CODES), seed=SEED,
                         **emotion)
    assert out.sample_rate == V2_RATE
    return out.audio


def _spy(monkeypatch, tts) -> list[tuple]:
    """Record every ``tts.emotion_vector`` call: (emotion prompt features, alpha, weights, emotion vector)."""
    calls, original = [], tts.emotion_vector

    def spy(speaker, emo_cond_emb, emo_alpha=1.0, weights=None):
        out = original(speaker, emo_cond_emb, emo_alpha, weights)
        calls.append((emo_cond_emb, emo_alpha, weights, out))
        return out

    monkeypatch.setattr(tts, "emotion_vector", spy)
    return calls


@pytest.fixture(scope="module")
def default(server) -> np.ndarray:
    """The base's audio for TEXT without emotion settings."""
    return _spoken(server[0])


@pytest.fixture(scope="module")
def default_emovec(tts, reference_wav) -> torch.Tensor:
    """The speaker's own emotion vector: what a request without emotion settings speaks with."""
    return tts.emotion_vector(tts.speaker(reference_wav), tts.emotion_features(reference_wav))


@pytest.mark.slow
def test_without_emotion_settings_the_audio_is_the_default(server, tts, reference_wav, default_emovec,
                                                           monkeypatch):
    url, scheduler = server
    calls = _spy(monkeypatch, scheduler.shared.tts["base"])
    got = _spoken(url)
    assert len(got) > 0 and within_stream_tolerance(got, _synthesized(tts, reference_wav))
    ((_, alpha, weights, emovec),) = calls
    assert alpha == 1.0 and weights is None and torch.equal(emovec, default_emovec)


@pytest.mark.slow
@pytest.mark.parametrize(("body", "keywords"), [
    ({"emo_voice": "moody"}, {"emotion": "moody"}),
    ({"emo_voice": "moody", "emo_alpha": 0.6}, {"emotion": "moody", "emo_alpha": 0.6}),
    ({"emo_vector": VECTOR}, {"emo_vector": VECTOR}),
    ({"emo_vector": VECTOR, "emo_alpha": 0.5}, {"emo_vector": VECTOR, "emo_alpha": 0.5}),
    ({"emo_voice": "moody", "emo_vector": VECTOR}, {"emotion": "moody", "emo_vector": VECTOR}),  # the vector wins
])
def test_emotion_settings_give_the_python_apis_audio(server, default, default_emovec, tts, reference_wav,
                                                     emotion_wav, body, keywords, monkeypatch):
    url, scheduler = server
    keywords = {k: (emotion_wav if v == "moody" else v) for k, v in keywords.items()}
    served, local = _spy(monkeypatch, scheduler.shared.tts["base"]), _spy(monkeypatch, tts)
    got = _spoken(url, **body)
    assert len(got) > 0 and within_stream_tolerance(got, _synthesized(tts, reference_wav, **keywords))
    # the same emotion prompt, alpha, weights and vector as synthesize (the tiny base's emotion encoder barely
    # tells clips apart, so an emotion reference moves the vector, and the audio, very little)
    ((features, alpha, weights, emovec),), ((features_0, alpha_0, weights_0, emovec_0),) = served, local
    assert torch.equal(features, features_0) and (alpha, weights) == (alpha_0, weights_0)
    assert torch.equal(emovec, emovec_0) and not torch.equal(emovec, default_emovec)
    if "emo_vector" in body:
        assert not within_stream_tolerance(got, default), "the emotion vector changed nothing"


@pytest.mark.slow
def test_alpha_alone_keeps_the_speakers_emotion(server, default, default_emovec, monkeypatch):
    url, scheduler = server
    calls = _spy(monkeypatch, scheduler.shared.tts["base"])
    assert within_stream_tolerance(_spoken(url, emo_alpha=0.3), default)
    ((_, alpha, weights, emovec),) = calls  # as synthesize: no emotion prompt means alpha 1
    assert alpha == 1.0 and weights is None and torch.equal(emovec, default_emovec)


@pytest.mark.slow
def test_an_uploaded_voice_is_an_emotion_reference(server, tts, reference_wav, emotion_wav, monkeypatch):
    url, scheduler = server
    upload = httpx.post(f"{url}/v1/voices", params={"name": "upset"}, content=emotion_wav.read_bytes())
    assert upload.status_code == 201, upload.text
    calls = _spy(monkeypatch, scheduler.shared.tts["base"])
    got = _spoken(url, emo_voice="upset", emo_alpha=0.8)
    assert within_stream_tolerance(got, _synthesized(tts, reference_wav, emotion=emotion_wav, emo_alpha=0.8))
    ((features, alpha, _, _),) = calls
    assert alpha == 0.8 and torch.equal(features, tts.emotion_features(emotion_wav))
    assert not torch.equal(features, tts.emotion_features(reference_wav))


@pytest.mark.slow
def test_streamed_emotion_joins_to_the_whole(server):
    url, _ = server
    body = {"model": "base", "input": f"{TEXT} It costs ten dollars, my friend.", "voice": "alice",
            "max_new_tokens": MAX_CODES, "seed": 2, "emo_vector": VECTOR}
    whole = v2_pcm(httpx.post(f"{url}/v1/audio/speech", json=body, timeout=TIMEOUT).content)
    with httpx.stream("POST", f"{url}/v1/audio/speech", json={**body, "stream": True}, timeout=TIMEOUT) as reply:
        data = reply.read()
    assert data[:4] == b"RIFF" and within_stream_tolerance(np.frombuffer(data[44:], dtype="<i2"), whole)
    default = v2_pcm(httpx.post(f"{url}/v1/audio/speech", json={**body, "emo_vector": None}, timeout=TIMEOUT).content)
    assert not within_stream_tolerance(whole, default)


def _raw(url: str, text: str) -> httpx.Response:
    """A body as written (JSON with NaN, which httpx's ``json=`` may refuse to send)."""
    return httpx.post(f"{url}/v1/audio/speech", content=text.encode(), headers={"content-type": "application/json"},
                      timeout=TIMEOUT)


def _refused(reply: httpx.Response, param: str, words: str) -> None:
    assert reply.status_code == 400, (reply.status_code, reply.headers.get("content-type"))
    error = reply.json()["error"]
    assert error["param"] == param, error
    assert words in error["message"] and "\n" not in error["message"], error["message"]
    assert "Traceback" not in reply.text


@pytest.mark.slow
@pytest.mark.parametrize(("body", "param", "words"), [
    ({"emo_vector": [1, 2, 3]}, "emo_vector", "needs 8 values"),
    ({"emo_vector": [0.1] * 9}, "emo_vector", "needs 8 values"),
    ({"emo_vector": [0, 0, -0.5, 0, 0, 0, 0, 0]}, "emo_vector", "finite and >= 0"),
    ({"emo_vector": "0,0,0.3,0,0,0,0.2,0"}, "emo_vector", "list"),
    ({"emo_alpha": 1.5}, "emo_alpha", "[0, 1]"),
    ({"emo_alpha": -0.1, "emo_voice": "moody"}, "emo_alpha", "[0, 1]"),
    ({"emo_text": "so happy"}, "emo_text", "QwenEmotion"),
    ({"emo_text": ""}, "emo_text", "QwenEmotion"),
    ({"emo_text": "x" * (MAX_TEXT_CHARS + 1)}, "emo_text", "limit"),
    ({"emo_voice": "bob"}, "emo_voice", "not known"),
    ({"emo_voice": "moody", "emo_vector": [1]}, "emo_vector", "needs 8 values"),
])
def test_unusable_emotion_settings_are_refused(server, body, param, words):
    url, scheduler = server
    steps = scheduler.steps
    _refused(_speech(url, **body), param, words)
    assert scheduler.steps == steps, "a refused request was decoded"


@pytest.mark.slow
@pytest.mark.parametrize(("field", "value", "words"), [
    ("emo_vector", "[0, NaN, 0, 0, 0, 0, 0, 0]", "finite and >= 0"),
    ("emo_vector", "[0, Infinity, 0, 0, 0, 0, 0, 0]", "finite and >= 0"),
    ("emo_alpha", "NaN", "[0, 1]"),
])
def test_non_finite_numbers_are_refused(server, field, value, words):
    url, _ = server
    body = json.dumps({"model": "base", "input": TEXT, "voice": "alice"})[:-1] + f', "{field}": {value}}}'
    _refused(_raw(url, body), field, words)


@pytest.mark.slow
def test_the_server_keeps_serving_after_refusals(server):
    url, _ = server
    _refused(_speech(url, emo_vector=[1, 2]), "emo_vector", "needs 8 values")
    assert len(_spoken(url, emo_vector=VECTOR)) > 0


@pytest.mark.slow
@pytest.mark.parametrize("body", [
    {"emo_vector": VECTOR},
    {"emo_voice": "alice"},
    {"emo_alpha": 0.5},
    {"emo_text": "happy"},
])
def test_emotion_settings_are_refused_on_a_1x_model(server_v1, body):
    reply = httpx.post(f"{server_v1}/v1/audio/speech", json={"model": "base", "input": "Hello there.",
                                                            "voice": "alice", **body}, timeout=TIMEOUT)
    (field,) = body
    _refused(reply, field, "IndexTTS-2")


def _folder_with_qwen_emotion(base: Path, folder: Path) -> Path:
    """The tiny v2 base plus a QwenEmotion folder (its model is replaced in the test)."""
    folder.mkdir()
    for item in base.iterdir():
        (folder / item.name).symlink_to(item)
    (folder / "qwen0.6bemo4-merge").mkdir()
    (folder / "qwen0.6bemo4-merge" / "config.json").write_text("{}")
    return folder


class _ScriptedQwen:
    """Stands in for QwenEmotion: records what it was asked and answers VECTOR."""

    def __init__(self, heard: list[str]):
        self.heard = heard

    def weights(self, text: str) -> list[float]:
        self.heard.append(text)
        if text == "unreadable":
            raise ValueError("QwenEmotion answered a non-numeric score")
        return list(VECTOR)


@pytest.mark.slow
def test_emotion_text_goes_through_the_folders_qwen_emotion(base_v2, reference_wav, tmp_path, monkeypatch):
    from tagtune.synthesis import qwen_emotion

    folder = _folder_with_qwen_emotion(base_v2, tmp_path / "IndexTTS-2")
    heard: list[str] = []
    monkeypatch.setattr(qwen_emotion.QwenEmotion, "load", classmethod(lambda cls, *a, **k: _ScriptedQwen(heard)))
    with running_server(build_app(folder, None, {"alice": reference_wav})) as url:
        described = _spoken(url, emo_text="quietly furious", emo_alpha=0.7)
        assert heard == ["quietly furious"]
        itself = _spoken(url, emo_text="")
        assert heard[1:] == [TEXT]  # an empty description means the input text
        assert within_stream_tolerance(itself, _spoken(url, emo_vector=VECTOR))
        assert not within_stream_tolerance(itself, _spoken(url))
    tts = TTS.load(folder, precision="fp32")
    expected = _synthesized(tts, reference_wav, emo_text="quietly furious", emo_alpha=0.7)
    assert within_stream_tolerance(described, expected)
    assert within_stream_tolerance(itself, _synthesized(tts, reference_wav, emo_text=""))


@pytest.mark.slow
def test_a_failing_emotion_model_fails_its_request_only(base_v2, reference_wav, tmp_path, monkeypatch):
    """An error inside QwenEmotion is that request's 500 at once; the server goes on serving the others."""
    from tagtune.synthesis import qwen_emotion

    folder = _folder_with_qwen_emotion(base_v2, tmp_path / "IndexTTS-2")
    monkeypatch.setattr(qwen_emotion.QwenEmotion, "load", classmethod(lambda cls, *a, **k: _ScriptedQwen([])))
    with running_server(build_app(folder, None, {"alice": reference_wav})) as url:
        reply = httpx.post(f"{url}/v1/audio/speech", json={"model": "base", "input": TEXT, "voice": "alice",
                                                           "emo_text": "unreadable", "max_new_tokens": MAX_CODES},
                           timeout=60)
        assert reply.status_code == 500 and "preparing this request" in reply.text
        assert len(_spoken(url, emo_text="calm")) > 0
