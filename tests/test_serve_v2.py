"""``tagtune serve`` on an IndexTTS-2 base: the shipped tiny v2 base and a tag adapter on one loaded GPT.

Outputs are compared with the Python API on the same model, settings and seed (``TTS.load(base, adapter)``, the
adapter merged into plain weights as an export is), within the streaming tolerance, as tests/test_serve.py does
for 1.x. A v2 request's audio is 22.05 kHz and comes a segment at a time (``serve.v2``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from serve_fixtures import V2_RATE, make_adapter, running_server, v2_pcm, within_stream_tolerance
from tagtune.folders import shipped_base_v2
from tagtune.generation import GenerationConfig
from tagtune.generation.v2 import official_v2
from tagtune.serve import build_app
from tagtune.serve.models import AdapterError
from tagtune.synthesis.tts import TTS

TEXT = "Well, that is funny."
TAGGED = "Well <giggles> that is funny."
MAX_CODES = 40  # the tiny model's segments stay short
TIMEOUT = 300


def _as_exported(adapter: Path, base: Path) -> Path:
    """Record the base in the adapter's description, as ``export --adapter-only`` does."""
    meta_file = adapter / "tagtune_adapter.json"
    meta = json.loads(meta_file.read_text())
    meta["base"] = {"dir": str(base), "fingerprint": "test"}
    meta_file.write_text(json.dumps(meta))
    return adapter


@pytest.fixture(scope="module")
def base_v2() -> Path:
    return shipped_base_v2()


@pytest.fixture(scope="module")
def adapter_v2(base_v2, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve-v2-adapter")
    return _as_exported(make_adapter(base_v2, root / "a", ["<giggles>"], seed=1), base_v2)


@pytest.fixture(scope="module")
def server(base_v2, adapter_v2, reference_wav):
    app = build_app(base_v2, {"giggling": adapter_v2}, {"alice": reference_wav})
    with running_server(app) as url:
        yield url, app.state.scheduler



def _speech(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/audio/speech", json={"voice": "alice", "max_new_tokens": MAX_CODES, **body},
                      timeout=TIMEOUT)


@pytest.mark.slow
def test_base_and_adapter_give_the_python_apis_audio(server, base_v2, adapter_v2, reference_wav):
    url, _ = server
    assert {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]} == {"base", "giggling"}
    cases = [("base", None, TEXT, True), ("giggling", adapter_v2, TAGGED, False)]
    outputs = {}
    for name, adapter, text, greedy in cases:
        reply = _speech(url, model=name, input=text, seed=5, greedy=greedy)
        assert reply.status_code == 200, reply.text
        got = v2_pcm(reply.content)
        tts = TTS.load(base_v2, adapter, precision="fp32")
        make = GenerationConfig.greedy if greedy else official_v2
        expected = tts.synthesize(text, reference_wav, generation=make(max_new_tokens=MAX_CODES), seed=5)
        assert expected.sample_rate == V2_RATE and len(got) > 0
        assert within_stream_tolerance(got, expected.audio), name
        outputs[name] = got
    plain = v2_pcm(_speech(url, model="giggling", input=TEXT, greedy=True, seed=5).content)
    assert not within_stream_tolerance(plain, outputs["base"]), "the adapter changed nothing"


@pytest.mark.slow
def test_streamed_wav_is_22k_and_joins_to_the_whole(server):
    url, _ = server
    body = {"model": "giggling", "input": f"{TAGGED} It costs ten dollars, my friend.", "seed": 2}
    whole = v2_pcm(_speech(url, **body).content)
    with httpx.stream("POST", f"{url}/v1/audio/speech", json={"voice": "alice", "stream": True,
                      "max_new_tokens": MAX_CODES, **body}, timeout=TIMEOUT) as reply:
        data = reply.read()
    assert data[:4] == b"RIFF" and int.from_bytes(data[24:28], "little") == V2_RATE
    assert within_stream_tolerance(np.frombuffer(data[44:], dtype="<i2"), whole)


@pytest.mark.slow
@pytest.mark.parametrize(("body", "status", "param", "words"), [
    ({"model": "base", "input": TAGGED}, 400, "input", "giggles"),  # the base has no tags
    ({"model": "giggling", "input": "Well <laughs> ok."}, 400, "input", "laughs"),
    ({"model": "giggling", "input": "  "}, 400, "input", "empty"),
    ({"model": "giggling", "input": "x" * 3000}, 400, "input", "limit"),
    ({"model": "giggling", "voice": "bob"}, 400, "voice", "not known"),
    ({"model": "nobody"}, 404, "model", "does not exist"),
])
def test_bad_requests_get_the_1x_rejections(server, body, status, param, words):
    url, _ = server
    reply = httpx.post(f"{url}/v1/audio/speech", json={"input": TEXT, "voice": "alice", **body}, timeout=TIMEOUT)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert error["param"] == param and words in error["message"] and "\n" not in error["message"]


@pytest.mark.slow
def test_bad_reference_is_refused_and_the_server_keeps_serving(server):
    url, _ = server
    garbage = httpx.post(f"{url}/v1/voices", params={"name": "dave"}, content=b"not audio at all" * 100)
    assert garbage.status_code == 400 and "\n" not in garbage.json()["error"]["message"]
    silent = io.BytesIO()
    sf.write(silent, np.zeros(24000 * 2, np.float32), 24000, format="WAV", subtype="PCM_16")
    reply = httpx.post(f"{url}/v1/voices", params={"name": "quiet"}, content=silent.getvalue())
    if reply.status_code == 201:  # accepted at upload: the speaker prompt must refuse it with one line
        spoken = _speech(url, model="base", input=TEXT, voice="quiet", greedy=True)
        assert spoken.status_code == 400 and "\n" not in spoken.json()["error"]["message"]
    else:
        assert reply.status_code == 400
    assert _speech(url, model="base", input=TEXT, greedy=True).status_code == 200


def test_adapters_of_the_other_family_are_refused(base_v2, shipped_base, tmp_path):
    v1_adapter = _as_exported(make_adapter(shipped_base, tmp_path / "v1", ["<giggles>"], seed=1), shipped_base)
    v2_adapter = _as_exported(make_adapter(base_v2, tmp_path / "v2", ["<giggles>"], seed=1), base_v2)
    for base, adapter, words in ((base_v2, v1_adapter, "IndexTTS 1.x adapter"),
                                 (shipped_base, v2_adapter, "IndexTTS-2 adapter")):
        with pytest.raises(AdapterError) as e:
            build_app(base, {"tagged": adapter})
        message = str(e.value)
        assert words in message and "cannot be served" in message and "\n" not in message


@pytest.mark.slow
def test_concurrent_requests_share_decode_steps(server, base_v2, reference_wav):
    from concurrent.futures import ThreadPoolExecutor

    url, scheduler = server
    texts = [f"{w} is funny, it costs ten dollars." for w in ("Hello", "World", "This", "That")]
    widest_before = scheduler.widest
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda t: _speech(url, model="base", input=t, greedy=True, seed=len(t)), texts))
    assert [r.status_code for r in replies] == [200] * 4
    tts = TTS.load(base_v2, precision="fp32")
    for text, reply in zip(texts, replies):
        expected = tts.synthesize(text, reference_wav, generation=GenerationConfig.greedy(max_new_tokens=MAX_CODES),
                                  seed=len(text))  # the flow-matching noise needs a seed, even with greedy codes
        assert within_stream_tolerance(v2_pcm(reply.content), expected.audio), text
    assert scheduler.widest > max(widest_before, 1), "the requests never shared a decode step"


@pytest.mark.slow
def test_anchored_guidance_gives_the_python_apis_audio(server, base_v2, adapter_v2, reference_wav):
    """The base's own 34-position prefix anchors a v2 request, as ``TTSV2.synthesize`` with ``base_anchor``."""
    url, _ = server
    settings = {"tag_guidance": 3.0, "anchor_share": 0.5}
    reply = _speech(url, model="giggling", input=TAGGED, seed=5, base_anchor=True, **settings)
    assert reply.status_code == 200, reply.text
    tts = TTS.load(base_v2, adapter_v2, precision="fp32", base_anchor=base_v2)
    expected = tts.synthesize(TAGGED, reference_wav, seed=5, generation=official_v2(max_new_tokens=MAX_CODES,
                                                                                       **settings))
    got = v2_pcm(reply.content)
    assert within_stream_tolerance(got, expected.audio)
    assert not within_stream_tolerance(got, v2_pcm(_speech(url, model="giggling", input=TAGGED, seed=5).content))
