"""The HTTP face of the server (FastAPI): an OpenAI-compatible speech endpoint, models, voices, health.

    POST /v1/audio/speech   {model, input, voice, response_format: wav|pcm, stream, seed?, greedy?,
                             max_new_tokens?, tag_guidance?, base_anchor?, anchor_share?,
                             IndexTTS-2 only: emo_voice?, emo_alpha?, emo_vector?, emo_text?}:
                            16-bit mono audio (24 kHz from IndexTTS 1.x, 22.05 kHz from IndexTTS-2), whole or
                            streamed as generated (IndexTTS-2: a segment at a time)
    GET  /v1/models         the base and every adapter, by name
    GET  /v1/voices         registered and uploaded voices; POST /v1/voices?name=NAME with the audio file as
                            the body uploads one
    GET  /health            the process answers; GET /ready: the scheduler runs and takes requests

Every error is JSON in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad
request, 404 for an unknown model, 413 for an upload over the limits, 429 when the queue is full, 503 while
shutting down, 504 past the request time limit.

On an IndexTTS-2 base, text is split by TTSV2's segment rules and decoding defaults to TTSV2's (the official
IndexTTS2 settings). Emotion takes ``TTSV2.synthesize``'s settings: ``emo_voice`` (a registered or uploaded voice
as the emotion reference) blended by ``emo_alpha`` (0-1, default 1), ``emo_vector`` (8 weights >= 0: happy,
angry, sad, afraid, disgusted, melancholic, surprised, calm; scaled by ``emo_alpha``) or ``emo_text`` (an
emotion description for the folder's QwenEmotion model; "" means the input text). A vector or text replaces the
emotion reference; without any, the speaker reference is the emotion reference, as the official default. They
are refused (400) on an IndexTTS 1.x model.

Tag guidance takes ``tagtune synth``'s settings: ``tag_guidance`` (1-10, 1 = off), ``base_anchor`` (true: guided
decoding starts from the server's base model, whose lane every server has) and ``anchor_share`` (0-1, with
``base_anchor``); a request gives the codes ``TTS.synthesize`` gives with the same settings
(``generation/guidance.py`` says what they do).
"""

from __future__ import annotations

import asyncio
import io
import re
import struct
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict

from tagtune.audio import SAMPLE_RATE
from tagtune.errors import UserError
from tagtune.generation import GenerationConfig
from tagtune.generation.guidance import BASE_ALONE, NO_GUIDANCE, check_anchor_share, check_tag_guidance
from tagtune.generation.v2 import official_v2
from tagtune.loaders import AuxModelError
from tagtune.serve.limits import Limits
from tagtune.serve.scheduler import QueueFull, ShuttingDown, SpeechJob
from tagtune.synthesis.reference import MIN_REFERENCE_SECONDS, read_reference_audio
from tagtune.synthesis.tts import MAX_SENTENCE_TOKENS, check_seed, text_to_sentences
from tagtune.synthesis.tts_v2 import check_emotion_alpha, check_emotion_vector

FORMATS = {"wav": "audio/wav", "pcm": "audio/pcm"}
VOICE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
STREAMED_SIZE = 0xFFFFFFFF  # RIFF and data sizes of a wav whose length is not known when its header is sent
EMOTION_FIELDS = ("emo_voice", "emo_alpha", "emo_vector", "emo_text")  # IndexTTS-2 only


class SpeechBody(BaseModel):
    """OpenAI's speech request, plus ``seed``, ``greedy``, ``max_new_tokens``, tag guidance (``tag_guidance``,
    ``base_anchor``, ``anchor_share``) and IndexTTS-2's emotion settings (``EMOTION_FIELDS``, as
    ``TTSV2.synthesize`` takes them; ``emo_voice`` names a voice as ``voice`` does); unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")
    model: str
    input: str
    voice: str
    response_format: str = "wav"
    speed: float = 1.0
    instructions: str | None = None
    stream: bool = False
    stream_format: str | None = None
    seed: int | None = None
    greedy: bool = False
    max_new_tokens: int | None = None
    tag_guidance: float = NO_GUIDANCE
    base_anchor: bool = False
    anchor_share: float = BASE_ALONE
    emo_voice: str | None = None
    emo_alpha: float | None = None
    emo_vector: list[float] | None = None
    emo_text: str | None = None


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


@dataclass
class _Done:
    error: tuple[int, str] | None


def wav_header(sample_rate: int = SAMPLE_RATE, data_bytes: int = STREAMED_SIZE) -> bytes:
    """A 44-byte PCM wav header (mono, 16-bit); the streamed form carries the 'unknown length' sizes."""
    riff = STREAMED_SIZE if data_bytes == STREAMED_SIZE else 36 + data_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, 2 * sample_rate, 2, 16) +
            b"data" + struct.pack("<I", data_bytes))


def create_app(shared, scheduler, voices: dict[str, Path | bytes], limits: Limits) -> FastAPI:
    """The FastAPI app over a loaded SharedBase and its Scheduler; ``voices`` maps names to references."""
    fixed_voices = set(voices)
    model_limit = shared.gpt.cfg.max_mel_tokens
    rate = shared.sample_rate

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        yield
        await run_in_threadpool(scheduler.stop, limits.shutdown_grace)

    app = FastAPI(title="tagtune", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return error_response(e.status, e.message, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        problems = []
        for err in e.errors()[:3]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append((where, err.get("msg", "invalid")))
        message = "; ".join(f"{where}: {msg}" for where, msg in problems) or "invalid request"
        return error_response(400, message, problems[0][0] if problems else None)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if not (scheduler.alive and scheduler.accepting):
            return error_response(503, "not ready: the scheduler is stopped or stopping")
        return {"status": "ready", "running": len(scheduler.running), "waiting": len(scheduler.waiting)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "tagtune"}
                                           for name in shared.lanes]}

    @app.get("/v1/voices")
    async def list_voices():
        return {"object": "list", "data": [{"id": name, "uploaded": name not in fixed_voices} for name in voices]}

    @app.post("/v1/voices", status_code=201)
    async def upload_voice(request: Request, name: str):
        if not VOICE_NAME.match(name):
            raise ApiError(400, "a voice name is 1-64 letters, digits, '_', '.' or '-'", "name")
        if name in fixed_voices:
            raise ApiError(409, f"voice {name!r} is registered by the server and cannot be replaced", "name")
        if name not in voices and len(voices) - len(fixed_voices) >= limits.max_voices:
            raise ApiError(413, f"the server keeps at most {limits.max_voices} uploaded voices", "name")
        data = bytearray()
        async for part in request.stream():
            data += part
            if len(data) > limits.max_reference_bytes:
                raise ApiError(413, f"the reference audio is over {limits.max_reference_bytes} bytes", "body")
        seconds = await run_in_threadpool(_check_reference, bytes(data), limits.max_reference_seconds)
        voices[name] = bytes(data)
        return {"id": name, "seconds": round(seconds, 3)}

    @app.post("/v1/audio/speech")
    async def speech(body: SpeechBody):
        job, streaming, channel = _make_job(body)
        try:
            scheduler.submit(job)
        except QueueFull as e:
            raise ApiError(429, str(e), code="queue_full") from None
        except ShuttingDown as e:
            raise ApiError(503, str(e)) from None
        media = FORMATS[body.response_format]
        if not streaming:
            chunks = []
            while not isinstance(item := await channel.get(), _Done):
                chunks.append(item)
            if item.error:
                return error_response(*item.error)
            audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
            return Response(_encode(audio, body.response_format, rate), media_type=media)
        first = await channel.get()
        if isinstance(first, _Done) and first.error:
            return error_response(*first.error)
        return StreamingResponse(_stream(job, channel, first, body.response_format, rate), media_type=media)

    def _make_job(body: SpeechBody):
        lane = shared.lanes.get(body.model)
        if lane is None:
            raise ApiError(404, f"model {body.model!r} does not exist; this server has {sorted(shared.lanes)}",
                           "model", "model_not_found")
        if body.response_format not in FORMATS:
            raise ApiError(400, f"response_format {body.response_format!r} is not supported; use one of "
                           f"{sorted(FORMATS)}", "response_format")
        if body.speed != 1.0:
            raise ApiError(400, "speed other than 1.0 is not supported", "speed")
        if body.stream_format not in (None, "audio"):
            raise ApiError(400, "stream_format must be 'audio' (server-sent events are not supported)",
                           "stream_format")
        if body.voice not in voices:
            raise ApiError(400, f"voice {body.voice!r} is not known; known: {sorted(voices)} (upload one with "
                           "POST /v1/voices?name=NAME)", "voice")
        tts = shared.tts.get(body.model)  # IndexTTS-2: the lane's TTSV2
        emotion = _emotion(body, tts)
        try:
            if tts is not None:
                sentences = tts.sentences(body.input)
            else:
                most = min(MAX_SENTENCE_TOKENS, lane.cfg.max_text_tokens)
                sentences = text_to_sentences(lane.tokenizer, body.input, most, limits.max_text_chars)
            seed = check_seed(body.seed)
        except UserError as e:
            raise ApiError(400, str(e), "seed" if "seed" in str(e) else "input") from None
        wanted = body.max_new_tokens or model_limit
        if not 1 <= wanted <= model_limit:
            raise ApiError(400, f"max_new_tokens must be from 1 to {model_limit}", "max_new_tokens")
        guidance = _guidance(body)
        if tts is not None:  # TTSV2's settings, as its synthesize completes them
            make = GenerationConfig.greedy if body.greedy else official_v2
            generation = replace(tts.generation_config(make(max_new_tokens=wanted), None), **guidance)
        else:
            make = GenerationConfig.greedy if body.greedy else GenerationConfig
            generation = make(max_new_tokens=wanted, position_mode="train", **guidance)
        generator = torch.Generator()
        if seed is not None:
            generator.manual_seed(seed)
        else:
            generator.seed()
        loop, channel = asyncio.get_running_loop(), asyncio.Queue()

        def send(item):
            try:
                loop.call_soon_threadsafe(channel.put_nowait, item)
            except RuntimeError:  # the event loop has closed: nobody is listening any more
                pass

        job = SpeechJob(body.model, sentences, voices[body.voice], generation, generator,
                        on_chunk=send, on_done=lambda error: send(_Done(error)),
                        deadline=time.monotonic() + limits.request_timeout, text=body.input, emotion=emotion,
                        anchored=body.base_anchor)
        return job, body.stream or body.stream_format == "audio", channel

    def _guidance(body: SpeechBody) -> dict:
        """The request's tag guidance as GenerationConfig keywords, checked (ApiError)."""
        try:
            guidance = {"tag_guidance": check_tag_guidance(body.tag_guidance),
                        "anchor_share": check_anchor_share(body.anchor_share)}
        except ValueError as e:
            raise ApiError(400, str(e), str(e).split()[0]) from None
        if guidance["anchor_share"] != BASE_ALONE and not body.base_anchor:
            raise ApiError(400, "anchor_share moves the start of decoding anchored to the base: send "
                           "base_anchor: true or drop anchor_share", "anchor_share")
        return guidance

    def _emotion(body: SpeechBody, tts) -> dict:
        """The request's emotion settings as TTSV2.synthesize keywords, checked as it checks them (ApiError)."""
        given = [name for name in EMOTION_FIELDS if getattr(body, name) is not None]
        if not given:
            return {}
        if tts is None:
            raise ApiError(400, f"{given[0]} is an IndexTTS-2 setting; model {body.model!r} is an IndexTTS 1.x "
                           "model, whose emotion follows the voice", given[0])
        emotion = {}
        if body.emo_voice is not None:
            if body.emo_voice not in voices:
                raise ApiError(400, f"emo_voice {body.emo_voice!r} is not known; known: {sorted(voices)} (upload "
                               "one with POST /v1/voices?name=NAME)", "emo_voice")
            emotion["emotion"] = voices[body.emo_voice]
        try:
            if body.emo_alpha is not None:
                emotion["emo_alpha"] = check_emotion_alpha(body.emo_alpha)
            if body.emo_vector is not None:
                emotion["emo_vector"] = check_emotion_vector(body.emo_vector)
        except UserError as e:
            raise ApiError(400, str(e), e.params[0] if e.params else None) from None
        if body.emo_text is not None:
            if len(body.emo_text) > limits.max_text_chars:
                raise ApiError(400, f"emo_text has {len(body.emo_text)} characters; the limit is "
                               f"{limits.max_text_chars}", "emo_text")
            try:
                has_qwen = tts.model.qwen_emotion_dir is not None  # the folder's QwenEmotion model, or AuxModelError
            except AuxModelError:
                has_qwen = False
            if not has_qwen:
                raise ApiError(400, f"emo_text needs a QwenEmotion model, which model {body.model!r} does not "
                               "have on this server; send emo_vector or emo_voice instead", "emo_text")
            emotion["emo_text"] = body.emo_text
        return emotion

    return app


async def _stream(job: SpeechJob, channel: asyncio.Queue, first, response_format: str, sample_rate: int):
    finished = False
    try:
        if response_format == "wav":
            yield wav_header(sample_rate)
        item = first
        while not isinstance(item, _Done):
            yield item.tobytes()
            item = await channel.get()
        finished = True
    finally:
        if not finished:  # the client went away: stop decoding for it
            job.cancelled = (499, "the client closed the connection")


def _encode(audio: np.ndarray, response_format: str, sample_rate: int) -> bytes:
    if response_format == "pcm":
        return audio.astype("<i2").tobytes()
    buf = io.BytesIO()
    sf.write(buf, audio, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _check_reference(data: bytes, max_seconds: float) -> float:
    """Decode an uploaded reference; its duration in seconds, or ApiError."""
    try:
        wav, trimmed = read_reference_audio(data, MIN_REFERENCE_SECONDS, max_seconds)
    except UserError as e:
        raise ApiError(400, str(e), "body") from None
    if trimmed:
        raise ApiError(413, f"the reference audio is longer than {max_seconds:g} s", "body")
    return wav.shape[-1] / SAMPLE_RATE
