"""A real server on an ephemeral 127.0.0.1 port (uvicorn in a thread of the test process) and two adapters
that differ from the base and from each other."""

from __future__ import annotations

import io
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from tagtune import lora
from tagtune.lora import LoraSpec
from tagtune.synthesis.stream import STREAM_TOLERANCE_LSB
from tagtune.tags import TagSet, add_tag_pieces
from tagtune.tags.rows import grow_base

STARTUP_SECONDS = 60
V2_RATE = 22050  # what an IndexTTS-2 base speaks at


def v2_pcm(wav: bytes) -> np.ndarray:
    """The int16 samples of a 22.05 kHz mono wav reply (an IndexTTS-2 model's)."""
    audio, rate = sf.read(io.BytesIO(wav), dtype="int16")
    assert rate == V2_RATE and audio.ndim == 1
    return audio


def within_stream_tolerance(a: np.ndarray, b: np.ndarray) -> bool:
    """Same length, and no sample further apart than streamed audio may be from whole audio."""
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max(initial=0)) <= STREAM_TOLERANCE_LSB


def make_adapter(base: Path, out: Path, tags: list[str], seed: int) -> Path:
    """An adapter folder with random (non-zero) LoRA matrices and tag rows, as `export --adapter-only` lays it out."""
    torch.manual_seed(seed)
    gpt, _, new_ids = grow_base(base, tags, dropout=0.0)
    lora.apply_lora(gpt, LoraSpec(rank=4), new_ids)
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                p.normal_(0.0, 0.05)
    bpe, ids = add_tag_pieces(base / "bpe.model", tags)
    src = out / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "bpe.model").write_bytes(bpe)
    TagSet(tags, token_ids=ids).save(src / "tags.json")
    meta = {"tag_names": tags, "new_token_ids": new_ids, "mode": "lora"}
    files = {"bpe.model": src / "bpe.model", "tags.json": src / "tags.json"}
    return lora.save_adapter(gpt, out / "adapter", meta, files)


@contextmanager
def running_server(app):
    """Serve ``app`` on 127.0.0.1:<free port>; yields the base URL; shuts down cleanly on exit."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
