"""``tagtune serve``: a real server on an ephemeral 127.0.0.1 port, driven by the openai client and httpx.

Outputs are compared with the Python API on the same model, settings and seed (``TTS.synthesize``; for an
adapter, ``TTS.load(base, adapter)``, the adapter merged into plain weights as an export is), within the
streaming tolerance.
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf

from serve_fixtures import make_adapter, running_server
from tagtune.generation import GenerationConfig
from tagtune.serve import build_app
from tagtune.serve.limits import Limits
from tagtune.synthesis.stream import STREAM_TOLERANCE_LSB
from tagtune.synthesis.tts import TTS

TEXT = "Hello, World! This is IndexTTS speaking."
MAX_CODES = 80  # keeps the tiny model's sentences short
TIMEOUT = 300


@pytest.fixture(scope="module")
def adapters(shipped_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-adapters")
    return {"laughing": make_adapter(shipped_base, root / "a", ["<laughs>"], seed=1),
            "giggling": make_adapter(shipped_base, root / "b", ["<giggles>", "<sighs>"], seed=2)}


@pytest.fixture(scope="module")
def server(shipped_base, adapters, reference_wav):
    app = build_app(shipped_base, adapters, {"alice": reference_wav})
    with running_server(app) as url:
        yield url, app.state.scheduler


def _pcm_of_wav(data: bytes) -> np.ndarray:
    audio, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == 24000 and audio.ndim == 1
    return audio


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max(initial=0)) <= STREAM_TOLERANCE_LSB


def _speech(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/audio/speech", json={"voice": "alice", "max_new_tokens": MAX_CODES, **body},
                      timeout=TIMEOUT)


def test_openai_client_gets_the_wav_the_python_api_makes(server, shipped_base, reference_wav):
    import openai

    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=TIMEOUT)
    reply = client.audio.speech.create(model="base", input=TEXT, voice="alice", response_format="wav",
                                       extra_body={"seed": 4, "max_new_tokens": MAX_CODES})
    audio = _pcm_of_wav(reply.read())
    expected = TTS.load(shipped_base, precision="fp32").synthesize(
        TEXT, reference_wav, generation=GenerationConfig(max_new_tokens=MAX_CODES), seed=4)  # 3-beam sampling
    assert len(audio) > 0 and len(audio) % 1024 == 0
    assert _close(audio, expected.audio)
    assert {m.id for m in client.models.list().data} == {"base", "laughing", "giggling"}


def test_stream_starts_before_generation_ends_and_joins_to_the_whole(server):
    url, scheduler = server
    body = {"model": "base", "input": f"{TEXT} Well, that is funny, it costs ten dollars.", "seed": 9,
            "response_format": "pcm", "max_new_tokens": 200}
    whole = np.frombuffer(_speech(url, **body).content, dtype="<i2")
    parts, steps_at_first = [], None
    with httpx.stream("POST", f"{url}/v1/audio/speech", json={"voice": "alice", "stream": True, **body},
                      timeout=TIMEOUT) as reply:
        assert reply.status_code == 200
        for part in reply.iter_raw():
            steps_at_first = scheduler.steps if steps_at_first is None else steps_at_first
            parts.append(part)
    steps_at_end = scheduler.steps
    assert steps_at_first < steps_at_end - 20, "the first audio came only after generation had ended"
    assert _close(np.frombuffer(b"".join(parts), dtype="<i2"), whole)


def test_streamed_wav_has_a_header_then_pcm(server):
    url, _ = server
    with httpx.stream("POST", f"{url}/v1/audio/speech", json={"voice": "alice", "model": "base", "input": TEXT,
                      "stream": True, "seed": 2, "max_new_tokens": MAX_CODES}, timeout=TIMEOUT) as reply:
        data = reply.read()
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt " and data[36:40] == b"data"
    whole = _pcm_of_wav(_speech(url, model="base", input=TEXT, seed=2).content)
    assert _close(np.frombuffer(data[44:], dtype="<i2"), whole)


def test_eight_concurrent_requests_share_decode_steps(server, shipped_base, reference_wav):
    url, scheduler = server
    texts = [f"{w} is funny, it costs ten dollars." for w in ("Hello", "World", "This", "Well", "That", "It",
                                                              "Speaking", "Dollars")]
    widest_before = scheduler.widest
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda t: _speech(url, model="base", input=t, greedy=True), texts))
    assert [r.status_code for r in replies] == [200] * 8
    tts = TTS.load(shipped_base, precision="fp32")
    for text, reply in zip(texts, replies):
        expected = tts.synthesize(text, reference_wav, generation=GenerationConfig.greedy(max_new_tokens=MAX_CODES))
        assert _close(_pcm_of_wav(reply.content), expected.audio), text
    assert scheduler.widest > max(widest_before, 1), "the requests never shared a decode step"


def test_two_adapters_give_the_outputs_of_their_merged_models(server, shipped_base, adapters, reference_wav):
    url, _ = server
    outputs = {}
    for name, tag in (("laughing", "<laughs>"), ("giggling", "<giggles>")):
        text = f"Well {tag} that is funny."
        got = _pcm_of_wav(_speech(url, model=name, input=text, seed=5).content)
        merged = TTS.load(shipped_base, adapters[name], precision="fp32")
        expected = merged.synthesize(text, reference_wav, generation=GenerationConfig(max_new_tokens=MAX_CODES),
                                     seed=5)
        assert _close(got, expected.audio), name
        outputs[name] = got
    plain = {n: _pcm_of_wav(_speech(url, model=n, input=TEXT, greedy=True).content) for n in ("laughing", "base")}
    assert not _close(plain["laughing"], plain["base"]), "the adapter changed nothing"
    reply = _speech(url, model="base", input="Well <giggles> that is funny.")
    assert reply.status_code == 400 and "giggles" in reply.json()["error"]["message"]


@pytest.mark.parametrize(("settings", "anchor"), [({"tag_guidance": 3.0}, False),
                                                 ({"tag_guidance": 3.0, "anchor_share": 0.5}, True)])
def test_guided_requests_give_the_python_apis_audio(server, shipped_base, adapters, reference_wav, settings, anchor):
    """Guided decoding batched across lanes: a guided request (its adapter's tagged and tag-free rows, anchored
    also the base's) decodes beside a plain request on another lane, each as the Python API decodes it alone."""
    url, _ = server
    tagged, plain = "Well <laughs> that is funny. It costs ten dollars.", "That is funny, it costs ten dollars."
    guided = {"model": "laughing", "input": tagged, "seed": 7, "base_anchor": anchor, **settings}
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda body: _speech(url, **body),
                                [guided, {"model": "giggling", "input": plain, "seed": 3}]))
    assert [r.status_code for r in replies] == [200, 200], replies[0].text
    tts = TTS.load(shipped_base, adapters["laughing"], precision="fp32",
                   base_anchor=shipped_base if anchor else None)
    expected = tts.synthesize(tagged, reference_wav, seed=7,
                              generation=GenerationConfig(max_new_tokens=MAX_CODES, **settings))
    got = _pcm_of_wav(replies[0].content)
    assert _close(got, expected.audio)
    unguided = _pcm_of_wav(_speech(url, model="laughing", input=tagged, seed=7).content)
    assert not _close(got, unguided), "guidance changed nothing"
    other = TTS.load(shipped_base, adapters["giggling"], precision="fp32").synthesize(
        plain, reference_wav, generation=GenerationConfig(max_new_tokens=MAX_CODES), seed=3)
    assert _close(_pcm_of_wav(replies[1].content), other.audio)


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "nobody"}, 404, "model"),
    ({"tag_guidance": 0.5}, 400, "tag_guidance"),
    ({"tag_guidance": 11}, 400, "tag_guidance"),
    ({"anchor_share": 1.5, "base_anchor": True}, 400, "anchor_share"),
    ({"anchor_share": 0.5}, 400, "anchor_share"),
    ({"input": "  "}, 400, "input"),
    ({"input": "x" * 3000}, 400, "input"),
    ({"voice": "bob"}, 400, "voice"),
    ({"response_format": "mp3"}, 400, "response_format"),
    ({"seed": -3}, 400, "seed"),
    ({"speed": 2.0}, 400, "speed"),
    ({"max_new_tokens": 10**6}, 400, "max_new_tokens"),
    ({"inptu": "typo"}, 400, "inptu"),
    ({"input": None}, 400, "input"),
])
def test_bad_requests_get_a_json_error(server, body, status, param):
    url, _ = server
    reply = httpx.post(f"{url}/v1/audio/speech", json={"model": "base", "input": TEXT, "voice": "alice", **body},
                       timeout=TIMEOUT)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert error["param"] == param and len(error["message"]) > 10


def test_voice_upload_checks_and_serves(server, reference_wav, tmp_path):
    url, _ = server
    data = reference_wav.read_bytes()
    assert httpx.post(f"{url}/v1/voices", params={"name": "carol"}, content=data).status_code == 201
    assert "carol" in {v["id"] for v in httpx.get(f"{url}/v1/voices").json()["data"]}
    reply = _speech(url, model="base", input=TEXT, voice="carol", seed=1)
    assert reply.status_code == 200 and _close(_pcm_of_wav(reply.content),
                                               _pcm_of_wav(_speech(url, model="base", input=TEXT, seed=1).content))
    garbage = httpx.post(f"{url}/v1/voices", params={"name": "dave"}, content=b"not audio at all" * 100)
    assert garbage.status_code == 400 and garbage.json()["error"]["message"]
    long = tmp_path / "long.wav"
    sf.write(long, np.tile(sf.read(reference_wav)[0], 20), 24000)  # ~50 s
    assert httpx.post(f"{url}/v1/voices", params={"name": "eve"}, content=long.read_bytes()).status_code == 413
    assert httpx.post(f"{url}/v1/voices", params={"name": "alice"}, content=data).status_code == 409
    assert httpx.post(f"{url}/v1/voices", params={"name": "no/slash"}, content=data).status_code == 400


def test_health_and_readiness(server):
    url, _ = server
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{url}/ready").json()["status"] == "ready"


def test_full_queue_gives_429_and_the_server_keeps_serving(shipped_base, reference_wav):
    limits = Limits(max_active=1, max_queue=1)
    app = build_app(shipped_base, voices={"alice": reference_wav}, limits=limits)
    long = {"model": "base", "voice": "alice", "greedy": True, "max_new_tokens": 300,
            "input": "Well, that is funny, it costs ten dollars. " * 4}
    with running_server(app) as url:
        first_chunk, release = threading.Event(), threading.Event()

        def busy():
            with httpx.stream("POST", f"{url}/v1/audio/speech", json={**long, "stream": True},
                              timeout=TIMEOUT) as reply:
                for _ in reply.iter_raw():
                    first_chunk.set()
                return reply.status_code

        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(busy)
            assert first_chunk.wait(TIMEOUT)
            queued = pool.submit(lambda: httpx.post(f"{url}/v1/audio/speech", json=long, timeout=TIMEOUT))
            while httpx.get(f"{url}/ready").json()["waiting"] < 1:
                assert not queued.done()
            refused = httpx.post(f"{url}/v1/audio/speech", json=long, timeout=TIMEOUT)
            release.set()
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
            assert running.result() == 200 and queued.result().status_code == 200
        after = httpx.post(f"{url}/v1/audio/speech", json={**long, "max_new_tokens": 20}, timeout=TIMEOUT)
        assert after.status_code == 200 and len(_pcm_of_wav(after.content)) > 0


def test_request_time_limit_gives_504(shipped_base, reference_wav):
    app = build_app(shipped_base, voices={"alice": reference_wav}, limits=Limits(request_timeout=0.2))
    with running_server(app) as url:
        reply = _speech(url, model="base", input="Well, that is funny, it costs ten dollars. " * 4, greedy=True,
                        max_new_tokens=300)
        assert reply.status_code == 504 and "time limit" in reply.json()["error"]["message"]
        assert httpx.get(f"{url}/health").status_code == 200
