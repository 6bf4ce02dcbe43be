"""Batched stages of synthesis outside the modules: several sentences decoded, passed through the latent
pass and vocoded together.

Sentences of similar length share a batch, so padding stays small; padding never changes a row's result
(masks in the latent pass; the vocoder joins sentences in time instead of padding them).
"""

from __future__ import annotations

import torch

from tagtune.generation.decoder import pad_rows
from tagtune.generation.generate import GenerationConfig, generate_codes
from tagtune.generation.postprocess import remove_long_silence


def length_groups(lengths: list[int], size: int) -> list[list[int]]:
    """Indices grouped ``size`` at a time in order of length, so padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + size] for i in range(0, len(order), size)]


@torch.no_grad()
def generate_sentences(gpt, sentences: list[list[int]], cfg: GenerationConfig, conds: torch.Tensor,
                       generator: torch.Generator | None = None,
                       free: list[list[int]] | None = None, anchor=None) -> tuple[list[torch.Tensor], int]:
    """Codes (after silence removal) for a batch of sentences (text ids), and the decode steps it took.

    Rows are right-padded with ``stop_text_token``, as v1.5 batches are. ``free``: each sentence without its
    tags, for ``cfg.tag_guidance`` and for ``anchor`` (a ``guidance.Anchor``: the base model guided decoding
    starts from).
    """
    c = gpt.cfg
    text_ids = pad_rows(sentences, c.stop_text_token, conds.device)  # (B, L)
    free_ids = pad_rows(free, c.stop_text_token, conds.device) if free is not None else None
    codes, _ = generate_codes(gpt, text_ids, cfg, conds=conds, generator=generator, free_ids=free_ids,
                              anchor=anchor)  # (B, N)
    out = []
    for row in codes:
        kept, lens = remove_long_silence(row[None], stop_token=c.stop_mel_token)
        out.append(kept[0, : int(lens[0])])
    return out, codes.shape[1]


@torch.no_grad()
def batched_latents(gpt, conds: torch.Tensor, sentences: list[list[int]], codes: list[torch.Tensor],
                    batch_size: int) -> list[torch.Tensor]:
    """Vocoder latents (N_i, D) per sentence, several sentences per forward (padding hidden by masks)."""
    cfg, device = gpt.cfg, conds.device
    out: list[torch.Tensor] = [conds.new_zeros(0, conds.shape[-1])] * len(sentences)
    live = [i for i, c in enumerate(codes) if len(c)]
    for group in length_groups([len(codes[i]) for i in live], batch_size):
        idx = [live[g] for g in group]
        text = pad_rows([sentences[i] for i in idx], cfg.stop_text_token, device)
        mel = pad_rows([codes[i] for i in idx], cfg.stop_mel_token, device)
        text_lens = torch.tensor([len(sentences[i]) for i in idx], device=device)
        code_lens = torch.tensor([len(codes[i]) for i in idx], device=device)
        lat = gpt.latents(conds.expand(len(idx), -1, -1), text, mel, text_lens, code_lens)  # (B, N, D)
        for b, i in enumerate(idx):
            out[i] = lat[b, : len(codes[i])]
    return out


@torch.no_grad()
def vocode_joined(vocoder, latents: list[torch.Tensor], speaker: torch.Tensor) -> list[torch.Tensor]:
    """Waveforms (N_i · hop,) in [-1, 1] per latent sequence (N_i, D), from ONE vocoder call.

    The sentences are joined in time (as the official ``infer_fast`` joins pairs), so each boundary is
    vocoded with its neighbours as context. Padding a batch instead would let the zero padding reach
    ~0.7 s back into a shorter row through BigVGAN's receptive field.
    """
    hop = vocoder.hop_length
    live = [lat for lat in latents if len(lat)]
    if not live:
        return [speaker.new_zeros(0) for _ in latents]
    wav = vocoder(torch.cat(live)[None], speaker=speaker)[0, 0]  # (sum N_i · hop,)
    pieces = iter(wav.split([len(lat) * hop for lat in live]))
    return [next(pieces) if len(lat) else speaker.new_zeros(0) for lat in latents]
