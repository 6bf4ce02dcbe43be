"""Streaming synthesis: audio chunks while the codes are still being generated, joined equal to the one-shot audio.

Three stages follow the decode, each acting as soon as its input is final:

1. codes: after every decode step the search says which codes of each sentence can no longer change
   (``generation.stepwise``: every code for sampling, the beams' common prefix for beam search). The official
   long-silence rule needs the whole row (it fires only when a row holds more than 30 silent codes), so codes
   past the first silent run longer than 10 wait until the row either crosses 30 (runs are then cut) or ends.
2. latents: the latent pass is a causal GPT forward over [conds ‖ text ‖ start_mel, c1, c2, …]; latent k sees
   codes up to k, so it is computed incrementally with a KV cache, a chunk's worth of final codes at a time.
3. audio: BigVGAN is convolutional, so output frame t depends on latents t-R .. t+R only (R from the network's
   shape, ``receptive_field``). Windows of latents overlapping by R on each side give the samples of their
   middle exactly as one call over the whole sequence; sentences are joined in time as ``vocode_joined`` does.

Stated tolerance, measured by ``tests/test_stream.py``: same seed => the same codes; int16 audio within
``STREAM_TOLERANCE_LSB`` of ``TTS.synthesize`` (the latent pass in pieces and the vocoder on windows differ from
the one-shot calls by float rounding only).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from tagtune.generation.batched import length_groups, pad_rows
from tagtune.generation.generate import code_decoder
from tagtune.generation.postprocess import KEPT_SILENT_RUN, MAX_CONSECUTIVE, SILENT_TOKEN
from tagtune.generation.stepwise import new_search, run_search

STREAM_TOLERANCE_LSB = 2  # int16 steps between the joined stream and the one-shot audio (float rounding only)
# the same with the latent pass in bf16 (``TTS.latent_precision``): the streamed pass multiplies other matrix
# shapes than the whole one, and bf16 rounds them differently (13 steps measured on the shipped tiny base)
STREAM_TOLERANCE_LSB_BF16 = 64
FIRST_CHUNK_FRAMES = 8  # latent frames (1024 samples each) in the first chunk: small, so audio starts early
MIN_CHUNK_FRAMES = 32  # later chunks: at least this many, and at least 2·R, so the overlap stays a small cost
PCM_SCALE = 32767.0  # as synthesis.tts: clamp(32767 * wav), then an int16 cast (truncation toward zero)
AA_RADIUS = 6  # samples at a layer's rate that one anti-aliased activation reaches (x2 up, 12 taps, x2 down)


def receptive_field(vocoder) -> int:
    """R: latent frames on each side of a frame that BigVGAN's output for that frame depends on (an upper bound).

    Summed over the layers from input to output, each layer's reach in its own samples divided by the samples
    per latent frame at that layer: conv_pre (k=7), per stage a transposed conv and the widest AMP block
    (two activations and two convolutions per dilation), then the last activation and conv_post.
    """
    cfg = vocoder.cfg
    reach = 3.0  # conv_pre: kernel 7
    rate = 1
    for u, k in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes):
        reach += math.ceil(k / u) / rate  # transposed conv, in input samples of this stage
        rate *= u
        widest = max(sum(2 * AA_RADIUS + (rk - 1) * d // 2 + (rk - 1) // 2 for d in dil)
                     for rk, dil in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes))
        reach += widest / rate
    reach += (AA_RADIUS + 3) / rate  # activation_post and conv_post (kernel 7)
    return math.ceil(reach) + 1


class SilenceFilter:
    """The official long-silence rule (``remove_long_silence``) for a row whose final codes grow step by step."""

    def __init__(self, silent: int = SILENT_TOKEN, max_silent: int = MAX_CONSECUTIVE, kept_run: int = KEPT_SILENT_RUN):
        self.silent, self.max_silent, self.kept_run = silent, max_silent, kept_run

    def final(self, codes: list[int], finished: bool) -> list[int]:
        """The codes the rule will certainly keep, given the row's final codes so far (stop excluded)."""
        if codes.count(self.silent) > self.max_silent:  # the rule fires whatever follows: cut every long run
            return self._cut(codes)
        if finished:
            return codes
        run = 0  # undecided: keep what both outcomes keep, up to the first code a cut would drop
        for k, c in enumerate(codes):
            run = run + 1 if c == self.silent else 0
            if run > self.kept_run:
                return codes[:k]
        return codes

    def _cut(self, codes: list[int]) -> list[int]:
        out, run = [], 0
        for c in codes:
            run = run + 1 if c == self.silent else 0
            if run <= self.kept_run:
                out.append(c)
        return out


class LatentStream:
    """One sentence's vocoder latents (the official latent pass) computed as its codes become final."""

    def __init__(self, gpt, conds: torch.Tensor, text_ids: list[int], max_codes: int):
        c = gpt.cfg
        ids = torch.tensor([[c.start_text_token, *text_ids, c.stop_text_token]], device=conds.device)
        self.prefix = torch.cat([conds, gpt.embed_text(ids)], dim=1)  # (1, 32 + L + 2, D)
        self.gpt, self.start = gpt, c.start_mel_token
        self.cache = gpt.gpt.new_cache(1, self.prefix.shape[1] + max_codes + 1)
        self.fed = 0  # mel inputs fed so far (input 0 is start_mel, input k the k-th code)

    @torch.no_grad()
    def extend(self, codes: list[int]) -> torch.Tensor:
        """New latents (n, D) for final codes ``codes`` (all of them so far): latent k needs inputs 0..k."""
        wanted = len(codes)  # latents 0..m-1 for m final codes (latent m-1 sees code m-1)
        if wanted <= self.fed:
            return self.prefix.new_zeros(0, self.prefix.shape[-1])
        new = [self.start if j == 0 else codes[j - 1] for j in range(self.fed, wanted)]
        ids = torch.tensor([new], device=self.prefix.device)
        x = self.gpt.embed_mel(ids, torch.arange(self.fed, wanted, device=ids.device))  # (1, n, D)
        if self.fed == 0:
            x = torch.cat([self.prefix, x], dim=1)
        h = self.gpt.gpt(x, cache=self.cache)  # (1, T, D)
        self.fed = wanted
        return self.gpt.final_norm(h[0, -len(new):])


class VocoderStream:
    """BigVGAN over a growing latent sequence: windows overlapping by ``context`` frames, middles emitted."""

    def __init__(self, vocoder, speaker: torch.Tensor, context: int | None = None,
                 first_chunk: int = FIRST_CHUNK_FRAMES, chunk: int | None = None):
        self.vocoder, self.speaker = vocoder, speaker
        self.context = receptive_field(vocoder) if context is None else context
        self.first_chunk = first_chunk
        self.chunk = chunk if chunk is not None else max(MIN_CHUNK_FRAMES, 2 * self.context)
        self.kept = speaker.new_zeros(0, vocoder.cfg.gpt_dim)  # latents from frame ``offset`` on
        self.offset = 0  # global index of kept[0]
        self.emitted = 0  # frames whose samples have been returned

    @property
    def total(self) -> int:
        return self.offset + self.kept.shape[0]

    @property
    def wanted(self) -> int:
        """Latent frames still missing before the next chunk can be emitted."""
        size = self.first_chunk if self.emitted == 0 else self.chunk
        return self.emitted + size + self.context - self.total

    def push(self, latents: torch.Tensor) -> list[np.ndarray]:
        """Append latents (n, D); return the int16 chunks that became final (none until a chunk is full)."""
        if len(latents):
            self.kept = torch.cat([self.kept, latents])
        ready = self.total - self.context  # frames whose whole right context is known
        size = self.first_chunk if self.emitted == 0 else self.chunk
        return [self._emit(ready)] if ready - self.emitted >= size else []

    def finish(self) -> list[np.ndarray]:
        """The remaining samples (the sequence's end is its right edge, as in one call)."""
        return [self._emit(self.total)] if self.total > self.emitted else []

    @torch.no_grad()
    def _emit(self, end: int) -> np.ndarray:
        """Samples of frames [emitted, end) from a window with ``context`` frames on each side."""
        lo, hi = max(0, self.emitted - self.context), min(self.total, end + self.context)
        window = self.kept[lo - self.offset : hi - self.offset]  # (hi - lo, D)
        wav = self.vocoder(window[None], speaker=self.speaker)[0, 0]  # ((hi - lo) · hop,)
        hop = self.vocoder.hop_length
        piece = wav[(self.emitted - lo) * hop : (end - lo) * hop]
        self.emitted = end
        drop = max(0, self.emitted - self.context) - self.offset  # frames no later window reaches
        self.kept, self.offset = self.kept[drop:], self.offset + drop
        return torch.clamp(PCM_SCALE * piece, -PCM_SCALE, PCM_SCALE).to(torch.int16).cpu().numpy()


class SpeechStream:
    """One text's audio, sentence after sentence, from each sentence's final codes as they grow.

    ``update(i, codes, finished)`` takes sentence ``i``'s final codes so far (stop excluded) and returns the
    int16 chunks that became ready; sentences may be updated in any order, audio always comes out in order.
    """

    def __init__(self, gpt, vocoder, conds: torch.Tensor, speaker: torch.Tensor, sentences: list[list[int]],
                 max_codes: int, **vocoder_options):
        self.gpt, self.conds, self.sentences, self.max_codes = gpt, conds, sentences, max_codes
        self.vocoded = VocoderStream(vocoder, speaker, **vocoder_options)
        self.silence = SilenceFilter()
        self.codes: list[list[int] | None] = [None] * len(sentences)
        self.finished = [False] * len(sentences)
        self.kept: list[list[int]] = []  # final codes (after the silence rule) of the sentences done
        self.latents: LatentStream | None = None
        self.done = False

    def update(self, index: int, codes: list[int], finished: bool) -> list[np.ndarray]:
        self.codes[index], self.finished[index] = codes, finished
        out: list[np.ndarray] = []
        while not self.done and self.codes[len(self.kept)] is not None:
            i = len(self.kept)
            if self.latents is None:
                self.latents = LatentStream(self.gpt, self.conds, self.sentences[i], self.max_codes)
            final = self.silence.final(self.codes[i], self.finished[i])
            # the latent pass runs once a chunk's worth of codes is final (one forward over many codes costs
            # about what one code costs), or when the sentence ends
            if self.finished[i] or len(final) - self.latents.fed >= self.vocoded.wanted:
                out += self.vocoded.push(self.latents.extend(final))
            if not self.finished[i]:
                break
            self.kept.append(final)
            self.latents = None
            if len(self.kept) == len(self.sentences):
                out += self.vocoded.finish()
                self.done = True
        return out


@torch.no_grad()
def stream_speech(tts, ref, sentences: list[list[int]], cfg, generator: torch.Generator | None) -> Iterator[np.ndarray]:
    """int16 chunks of ``sentences`` spoken in ``ref``'s voice, decoded exactly as ``TTS.synthesize``'s fast path.

    Sentences are decoded in the same length-sorted batches and order as the one-shot path (so the same seed
    draws the same codes); while a batch decodes, the first sentence not yet spoken streams.
    """
    gpt, c = tts.fast_gpt, tts.gpt.cfg
    speech = SpeechStream(tts.latent_gpt, tts.vocoder, ref.conds, ref.speaker, sentences, cfg.max_new_tokens)
    for group in length_groups([len(s) for s in sentences], tts.batch_size):
        text_ids = pad_rows([sentences[i] for i in group], c.stop_text_token, ref.conds.device)
        free_ids = pad_rows([tts.tokenizer.without_tags(sentences[i]) for i in group], c.stop_text_token,
                            ref.conds.device)
        decoder = code_decoder(gpt, ref.conds, text_ids, cfg, free_ids, tts.anchor_of(ref))
        search = new_search(decoder.history, cfg, c.stop_mel_token, len(group), generator)
        for _ in run_search(decoder, search):
            for b, i in enumerate(group):
                yield from speech.update(i, search.certain(b), search.finished(b))
