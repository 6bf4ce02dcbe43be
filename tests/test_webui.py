"""The web page: request limits, settings, sentence preview and examples as functions; then a real headless
chromium typing, inserting a tag at the cursor, synthesising with an uploaded reference, fetching the wavs and
taking a screenshot; the named API endpoints through the page config and gradio_client; streamed playback."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import struct
import urllib.request

import numpy as np
import pytest
import soundfile as sf

from tagtune.errors import UserError
from tagtune.generation import GenerationConfig
from tagtune.synthesis.tts import TTS
from tagtune.tags import TagSet, add_tag_pieces
from tagtune.text import TextTokenizer
from tagtune.webui import (
    EXAMPLES,
    Limits,
    generation_settings,
    preview_sentences,
    synthesize_pair,
    usable_examples,
)

HOP = 1024
MAX_NEW = 6
CHROMEDRIVER = "/usr/bin/chromedriver"
PAGE_TIMEOUT = 120  # a loaded 2-core machine: page start, upload and two syntheses
WINDOW = (1280, 1600)
PAGE_ELEMENTS = ("reference", "text", "tag-laughs", "synthesize", "out-tuned", "out-base", "settings", "preview")


@pytest.fixture(scope="module")
def models(shipped_base):
    """A "tuned" TTS knowing <laughs> (its id is the checkpoint's spare text row) and the plain base."""
    base = TTS.load(shipped_base, precision="fp32", unknown_tags="drop")
    bpe, _ = add_tag_pieces(shipped_base / "bpe.model", ["<laughs>"])
    tagged = TextTokenizer(bpe, tagset=TagSet(["<laughs>"]))
    tuned = TTS(base.gpt, base.vocoder, tagged, None, precision="fp32", references=base.references)
    return tuned, base


def test_request_limits(models, reference_wav):
    tuned, base = models
    ref = str(reference_wav)
    with pytest.raises(UserError, match="upload a reference"):
        synthesize_pair(tuned, base, "Hello.", None, 0)
    with pytest.raises(UserError, match="11 characters; the limit is 10"):
        synthesize_pair(tuned, base, "Hello there", ref, 0, limits=Limits(max_chars=10))
    gen = GenerationConfig.greedy(max_new_tokens=MAX_NEW)
    steps = []
    (rate, a), (_, b) = synthesize_pair(tuned, base, "Hello. <laughs>", ref, 0, gen,
                                        progress=lambda f, what: steps.append((f, what)))
    assert rate == 24000 and a.dtype == np.int16 and len(a) == len(b) == MAX_NEW * HOP
    assert steps == [(0.0, "tuned model: generating"), (0.5, "base model: generating"), (1.0, "done")]


def test_settings_preview_and_examples(models):
    tuned, _ = models
    gen = generation_settings(False, 30, 0.8, 1.0, 1, 1.0, MAX_NEW)
    assert gen == GenerationConfig.greedy(max_new_tokens=MAX_NEW, repetition_penalty=1.0)
    assert generation_settings(True, 30, 0.8, 1.0, 3, 10.0, 600, 3.0, 0.5).anchor_share == 0.5
    with pytest.raises(UserError, match="anchor_share must be in"):
        generation_settings(True, 30, 0.8, 1.0, 3, 10.0, 600, 3.0, 1.5)
    with pytest.raises(UserError, match="top_p must be in"):
        generation_settings(True, 30, 0.0, 1.0, 3, 10.0, 600)
    text = "Hello there, how are you today? <laughs> I am fine, thank you. And you?"
    whole = preview_sentences(tuned, text)
    assert [r[0] for r in whole] == list(range(1, len(whole) + 1))
    assert sum(r[2] for r in whole) == sum(len(s) for s in tuned.sentences(text))
    assert any("<LAUGHS>" in r[1] for r in whole) and all("▁" not in r[1] for r in whole)
    short = preview_sentences(tuned, text, max_sentence_tokens=8)
    assert len(short) > len(whole) and [r[2] for r in short] == [len(s) for s in tuned.sentences(text, 8)]
    assert preview_sentences(tuned, "  ") == []
    # examples whose tags the model knows, and the untagged ones
    shown = usable_examples(tuned.known_tags)
    assert shown == [t for t in EXAMPLES if "<" not in t or "<laughs>" in t] and len(shown) >= 3
    assert usable_examples([]) == [t for t in EXAMPLES if "<" not in t]


# --------------------------------------------------------------------------------------------- browser

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser():
    pytest.importorskip("selenium")
    if not (shutil.which("chromium") and os.path.exists(CHROMEDRIVER)):
        pytest.skip("chromium / chromium-driver not installed (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={WINDOW[0]},{WINDOW[1]}", "--autoplay-policy=no-user-gesture-required",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


@pytest.fixture
def serve():
    """serve(demo) -> the page's URL; the server stops after the test."""
    pytest.importorskip("gradio")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    demos = []

    def start(demo) -> str:
        port = _free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        demos.append(demo)
        return f"http://127.0.0.1:{port}"

    yield start
    for demo in demos:
        demo.close()


def _fetch_wav(href: str) -> np.ndarray:
    audio, rate = sf.read(io.BytesIO(urllib.request.urlopen(href, timeout=30).read()), dtype="int16")
    assert rate == 24000 and audio.ndim == 1
    return audio


def _output_links(browser, boxes) -> dict[str, str]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, PAGE_TIMEOUT)
    return {box: wait.until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, f"#{box} a[data-testid='download-link'][href*='/gradio_api/file=']"))).get_attribute("href")
        for box in boxes}


def _open_and_fill(browser, url: str, reference_wav) -> None:
    """Load the page, upload the reference, type text and put <laughs> at the cursor (after "Hello")."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + "/")
    wait = WebDriverWait(browser, PAGE_TIMEOUT)
    text = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#text textarea")))
    upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#reference input[type=file]")))
    upload.send_keys(str(reference_wav))
    text.send_keys("Hello there.")
    browser.execute_script("arguments[0].setSelectionRange(5, 5)", text)  # the cursor after "Hello"
    browser.find_element(By.ID, "tag-laughs").click()
    wait.until(lambda d: text.get_attribute("value") == "Hello <laughs> there.")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#reference audio, #reference [data-testid]"))


def _png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_page_in_headless_chromium(models, reference_wav, browser, serve, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tagtune.webui import build_demo

    tuned, base = models
    url = serve(build_demo(tuned, base, generation=GenerationConfig.greedy(max_new_tokens=MAX_NEW), stream=False))
    _open_and_fill(browser, url, reference_wav)
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "<laughs>" in body and "He told the joke again <laughs> and nobody could stop." in body  # tags, examples
    # the sentence preview follows the text
    WebDriverWait(browser, PAGE_TIMEOUT).until(
        lambda d: "HELLO <LAUGHS> THERE." in d.find_element(By.ID, "preview").text)
    browser.find_element(By.ID, "synthesize").click()
    links = _output_links(browser, ("out-tuned", "out-base"))
    for href in links.values():
        audio = _fetch_wav(href)
        assert len(audio) == MAX_NEW * HOP and np.abs(audio).max() > 0

    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot))
    width, height = _png_size(shot)
    viewport = browser.execute_script("return [window.innerWidth, window.innerHeight]")
    assert (width, height) == tuple(viewport) and width >= 1000
    for elem_id in PAGE_ELEMENTS:  # every key control is drawn inside the screenshot
        element = browser.find_element(By.ID, elem_id)
        r = element.rect
        assert element.is_displayed() and r["width"] > 0 and r["height"] > 0, elem_id
        assert 0 <= r["x"] and r["x"] + r["width"] <= width and 0 <= r["y"] and r["y"] + r["height"] <= height, elem_id


def test_named_api_endpoints(models, serve, reference_wav):
    pytest.importorskip("gradio_client")
    from gradio_client import Client, handle_file

    from tagtune.webui import build_demo

    tuned, base = models
    url = serve(build_demo(tuned, base, generation=GenerationConfig.greedy(max_new_tokens=MAX_NEW), stream=False))
    config = json.loads(urllib.request.urlopen(url + "/config", timeout=30).read())
    public = {d["api_name"] for d in config["dependencies"] if d.get("api_visibility", "public") == "public"}
    assert public == {"synthesize", "preview"}
    client = Client(url, verbose=False)
    assert {"/synthesize", "/preview"} <= set(client.view_api(return_format="dict", print_info=False)
                                              ["named_endpoints"])
    table = client.predict("Hello. <laughs> Fine.", 120, api_name="/preview")
    assert [row[1] for row in table["data"]] == ["HELLO. <LAUGHS> FINE."]
    tuned_wav, base_wav = client.predict(handle_file(str(reference_wav)), "Hello. <laughs>", False, 30, 0.8, 1.0, 1,
                                         1.0, MAX_NEW, 2.0, 0.0, 120, 0, api_name="/synthesize")
    expected = tuned.synthesize("Hello. <laughs>", reference_wav, generation=GenerationConfig.greedy(
        max_new_tokens=MAX_NEW, tag_guidance=2.0), seed=0).audio
    got, _ = sf.read(tuned_wav, dtype="int16")
    assert np.array_equal(got, expected) and sf.read(base_wav)[0].shape == expected.shape


def test_page_streams_the_tuned_model(models, reference_wav, browser, serve):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed (apt-get install -y ffmpeg): gradio encodes streamed audio with it")
    from selenium.webdriver.common.by import By

    from tagtune.synthesis.stream import STREAM_TOLERANCE_LSB
    from tagtune.webui import build_demo

    tuned, base = models
    gen = GenerationConfig.greedy(max_new_tokens=MAX_NEW)
    url = serve(build_demo(tuned, base, generation=gen, stream=True))
    _open_and_fill(browser, url, reference_wav)
    browser.find_element(By.ID, "synthesize").click()
    links = _output_links(browser, ("out-tuned", "out-base"))
    # the tuned output is the streamed chunks joined: the one-shot audio within the stream's tolerance
    expected = tuned.synthesize("Hello <laughs> there.", reference_wav, generation=gen, seed=0).audio
    joined = _fetch_wav(links["out-tuned"])
    assert joined.shape == expected.shape
    assert np.abs(joined.astype(np.int32) - expected).max() <= STREAM_TOLERANCE_LSB
    # the live player got gradio's stream (a playlist of chunks), not a finished file
    stream_link = "#out-live a[data-testid='download-link'][href*='/gradio_api/stream/']"
    assert browser.find_elements(By.CSS_SELECTOR, stream_link)
    assert browser.find_elements(By.CSS_SELECTOR, "#out-live audio[src]")


def test_share_is_off_unless_asked():
    from tagtune.cli import build_parser

    parser = build_parser()
    plain = parser.parse_args(["webui", "--model", "m"])
    assert plain.share is False and plain.host == "127.0.0.1"
    assert parser.parse_args(["webui", "--model", "m", "--share"]).share is True


def test_the_page_anchors_the_tuned_model_to_its_base_when_asked(monkeypatch, tmp_path):
    """``--base-anchor`` loads the tuned model anchored to ``--base``, and without a base it is one clear line."""
    pytest.importorskip("gradio")
    from tagtune import webui

    with pytest.raises(UserError, match="give --base"):
        webui.launch_webui(tmp_path, base_anchor=True, block=False)
    loads = []

    def fake_load(cls, *args, **kwargs):
        loads.append((args, kwargs))
        raise SystemExit(0)  # stop before the page is built: what was asked of the loader is the point

    monkeypatch.setattr(TTS, "load", classmethod(fake_load))
    with pytest.raises(SystemExit):
        webui.launch_webui(tmp_path / "tuned", base_dir=tmp_path / "base", base_anchor=True, block=False)
    assert loads[0][1]["base_anchor"] == tmp_path / "base"
