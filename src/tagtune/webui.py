"""``tagtune webui``: a Gradio page that only calls :class:`tagtune.synthesis.tts.TTS`.

The page has what the official IndexTTS page has, plus tags and a side-by-side base model: a reference voice
from an upload or the microphone; text with tag buttons that insert the tag at the cursor; generation
settings in an accordion (sampling, top-k, top-p, temperature, beams, repetition penalty, codes per
sentence, tokens per sentence, seed); a preview of how the text splits into GPT sentences; examples;
progress; the tuned model and (given a base) the base model side by side. When ffmpeg is installed (gradio
encodes streamed audio with it) the tuned model's speech plays while it is generated. The API endpoints are
named: ``/synthesize`` and ``/preview``. An IndexTTS-2 model adds the emotion settings: an emotion reference
with its strength (alpha), or eight emotion weights, or a description of the emotion (QwenEmotion).

Gradio is an optional extra (``pip install tagtune[webui]``), imported only here. The server listens on
127.0.0.1 unless told otherwise and publishes no share link unless asked. Every request is bounded: text
length, upload size (refused by the server while it streams in) and upload duration (read from the file's
header before anything is decoded); only the first ``max_reference_seconds`` are decoded and used. Messages
shown on the page never name server paths, and gradio's copies of uploads and results are deleted after an
hour and when the server stops.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tagtune.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_TEXT_CHARS = 600
MAX_REFERENCE_SECONDS = 20.0  # longer uploads are trimmed to this (with a warning)
MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # two minutes of 48 kHz stereo 16-bit PCM is 23 MB
MAX_UPLOAD_SECONDS = 120.0
CACHE_SWEEP = (600, 3600)  # every 10 minutes, delete gradio's files older than an hour
QUEUE_SIZE = 20  # requests waiting at most (the official page's queue size)
TITLE = "tagtune: expressive tags for IndexTTS"
# setting ranges of the official page; top_p starts above 0, which our sampler requires
MIN_SENTENCE_TOKENS = 20
MIN_MAX_NEW_TOKENS = 50
EXAMPLES = (
    "Seriously? <giggles> That's the cutest thing I've ever heard!",
    "He told the joke again <laughs> and nobody could stop.",
    "Well <sighs> I suppose we have to start over.",
    "Oh, you think so? <chuckles> We will see about that.",
    "The weather is quite nice today, so we went for a walk.",
    "你说的太好笑了 <laughs> 我们再听一遍吧。",
)
PREVIEW_HEADERS = ["#", "sentence", "tokens"]
# Inserts TAG at the text box's cursor (replacing a selection), spaced from its neighbours, and puts the
# cursor after it; the returned value becomes the box's value.
INSERT_TAG_JS = """
(value) => {
  const box = document.querySelector('#text textarea');
  const text = value ?? '';
  const start = box ? box.selectionStart : text.length;
  const end = box ? box.selectionEnd : text.length;
  const before = text.slice(0, start), after = text.slice(end);
  const lead = before && !/\\s$/.test(before) ? ' ' : '';
  const trail = after && !/^\\s/.test(after) ? ' ' : '';
  const caret = (before + lead + TAG + trail).length;
  if (box) setTimeout(() => { box.focus(); box.setSelectionRange(caret, caret); }, 50);
  return before + lead + TAG + trail + after;
}
"""


class RequestError(UserError, ValueError):
    """A request the page refuses (no upload, too large or too long, bad seed or setting, too much text)."""


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


@dataclass
class Request:
    """One checked request: the text, the reference's bytes and how to decode."""

    text: str
    reference: bytes
    seed: int | None
    generation: object | None  # GenerationConfig; None = the model's defaults
    max_sentence_tokens: int | None = None
    emotion: dict = field(default_factory=dict)  # IndexTTS-2 emotion settings (TTSV2.synthesize's keywords)

    def run(self, tts):
        """The whole synthesis with ``tts``: a Synthesis (emotion settings go to IndexTTS-2 models only)."""
        emotion = self.emotion if is_v2(tts) else {}
        return tts.synthesize(self.text, self.reference, generation=self.generation, seed=self.seed,
                              max_sentence_tokens=self.max_sentence_tokens, **emotion)

    def stream(self, tts) -> Iterator[np.ndarray]:
        """int16 chunks while ``tts`` generates them."""
        return tts.stream(self.text, self.reference, generation=self.generation, seed=self.seed,
                          max_sentence_tokens=self.max_sentence_tokens)


def is_v2(tts) -> bool:
    """Whether ``tts`` is an IndexTTS-2 model (it takes emotion settings)."""
    return hasattr(tts, "emotion_vector")


def emotion_settings(emo_ref=None, emo_alpha: float = 1.0, emo_vector: str = "", emo_text: str = "",
                     limits: Limits | None = None) -> dict:
    """The page's emotion fields as TTSV2.synthesize keywords: an uploaded emotion reference (checked like the
    voice), its alpha, "w1,...,w8" emotion weights, or an emotion description; empty fields are left out."""
    from tagtune.synthesis.tts_v2 import parse_emotion_vector

    out = {"emo_alpha": float(emo_alpha)}
    if emo_ref:
        out["emotion"] = read_upload(emo_ref, limits or Limits())
    if (emo_vector or "").strip():
        out["emo_vector"] = parse_emotion_vector(emo_vector)
    if (emo_text or "").strip():
        out["emo_text"] = emo_text.strip()
    return out


def check_request(text: str, reference, seed, generation=None, limits: Limits | None = None,
                  max_sentence_tokens: int | None = None, emotion: dict | None = None) -> Request:
    """Refuse what the page must not run (RequestError, SeedError) before any audio is decoded."""
    from tagtune.synthesis.tts import check_seed

    limits = limits or Limits()
    if not reference:
        raise RequestError("upload a reference voice (or record one) first")
    if len(text or "") > limits.max_chars:
        raise RequestError(f"the text has {len(text)} characters; the limit is {limits.max_chars}")
    seed = check_seed(seed)
    return Request(text, read_upload(reference, limits), seed, generation, max_sentence_tokens, emotion or {})


def synthesize_pair(tuned, base, text: str, reference, seed: int | None, generation=None,
                    limits: Limits | None = None, max_sentence_tokens: int | None = None,
                    progress: Callable[[float, str], None] | None = None, emotion: dict | None = None):
    """Run one request: ((24000, int16) for the tuned model, the same for the base model or None).

    ``reference`` is the path of the uploaded file; ``progress(fraction, what)`` hears each step. Raises
    UserError with a message the page shows.
    """
    request = check_request(text, reference, seed, generation, limits, max_sentence_tokens, emotion)
    models = [(name, tts) for name, tts in (("tuned", tuned), ("base", base)) if tts is not None]
    outputs = {}
    for k, (name, tts) in enumerate(models):
        if progress:
            progress(k / len(models), f"{name} model: generating")
        result = request.run(tts)
        outputs[name] = (result.sample_rate, result.audio)
    if progress:
        progress(1.0, "done")
    return outputs["tuned"], outputs.get("base")


def generation_settings(do_sample: bool, top_k, top_p, temperature, num_beams, repetition_penalty,
                        max_new_tokens, tag_guidance=1.0, anchor_share=0.0):
    """The page's settings as a GenerationConfig (RequestError for values it refuses)."""
    from tagtune.generation import GenerationConfig

    try:
        return GenerationConfig(do_sample=bool(do_sample), top_k=int(top_k), top_p=float(top_p),
                                temperature=float(temperature), num_beams=int(num_beams),
                                repetition_penalty=float(repetition_penalty), max_new_tokens=int(max_new_tokens),
                                tag_guidance=float(tag_guidance), anchor_share=float(anchor_share))
    except (TypeError, ValueError) as e:
        raise RequestError(str(e).removeprefix("GenerationConfig: ")) from None


def preview_sentences(tts, text: str, max_sentence_tokens: int | None = None) -> list[list]:
    """How ``tts`` splits ``text`` into GPT sentences: rows of (number, sentence, tokens), as the official page."""
    from tagtune.tags.vocab import SPACE_PIECE

    if not (text or "").strip():
        return []
    rows = []
    for i, ids in enumerate(tts.sentences(text, max_sentence_tokens), start=1):
        pieces = tts.tokenizer.convert_ids_to_tokens(ids)
        rows.append([i, "".join(pieces).replace(SPACE_PIECE, " ").strip(), len(ids)])
    return rows


def usable_examples(known_tags: list[str]) -> list[str]:
    """The example lines whose tags the model knows (all of them are shown for the untagged lines)."""
    from tagtune.tags.vocab import find_tags, tag_name, variant_key

    known = {variant_key(tag_name(t)) for t in known_tags}
    return [t for t in EXAMPLES if all(variant_key(m.name) in known for m in find_tags(t))]


def can_stream(tts) -> bool:
    """Whether the page can play ``tts``'s speech while it is generated (gradio needs ffmpeg for that)."""
    return hasattr(tts, "stream") and shutil.which("ffmpeg") is not None


def _tag_markdown(tags: list[str]) -> str:
    return "**Known tags:** " + (", ".join(f"`{t}`" for t in tags) if tags else "none (a base model)")


def build_demo(tuned, base=None, *, generation=None, limits: Limits | None = None, stream: bool | None = None):
    """The Gradio Blocks page for a tuned TTS and an optional base TTS (both already loaded).

    ``generation`` gives the settings' starting values (default: the official sampling); ``stream`` plays the
    tuned model's speech while it is generated (default: when ``can_stream``).
    """
    import gradio as gr

    from tagtune.audio import SAMPLE_RATE
    from tagtune.generation import GenerationConfig

    limits = limits or Limits()
    for tts in (tuned, base):
        if tts is not None and hasattr(tts, "references"):
            tts.references.max_seconds = limits.max_reference_seconds
    defaults = generation or getattr(tuned, "default_generation", GenerationConfig)()
    streaming = can_stream(tuned) if stream is None else stream

    def page_error(e: Exception) -> Exception:
        if isinstance(e, UserError):
            return gr.Error(str(e))
        # a bug, not the request: the details (paths included) stay in the server log
        log.error("synthesis failed", exc_info=e)
        return gr.Error("synthesis failed; the server log has the details")

    # gradio's idiom: a gr.Progress default marks the parameter that reports progress
    def synthesize(reference, text, do_sample, top_k, top_p, temperature, num_beams, repetition_penalty,
                   max_new_tokens, tag_guidance, anchor_share, max_sentence_tokens, seed, emo_ref=None, emo_alpha=1.0,
                   emo_vector="", emo_text="", progress=gr.Progress()):  # noqa: B008
        try:
            gen = generation_settings(do_sample, top_k, top_p, temperature, num_beams, repetition_penalty,
                                      max_new_tokens, tag_guidance, anchor_share)
            emotion = emotion_settings(emo_ref, emo_alpha, emo_vector, emo_text, limits) if is_v2(tuned) else {}
            return synthesize_pair(tuned, base, text, reference, seed, gen, limits, int(max_sentence_tokens),
                                   progress=lambda f, what: progress(f, desc=what), emotion=emotion)
        except Exception as e:
            raise page_error(e) from None

    def synthesize_streaming(reference, text, do_sample, top_k, top_p, temperature, num_beams, repetition_penalty,
                             max_new_tokens, tag_guidance, anchor_share, max_sentence_tokens, seed,
                             progress=gr.Progress()):  # noqa: B008
        try:
            gen = generation_settings(do_sample, top_k, top_p, temperature, num_beams, repetition_penalty,
                                      max_new_tokens, tag_guidance, anchor_share)
            request = check_request(text, reference, seed, gen, limits, int(max_sentence_tokens))
            progress(0.0, desc="tuned model: generating")
            chunks = []
            for chunk in request.stream(tuned):
                chunks.append(chunk)
                yield (SAMPLE_RATE, chunk), gr.skip(), gr.skip()  # chunks come at the model's rate
            whole = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
            yield gr.skip(), (SAMPLE_RATE, whole), gr.skip()
            if base is not None:
                progress(0.5, desc="base model: generating")
                result = request.run(base)
                yield gr.skip(), gr.skip(), (result.sample_rate, result.audio)
        except Exception as e:
            raise page_error(e) from None

    def preview(text, max_sentence_tokens):
        try:
            return preview_sentences(tuned, text, int(max_sentence_tokens))
        except UserError as e:  # shown in the table while typing, not as a pop-up
            return [["", f"cannot be spoken: {e}", ""]]

    with gr.Blocks(title=TITLE, delete_cache=CACHE_SWEEP) as demo:
        gr.Markdown(f"# {TITLE}\nUpload or record a few seconds of a voice, type text and click a tag to put it "
                    f"at the cursor.\n\n{_tag_markdown(tuned.known_tags)}")
        with gr.Row():
            reference = gr.Audio(label=f"Reference voice (upload or record; the first "
                                       f"{limits.max_reference_seconds:g} s are used)", type="filepath",
                                 sources=["upload", "microphone"], elem_id="reference")
            with gr.Column():
                text = gr.Textbox(label=f"Text (up to {limits.max_chars} characters)", lines=4,
                                  max_length=limits.max_chars, elem_id="text",
                                  placeholder="Seriously? <giggles> That's the cutest thing I've ever heard!")
                with gr.Row():
                    for tag in tuned.known_tags:
                        button = gr.Button(tag, size="sm", elem_id=f"tag-{tag.strip('<>').replace(' ', '-')}")
                        button.click(None, text, text, js=INSERT_TAG_JS.replace("TAG", json.dumps(tag)))
                go = gr.Button("Synthesize", variant="primary", elem_id="synthesize")
        live = None
        if streaming:
            live = gr.Audio(label="Tuned model, playing while it is generated", streaming=True, autoplay=True,
                            interactive=False, elem_id="out-live")
        with gr.Row():
            out_tuned = gr.Audio(label="Tuned model", type="numpy", interactive=False, elem_id="out-tuned")
            out_base = gr.Audio(label="Base model", type="numpy", interactive=False, elem_id="out-base",
                                visible=base is not None)
        settings, max_sentence_tokens, seed = _settings(gr, defaults, tuned)
        with gr.Accordion("Sentence preview: how the text is split into GPT sentences", open=True):
            sentences = gr.Dataframe(headers=PREVIEW_HEADERS, interactive=False, wrap=True, elem_id="preview")
        examples = usable_examples(tuned.known_tags)
        if examples:
            gr.Examples(examples=[[t] for t in examples], inputs=[text], label="Examples")

        inputs = [reference, text, *settings, max_sentence_tokens, seed]
        if is_v2(tuned):
            inputs += _emotion_fields(gr)
        if streaming:
            go.click(synthesize_streaming, inputs, [live, out_tuned, out_base], api_name="synthesize")
        else:
            go.click(synthesize, inputs, [out_tuned, out_base], api_name="synthesize")
        text.change(preview, [text, max_sentence_tokens], sentences, api_name="preview", trigger_mode="always_last",
                    show_progress="hidden")
        max_sentence_tokens.change(preview, [text, max_sentence_tokens], sentences, api_visibility="private",
                                   trigger_mode="always_last", show_progress="hidden")
    return demo


def _emotion_fields(gr) -> list:
    """The IndexTTS-2 emotion accordion: [emotion reference, alpha, emotion weights, emotion description]."""
    from tagtune.synthesis.tts_v2 import EMOTION_NAMES

    with gr.Accordion("Emotion (IndexTTS-2)", open=False, elem_id="emotion"):
        with gr.Row():
            emo_ref = gr.Audio(label="Emotion reference (empty: the voice's own)", type="filepath",
                               sources=["upload", "microphone"], elem_id="emo-ref")
            with gr.Column():
                emo_alpha = gr.Slider(label="emotion strength (alpha)", minimum=0.0, maximum=1.0, step=0.05,
                                      value=1.0, elem_id="emo-alpha")
                emo_vector = gr.Textbox(label=f"or 8 emotion weights: {', '.join(EMOTION_NAMES)}",
                                        placeholder="0, 0, 0.3, 0, 0, 0, 0.2, 0", elem_id="emo-vector")
                emo_text = gr.Textbox(label="or describe the emotion (needs the model's QwenEmotion folder)",
                                      elem_id="emo-text")
    return [emo_ref, emo_alpha, emo_vector, emo_text]


def _settings(gr, defaults, tts):
    """The generation settings accordion: ([the GenerationConfig fields], max sentence tokens, seed)."""
    from tagtune.generation.guidance import MAX_TAG_GUIDANCE, NO_GUIDANCE

    max_codes = tts.gpt.cfg.max_mel_tokens
    max_text = tts.gpt.cfg.max_text_tokens
    codes = min(defaults.max_new_tokens, max_codes)
    with gr.Accordion("Generation settings", open=False, elem_id="settings"):
        with gr.Row():
            do_sample = gr.Checkbox(label="do_sample", value=defaults.do_sample,
                                    info="sample the codes (off: greedy, or beam search with several beams)")
            temperature = gr.Slider(label="temperature", minimum=0.1, maximum=2.0, step=0.1,
                                    value=defaults.temperature)
        with gr.Row():
            top_p = gr.Slider(label="top_p", minimum=0.01, maximum=1.0, step=0.01, value=defaults.top_p)
            top_k = gr.Slider(label="top_k", minimum=0, maximum=100, step=1, value=defaults.top_k, info="0: off")
            num_beams = gr.Slider(label="num_beams", minimum=1, maximum=10, step=1, value=defaults.num_beams)
        with gr.Row():
            repetition_penalty = gr.Number(label="repetition_penalty", minimum=0.1, maximum=20.0, step=0.1,
                                           value=defaults.repetition_penalty)
            max_new_tokens = gr.Slider(label="max codes per sentence", minimum=min(MIN_MAX_NEW_TOKENS, codes),
                                       maximum=max_codes, step=1, value=codes,
                                       info="too few cut the speech short")
            tag_guidance = gr.Slider(label="tag guidance", minimum=NO_GUIDANCE, maximum=MAX_TAG_GUIDANCE, step=0.5,
                                     value=defaults.tag_guidance, elem_id="tag-guidance",
                                     info="above 1, each tag makes its event more surely (1: off, the official "
                                          "decoding)")
            anchor_share = gr.Slider(label="anchor share", minimum=0.0, maximum=1.0, step=0.05,
                                     value=defaults.anchor_share, elem_id="anchor-share",
                                     visible=getattr(tts, "anchor", None) is not None,
                                     info="anchored to the base: how far guidance starts from the tuned model's own "
                                          "scores instead of the base's (0: the base alone)")
        with gr.Row():
            sentence_tokens = gr.Slider(label="max text tokens per sentence",
                                        minimum=min(MIN_SENTENCE_TOKENS, tts.max_sentence_tokens), maximum=max_text,
                                        step=1, value=tts.max_sentence_tokens,
                                        info="longer text is split into sentences of at most this many tokens")
            seed = gr.Number(label="seed (empty: a new one each time)", value=0, precision=0, elem_id="seed")
    fields = [do_sample, top_k, top_p, temperature, num_beams, repetition_penalty, max_new_tokens, tag_guidance,
              anchor_share]
    return fields, sentence_tokens, seed


def launch_webui(model_dir, base_dir=None, adapter=None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 precision: str = "auto", device: str = "cpu", limits: Limits | None = None, block: bool = True,
                 share: bool = False, base_anchor: bool = False):
    """Load the model(s) and serve the page; returns the Gradio app (``block=False`` returns at once).

    ``share`` also publishes the page through a public gradio.live link (off unless asked). ``base_anchor``: the
    tuned model decodes anchored to ``base_dir`` (``generation/guidance.py``).
    """
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the web UI needs gradio: pip install 'tagtune[webui]'") from None
    from tagtune.synthesis.tts import TTS

    if not 0 <= port <= 65535:
        raise UserError(f"port must be from 0 to 65535, got {port}")
    if base_anchor and base_dir is None:
        raise UserError("--base-anchor decodes the tuned model anchored to the base model: give --base")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    anchor = {"base_anchor": base_dir} if base_anchor else {}
    tuned = TTS.load(model_dir, adapter, device=device, precision=precision, **anchor)
    base = None
    if base_dir is not None:  # the base model cannot speak new tags: it skips them
        base = TTS.load(base_dir, device=device, precision=precision, unknown_tags="drop")
    limits = limits or Limits()
    demo = build_demo(tuned, base, limits=limits)
    if host != DEFAULT_HOST:
        log.warning("serving on %s: anyone who can reach this address can use the page", host)
    if share:
        log.warning("share: the page is also published through a public gradio.live link")
    try:  # show_error=False: only the messages raised as gr.Error reach the page, never a raw exception
        demo.queue(max_size=QUEUE_SIZE).launch(server_name=host, server_port=port, prevent_thread_lock=not block,
                                               show_error=False, max_file_size=limits.max_upload_bytes, share=share)
    except OSError as e:  # gradio: "Cannot find empty port in range ..."
        raise UserError(f"cannot serve on {host}:{port}: {' '.join(str(e).split())}") from None
    return demo
