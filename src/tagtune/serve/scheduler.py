"""The decode scheduler: one thread that steps every running request together.

Requests wait in a bounded queue (``QueueFull`` when it is full: the server answers 429) and up to
``max_active`` of them run at once. Each lane (the base or one adapter) has a ``DecodePool``; a step runs every
lane that has rows, each lane's rows in ONE backbone call, then every request advances its own search with its
own generator and settings, and new final codes go through the request's ``SpeechStream`` (latent pass and
vocoder windows) to its ``on_chunk``. Requests join and leave between steps.

Beams are rows: a request with 3-beam sampling holds 3 rows per sentence, reordered inside its own block. A
request's sentences are decoded in the same length-sorted groups as ``TTS.synthesize`` (one group in the pool at
a time), so a seeded request gives the codes the Python API gives for the same model.

An IndexTTS-2 base decodes the same way with its 34-position prefix; its sentences go into the pool one at a
time and its audio comes a segment at a time (``serve.v2``, where the design is explained).

Tag guidance (``generation/guidance.py``) is more branches of the same request: the tagged rows in its lane's
pool, their tag-free twins as a second member of that pool, and, anchored to the base, the tag-free rows once
more in the base lane's pool. A step first advances every request's search, then steps every pool, then
combines each request's branches into the scores its search reads next (the ``Guide`` ``GuidedDecoder``
scores with), so a guided request gives the codes ``TTS.synthesize`` gives with the same settings.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from tagtune.errors import UserError
from tagtune.generation import GenerationConfig
from tagtune.generation.batched import length_groups, pad_rows
from tagtune.generation.decoder import prepare_prompt
from tagtune.generation.guidance import NO_GUIDANCE, Guide
from tagtune.generation.pool import DecodePool
from tagtune.generation.stepwise import new_search
from tagtune.serve.v2 import start_v2
from tagtune.synthesis.reference import ReferenceCache
from tagtune.synthesis.stream import SpeechStream

log = logging.getLogger(__name__)

IDLE_WAIT_SECONDS = 0.05  # how long the idle loop sleeps between looks at the queue
TIMED_OUT = (504, "the request took longer than the server's time limit")


class QueueFull(UserError):
    """Too many requests are waiting."""


class ShuttingDown(UserError):
    """The server is stopping and takes no new requests."""


@dataclass(eq=False)
class Branch:
    """One set of a request's rows in one lane's pool: its tagged texts, their tag-free twins, or (anchored) the
    tag-free texts read by the base; ``logits`` (rows, V) are its latest next-code scores."""

    lane: str
    member: object
    logits: torch.Tensor


@dataclass
class SpeechJob:
    """One request as the scheduler runs it. ``on_chunk(int16 array)`` and ``on_done(error or None)`` are
    called from the scheduler thread; ``error`` is ``(http_status, message)``."""

    lane: str
    sentences: list[list[int]]
    voice: object  # a path or file bytes, as ReferenceCache takes it
    generation: GenerationConfig
    generator: torch.Generator
    on_chunk: Callable[[np.ndarray], None]
    on_done: Callable[[tuple[int, str] | None], None]
    deadline: float = float("inf")  # time.monotonic() after which the job is cancelled (504)
    cancelled: tuple[int, str] | None = None  # set (from any thread) to stop the job with this error
    text: str = ""  # the request's input (IndexTTS-2: what an empty emo_text describes)
    emotion: dict = field(default_factory=dict)  # IndexTTS-2: TTSV2.synthesize's emotion keywords, checked
    anchored: bool = False  # guided decoding starts from the base lane (``generation.guidance``, "anchored")
    steps: int = 0  # decode steps this job took part in
    # running state
    groups: list[list[int]] = field(default_factory=list)
    speech: SpeechStream | None = None  # or serve.v2.SegmentSpeech
    conds: torch.Tensor | None = None  # the decode prefix: 32 speaker latents (1.x), 34 positions (v2)
    anchor_conds: torch.Tensor | None = None  # the base's decode prefix, when anchored
    branches: list[Branch] = field(default_factory=list)  # in the pools now: [rows] or [tagged, tag-free, base?]
    guide: Guide | None = None  # guided: how its branches combine (None: its one branch decodes alone)
    search: object = None
    logits: torch.Tensor | None = None  # what the search reads next
    tokens: torch.Tensor | None = None

    @property
    def guided(self) -> bool:
        return self.generation.tag_guidance != NO_GUIDANCE or self.anchored


class Scheduler:
    """Runs SpeechJobs on a SharedBase from one background thread."""

    def __init__(self, shared, *, max_active: int = 8, max_queue: int = 16, batch_size: int = 8):
        self.shared, self.max_active, self.max_queue, self.batch_size = shared, max_active, max_queue, batch_size
        self.references = ReferenceCache(shared.gpt, shared.vocoder, shared.mel) if shared.family == "v1" else None
        self.pools = {name: DecodePool(lane) for name, lane in shared.lanes.items()}
        self.waiting: deque[SpeechJob] = deque()
        self.running: list[SpeechJob] = []
        self.steps = 0  # decode steps run in total (one per lane per loop)
        self.widest = 0  # the most rows one decode step has carried
        self.accepting = True
        self._active: str | None = None  # the lane whose adapter the shared blocks compute with (None: unknown)
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------ control

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tagtune-scheduler", daemon=True)
        self._thread.start()

    def submit(self, job: SpeechJob) -> None:
        """Queue a job; raises QueueFull or ShuttingDown."""
        with self._wake:
            if not self.accepting:
                raise ShuttingDown("the server is shutting down")
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting; try again later")
            self.waiting.append(job)
            self._wake.notify()

    def stop(self, grace: float) -> None:
        """Take no new jobs, let running and queued ones finish for up to ``grace`` seconds, cancel the rest."""
        with self._wake:
            self.accepting = False
        end = time.monotonic() + grace
        while self.busy and time.monotonic() < end:
            time.sleep(IDLE_WAIT_SECONDS)
        with self._wake:
            for job in [*self.waiting, *self.running]:
                job.cancelled = (503, "the server shut down before this request finished")
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --------------------------------------------------------------------------------------- loop

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._wake:
                if self._stop and not self.running:
                    self._fail_all(self.waiting, (503, "the server shut down before this request ran"))
                    return
                if not self.running and not self.waiting:
                    self._wake.wait(IDLE_WAIT_SECONDS)
                    continue
                admitted = []
                while self.waiting and len(self.running) + len(admitted) < self.max_active:
                    admitted.append(self.waiting.popleft())
            try:
                for job in admitted:
                    self._admit(job)
                self._drop_cancelled()
                self._step()
            except Exception:  # a bug must not leave every client hanging
                log.exception("the scheduler failed; cancelling its requests")
                self._fail_all([*self.running], (500, "internal error while generating"))
                self.running.clear()
                self._active = None
                self.pools = {name: DecodePool(lane) for name, lane in self.shared.lanes.items()}

    def _admit(self, job: SpeechJob) -> None:
        if job.cancelled or time.monotonic() > job.deadline:
            job.on_done(job.cancelled or TIMED_OUT)
            return
        lane = self.shared.lanes[job.lane]
        self._activate(job.lane)
        try:
            self._start(job, lane)
        except UserError as e:
            job.on_done((400, str(e)))
            return
        except Exception:  # noqa: BLE001 - this request's own start failed; the running ones are untouched
            log.exception("a request failed before decoding; the others go on")
            job.on_done((500, "internal error while preparing this request"))
            return
        self.running.append(job)
        self._join_group(job)

    def _start(self, job: SpeechJob, lane) -> None:
        """The job's prefix, sentence groups and audio stage (raises UserError for an unusable reference)."""
        if self.shared.family == "v2":  # one segment at a time, in order, as TTSV2.synthesize decodes them
            tts = self.shared.tts
            job.conds, job.speech, job.anchor_conds = start_v2(
                tts[job.lane], tts[self.shared.base_name], job.voice, job.sentences, job.generator, job.text,
                job.emotion, anchored=job.anchored)
            job.groups = [[i] for i in range(len(job.sentences))]
            return
        ref = self.references.get(job.voice)
        job.conds = ref.conds
        job.anchor_conds = ref.conds if job.anchored else None  # adapters never change the conditioning path
        job.groups = length_groups([len(s) for s in job.sentences], self.batch_size)
        job.speech = SpeechStream(lane, self.shared.vocoder, ref.conds, ref.speaker, job.sentences,
                                  job.generation.max_new_tokens)

    def _join_group(self, job: SpeechJob) -> None:
        """Put the job's next sentence group into the pools (prefill now, first code next step): its rows, or
        for guided decoding its branches (``guidance.code_decoder``'s choice: rows without any tag decode in the
        lane guidance starts from)."""
        lane, cfg = self.shared.lanes[job.lane], job.generation
        texts = [job.sentences[i] for i in job.groups[0]]
        free = [lane.tokenizer.without_tags(t) for t in texts] if job.guided else texts
        job.guide = None
        if job.guided:
            pad = lambda rows: pad_rows(rows, lane.cfg.stop_text_token, "cpu")  # noqa: E731
            job.guide = Guide.of_rows(pad(texts), pad(free), cfg, lane.cfg.start_text_token, lane.cfg.stop_text_token,
                                      cfg.num_beams)
        if job.guide is None:  # no tag in the group: the lane guidance starts from decodes it alone
            parts = [(self.shared.base_name, job.anchor_conds, free) if job.anchored else (job.lane, job.conds, texts)]
        else:
            parts = [(job.lane, job.conds, texts), (job.lane, job.conds, free)]
            if job.anchored:
                parts.append((self.shared.base_name, job.anchor_conds, free))
        job.branches, history = [], None
        for name, conds, rows in parts:
            part = self.shared.lanes[name]
            self._activate(name)
            prompt = prepare_prompt(part, conds, pad_rows(rows, part.cfg.stop_text_token, conds.device))
            member, logits = self.pools[name].join(prompt, cfg.position_mode, cfg.max_new_tokens,
                                                   repeat=cfg.num_beams)
            job.branches.append(Branch(name, member, logits))
            history = prompt.history.repeat_interleave(cfg.num_beams, dim=0) if history is None else history
        job.logits = self._scores(job)
        job.search = new_search(history, cfg, lane.cfg.stop_mel_token, len(texts), job.generator)

    @staticmethod
    def _scores(job: SpeechJob) -> torch.Tensor:
        """The scores the job's search reads next: its one branch's logits, or its branches guided."""
        if job.guide is None:
            return job.branches[0].logits
        tagged, free, *anchor = (b.logits for b in job.branches)
        return job.guide.scores(tagged, free, anchor[0] if anchor else None)

    def _step(self) -> None:
        """Advance every running search by one code, then step every pool once and combine each job's branches."""
        rejoin = []
        for job in sorted((j for j in self.running if j.branches), key=lambda j: j.lane):
            tokens, rows = job.search.advance(job.logits)
            job.steps += 1
            self._activate(job.lane)  # the latent pass of final codes reads the job's own lane
            for b, i in enumerate(job.groups[0]):
                for chunk in job.speech.update(i, job.search.certain(b), job.search.finished(b)):
                    job.on_chunk(chunk)
            if job.search.done:
                self._leave(job)
                job.groups.pop(0)
                if job.groups:
                    rejoin.append(job)
                else:
                    self.running.remove(job)
                    job.on_done(None)
                continue
            if rows is not None:
                for branch in job.branches:
                    self.pools[branch.lane].reorder(branch.member, rows)
                if job.guide is not None:
                    job.guide.reorder(rows)
            if job.guide is not None:
                job.guide.observe(tokens)
            job.tokens = tokens
        live = [j for j in self.running if j.branches]
        for name, pool in self.pools.items():
            if not pool.members:
                continue
            self._activate(name)
            mine = [(j, b) for j in live for b in j.branches if b.lane == name]
            logits = pool.step({id(b.member): j.tokens for j, b in mine})
            for _, branch in mine:
                branch.logits = logits[id(branch.member)]
            self.steps += 1
            self.widest = max(self.widest, pool.rows)
        for job in live:
            job.logits = self._scores(job)
        for job in rejoin:
            self._join_group(job)

    def _activate(self, name: str) -> None:
        if self._active != name:
            self.shared.lanes[name].activate()
            self._active = name

    def _leave(self, job: SpeechJob) -> None:
        for branch in job.branches:
            self.pools[branch.lane].leave(branch.member)
        job.branches = []

    def _drop_cancelled(self) -> None:
        now = time.monotonic()
        for job in list(self.running):
            if job.cancelled or now > job.deadline:
                self._leave(job)
                self.running.remove(job)
                job.on_done(job.cancelled or TIMED_OUT)

    @staticmethod
    def _fail_all(jobs, error: tuple[int, str]) -> None:
        for job in list(jobs):
            job.on_done(error)
        if isinstance(jobs, deque):
            jobs.clear()
