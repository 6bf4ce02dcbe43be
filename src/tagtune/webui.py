"""``tagtune webui``: a Gradio page that only calls :class:`tagtune.synthesis.tts.TTS`.

Upload a reference voice, type text, insert tags with buttons, synthesise with the tuned model and (when a
base model is given) the base model side by side; play and download. Gradio is an optional extra
(``pip install tagtune[webui]``), imported only here. The server listens on 127.0.0.1 unless told
otherwise; text length and reference duration are limited.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from tagtune.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_TEXT_CHARS = 600
MAX_REFERENCE_SECONDS = 20.0  # longer uploads are trimmed to this (with a warning)
TITLE = "tagtune: expressive tags for IndexTTS"


@dataclass
class Limits:
    """What one request may ask for."""

    max_chars: int = MAX_TEXT_CHARS
    max_reference_seconds: float = MAX_REFERENCE_SECONDS


def synthesize_pair(tuned, base, text: str, reference, seed: int | None, generation=None,
                    limits: Limits | None = None):
    """Run one request: ((24000, int16) for the tuned model, the same for the base model or None).

    Raises UserError with a message the page shows.
    """
    limits = limits or Limits()
    if not reference:
        raise UserError("upload a reference voice first")
    if len(text or "") > limits.max_chars:
        raise UserError(f"the text has {len(text)} characters; the limit is {limits.max_chars}")
    seed = None if seed is None else int(seed)
    outputs = []
    for tts in (tuned, base):
        if tts is None:
            outputs.append(None)
            continue
        result = tts.synthesize(text, reference, generation=generation, seed=seed)
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

    with gr.Blocks(title=TITLE) as demo:
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
                 precision: str = "auto", device: str = "cpu", max_chars: int = MAX_TEXT_CHARS,
                 max_reference_seconds: float = MAX_REFERENCE_SECONDS, block: bool = True):
    """Load the model(s) and serve the page; returns the Gradio app (``block=False`` returns at once)."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the web UI needs gradio: pip install 'tagtune[webui]'") from None
    from tagtune.synthesis.tts import TTS

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    tuned = TTS.load(model_dir, adapter, device=device, precision=precision)
    base = None
    if base_dir is not None:  # the base model cannot speak new tags: it skips them
        base = TTS.load(base_dir, device=device, precision=precision, unknown_tags="drop")
    demo = build_demo(tuned, base, limits=Limits(max_chars, max_reference_seconds))
    if host != DEFAULT_HOST:
        log.warning("serving on %s: anyone who can reach this address can use the page", host)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=True)
    return demo
