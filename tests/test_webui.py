"""The web page: request limits, and a real headless chromium typing, clicking a tag and fetching the wav."""

from __future__ import annotations

import io
import os
import shutil
import socket
import urllib.request

import numpy as np
import pytest
import soundfile as sf

from tagtune.errors import UserError
from tagtune.generation import GenerationConfig
from tagtune.synthesis.tts import TTS
from tagtune.tags import TagSet, add_tag_pieces
from tagtune.text import TextTokenizer
from tagtune.webui import Limits, synthesize_pair

HOP = 1024
MAX_NEW = 6
CHROMEDRIVER = "/usr/bin/chromedriver"
PAGE_TIMEOUT = 60


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
    (rate, a), (_, b) = synthesize_pair(tuned, base, "Hello. <laughs>", ref, 0, gen)
    assert rate == 24000 and a.dtype == np.int16 and len(a) == len(b) == MAX_NEW * HOP


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
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def test_page_in_headless_chromium(models, reference_wav, browser):
    pytest.importorskip("gradio")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from tagtune.webui import build_demo

    tuned, base = models
    demo = build_demo(tuned, base, generation=GenerationConfig.greedy(max_new_tokens=MAX_NEW))
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, PAGE_TIMEOUT)
        text = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#text textarea")))
        assert "<laughs>" in browser.find_element(By.TAG_NAME, "body").text  # the known tags are shown
        browser.find_element(By.CSS_SELECTOR, "#reference input[type=file]").send_keys(
            str(reference_wav))
        text.send_keys("Hello there.")
        browser.find_element(By.ID, "tag-laughs").click()
        wait.until(lambda d: text.get_attribute("value") == "Hello there. <laughs>")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#reference audio, #reference [data-testid]"))
        browser.find_element(By.ID, "synthesize").click()
        links = {}
        for box in ("out-tuned", "out-base"):
            link = wait.until(ec.presence_of_element_located(
                (By.CSS_SELECTOR, f"#{box} a[data-testid='download-link'][href*='/gradio_api/file=']")))
            links[box] = link.get_attribute("href")
        for href in links.values():
            audio, rate = sf.read(io.BytesIO(urllib.request.urlopen(href, timeout=30).read()), dtype="int16")
            assert rate == 24000 and audio.ndim == 1 and len(audio) == MAX_NEW * HOP and np.abs(audio).max() > 0
    finally:
        demo.close()
