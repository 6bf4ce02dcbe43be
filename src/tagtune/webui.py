"""``tagtune webui``: a Gradio page that only calls :class:`tagtune.synthesis.tts.TTS`.

Upload a reference voice, type text, insert tags with buttons, synthesise with the tuned model and (when a
base model is given) the base model side by side; play and download. Gradio is an optional extra
(``pip install tagtune[webui]``), imported only here. The server listens on 127.0.0.1 unless told
otherwise. Every request is bounded: text length, upload size (refused by the server while it streams in)
and upload duration (read from the file's header before anything is decoded); only the first
``max_reference_seconds`` are decoded and used. Messages shown on the page never name server paths, and
gradio's copies of uploads and results are deleted after an hour and when the server stops.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tagtune.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_TEXT_CHARS = 600
MAX_REFERENCE_SECONDS = 20.0  # longer uploads are trimmed to this (with a warning)
MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # two minutes of 48 kHz stereo 16-bit PCM is 23 MB
MAX_UPLOAD_SECONDS = 120.0
CACHE_SWEEP = (600, 3600)  # every 10 minutes, delete gradio's files older than an hour
TITLE = "tagtune: expressive tags for IndexTTS"


class RequestError(UserError, ValueError):
    """A request the page refuses (no upload, too large or too long, bad seed, too much text)."""


@dataclass
class Limits:
    """What one request may ask for."""

    max_chars: int = MAX_TEXT_CHARS
    max_reference_seconds: float = MAX_REFERENCE_SECONDS
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_upload_seconds: float = MAX_UPLOAD_SECONDS


def read_upload(path, limits: Limits) -> bytes:
    """The bytes of an uploaded reference within ``limits``; messages name no server path.

    The size and the duration in the header are checked before the audio is decoded.
    """
    from tagtune.audio import AudioError, audio_info

    try:
        size = os.path.getsize(path)
    except OSError:
        raise RequestError("the uploaded reference is gone; upload it again") from None
    if size > limits.max_upload_bytes:
        raise RequestError(f"the uploaded reference is {_size(size)}; the limit is {_size(limits.max_upload_bytes)}")
    data = Path(path).read_bytes()
    try:
        seconds = audio_info(data).seconds
    except AudioError as e:
        raise RequestError(f"the uploaded reference: {e}") from None
    if seconds > limits.max_upload_seconds:
        raise RequestError(f"the uploaded reference is {seconds:.0f} s long; the limit is "
                           f"{limits.max_upload_seconds:g} s (only its first {limits.max_reference_seconds:g} s "
                           "would be used): upload a shorter clip")
    return data


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} kB"


def synthesize_pair(tuned, base, text: str, reference, seed: int | None, generation=None,
                    limits: Limits | None = None):
    """Run one request: ((24000, int16) for the tuned model, the same for the base model or None).

    ``reference`` is the path of the uploaded file. Raises UserError with a message the page shows.
    """
    from tagtune.synthesis.tts import check_seed

    limits = limits or Limits()
    if not reference:
        raise RequestError("upload a reference voice first")
    if len(text or "") > limits.max_chars:
        raise RequestError(f"the text has {len(text)} characters; the limit is {limits.max_chars}")
    seed = check_seed(seed)
    audio = read_upload(reference, limits)
    outputs = []
    for tts in (tuned, base):
        if tts is None:
            outputs.append(None)
            continue
        result = tts.synthesize(text, audio, generation=generation, seed=seed)
        outputs.append((result.sample_rate, result.audio))
    return outputs[0], outputs[1]


def _tag_markdown(tags: list[str]) -> str:
    return "**Known tags:** " + (", ".join(f"`{t}`" for t in tags) if tags else "none (a base model)")


def build_demo(tuned, base=None, *, generation=None, limits: Limits | None = None):
    """The Gradio Blocks page for a tuned TTS and an optional base TTS (both already loaded)."""
    import gradio as gr

    limits = limits or Limits()
    for tts in (tuned, base):
        if tts is not None:
            tts.references.max_seconds = limits.max_reference_seconds

    def run(text, reference, seed):
        try:
            return synthesize_pair(tuned, base, text, reference, seed, generation, limits)
        except UserError as e:
            raise gr.Error(str(e)) from None
        except Exception:  # a bug, not the request: the details (paths included) stay in the server log
            log.exception("synthesis failed")
            raise gr.Error("synthesis failed; the server log has the details") from None

    with gr.Blocks(title=TITLE, delete_cache=CACHE_SWEEP) as demo:
        gr.Markdown(f"# {TITLE}\n{_tag_markdown(tuned.known_tags)}")
        with gr.Row():
            reference = gr.Audio(label="Reference voice", type="filepath", sources=["upload"], elem_id="reference")
            with gr.Column():
                text = gr.Textbox(label=f"Text (up to {limits.max_chars} characters)", lines=4,
                                  max_length=limits.max_chars, elem_id="text")
                with gr.Row():
                    for tag in tuned.known_tags:
                        button = gr.Button(tag, size="sm", elem_id=f"tag-{tag.strip('<>').replace(' ', '-')}")
                        button.click(lambda t, tag=tag: f"{t or ''} {tag}".strip(), text, text)
                seed = gr.Number(label="Seed", value=0, precision=0, elem_id="seed")
        go = gr.Button("Synthesize", variant="primary", elem_id="synthesize")
        with gr.Row():
            out_tuned = gr.Audio(label="Tuned model", type="numpy", interactive=False, elem_id="out-tuned")
            out_base = gr.Audio(label="Base model", type="numpy", interactive=False, elem_id="out-base",
                                visible=base is not None)
        go.click(run, [text, reference, seed], [out_tuned, out_base])
    return demo


def launch_webui(model_dir, base_dir=None, adapter=None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 precision: str = "auto", device: str = "cpu", limits: Limits | None = None, block: bool = True):
    """Load the model(s) and serve the page; returns the Gradio app (``block=False`` returns at once)."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the web UI needs gradio: pip install 'tagtune[webui]'") from None
    from tagtune.synthesis.tts import TTS

    if not 0 <= port <= 65535:
        raise UserError(f"port must be from 0 to 65535, got {port}")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    tuned = TTS.load(model_dir, adapter, device=device, precision=precision)
    base = None
    if base_dir is not None:  # the base model cannot speak new tags: it skips them
        base = TTS.load(base_dir, device=device, precision=precision, unknown_tags="drop")
    limits = limits or Limits()
    demo = build_demo(tuned, base, limits=limits)
    if host != DEFAULT_HOST:
        log.warning("serving on %s: anyone who can reach this address can use the page", host)
    try:  # show_error=False: only the messages raised as gr.Error reach the page, never a raw exception
        demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=False,
                    max_file_size=limits.max_upload_bytes)
    except OSError as e:  # gradio: "Cannot find empty port in range ..."
        raise UserError(f"cannot serve on {host}:{port}: {' '.join(str(e).split())}") from None
    return demo
