"""Entry point: text ids + speaker prompt -> mel codes, as the official ``inference_speech`` (v1.5.0)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tagtune.generation.beam import beam_codes
from tagtune.generation.decoder import POSITION_MODES, MelDecoder, pad_rows, prepare_prompt
from tagtune.generation.guidance import (
    BASE_ALONE,
    NO_GUIDANCE,
    Anchor,
    Guide,
    GuidedDecoder,
    check_anchor_share,
    check_tag_guidance,
)
from tagtune.generation.sampling import sample_codes


@dataclass
class GenerationConfig:
    """Decoding settings; the defaults are the official ``infer`` / ``infer_fast`` ones (spec §7.2).

    ``position_mode`` "official" feeds the k-th generated code at mel position k+1 (official KV-cache path),
    "train" at position k (training, and the official no-cache path). ``use_cache`` only changes how the
    numbers are computed, never which positions are used. ``top_k`` 0 and ``top_p`` 1.0 switch those off.
    ``beam_sample_from_first``: beam sampling starts from beam 0 alone, as transformers >= 4.45 does (the
    release IndexTTS2 pins); v1.5.0's 4.36 starts every beam equal (the default here).
    ``tag_guidance``: how far each step leans toward what the text's tags change (``guidance.py``; 1 = off, the
    official decoding); it needs the texts without their tags, ``generate_codes(free_ids=...)``.
    ``anchor_share``: with an anchor (``generate_codes(anchor=...)``), how far the guided start moves from the
    base's scores toward the tuned model's own tag-free ones (``guidance.py``; 0 = the base alone).
    ``guide_until_onset``: guidance acts on a row until the events its tags ask for have begun, then lets the
    model decode them at their own length (``guidance.EventOnsets``); False guides every code.
    """

    do_sample: bool = True
    num_beams: int = 3
    top_k: int = 30
    top_p: float = 0.8
    temperature: float = 1.0
    repetition_penalty: float = 10.0
    max_new_tokens: int = 600
    position_mode: str = "official"
    use_cache: bool = True
    beam_sample_from_first: bool = False
    tag_guidance: float = NO_GUIDANCE
    anchor_share: float = BASE_ALONE
    guide_until_onset: bool = True

    def __post_init__(self):
        checks = [
            (self.num_beams >= 1, "num_beams must be >= 1"),
            (self.top_k >= 0, "top_k must be >= 0 (0 = off)"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (self.temperature > 0.0, "temperature must be > 0"),
            (self.repetition_penalty > 0.0, "repetition_penalty must be > 0"),
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.position_mode in POSITION_MODES, f"position_mode must be one of {POSITION_MODES}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"GenerationConfig: {message}")
        self.tag_guidance = check_tag_guidance(self.tag_guidance)
        self.anchor_share = check_anchor_share(self.anchor_share)

    @classmethod
    def greedy(cls, **overrides) -> GenerationConfig:
        """Deterministic decoding (one beam, argmax) with the official semantics: the repetition penalty
        keeps its default 10.0, as ``infer(do_sample=False, num_beams=1)`` keeps it; pass
        ``repetition_penalty=1.0`` for plain argmax."""
        return cls(**{"do_sample": False, "num_beams": 1, **overrides})


@torch.no_grad()
def generate_codes(model, text_ids: torch.Tensor, cfg: GenerationConfig | None = None, *,
                   conds: torch.Tensor | None = None, cond_mel: torch.Tensor | None = None,
                   cond_mel_lengths: torch.Tensor | None = None, generator: torch.Generator | None = None,
                   free_ids: torch.Tensor | None = None,
                   anchor: Anchor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate mel codes for text ids (B, L) (v1.5 batches right-padded with stop_text).

    The speaker prompt is either ``conds`` (1 or B, 32, D) or a reference log-mel ``cond_mel`` (1 or B, 100, T)
    with optional frame counts; one shared prompt serves every text row. Sampling draws from ``generator``
    (the global torch RNG when None, like the official code). ``free_ids`` (B, L') are the same texts without
    their tags, which ``cfg.tag_guidance`` > 1 decodes against (ignored at 1), and ``anchor`` the base model
    that guided decoding starts from (``guidance.py``; it also needs ``free_ids``).

    Returns ``(codes, lengths)``: codes (B, T) as the official call returns them (each row's stop_mel included
    when it was generated, rows padded with stop_mel) and lengths (B,) = codes before the first stop_mel.
    """
    cfg = cfg or GenerationConfig()
    if (conds is None) == (cond_mel is None):
        raise ValueError("give exactly one of conds (speaker latents) and cond_mel (reference log-mel)")
    if conds is None:
        conds = model.get_conditioning(cond_mel, cond_mel_lengths)
    _check_positions(model, cfg)
    stop = model.cfg.stop_mel_token
    decoder = code_decoder(model, conds, text_ids, cfg, free_ids, anchor)
    if cfg.num_beams > 1:
        codes = beam_codes(decoder, decoder.history, cfg, stop, text_ids.shape[0], generator)
    else:
        codes = sample_codes(decoder, decoder.history, cfg, stop, generator)
    return codes, code_lengths(codes, stop)


def code_decoder(model, conds: torch.Tensor, text_ids: torch.Tensor, cfg: GenerationConfig,
                 free_ids: torch.Tensor | None = None, anchor: Anchor | None = None) -> MelDecoder | GuidedDecoder:
    """The MelDecoder of the texts (B, L) after ``conds`` (1 or B, P, D), or with ``cfg.tag_guidance`` or an
    ``anchor`` the GuidedDecoder of the texts and their tag-free twins ``free_ids`` (B, L'); both drive the same
    searches."""
    def decoder(gpt, conds: torch.Tensor, ids: torch.Tensor) -> MelDecoder:
        return MelDecoder(gpt, prepare_prompt(gpt, conds, ids), use_cache=cfg.use_cache,
                          position_mode=cfg.position_mode, max_new_tokens=cfg.max_new_tokens, repeat=cfg.num_beams)

    if cfg.tag_guidance == NO_GUIDANCE and anchor is None:
        return decoder(model, conds, text_ids)
    if free_ids is None or free_ids.shape[0] != text_ids.shape[0]:
        raise ValueError("tag guidance needs free_ids: one tag-free text per text row")
    c = model.cfg
    guide = Guide.of_rows(text_ids, free_ids, cfg, c.start_text_token, c.stop_text_token, cfg.num_beams)
    if guide is None:  # no row has a tag: nothing to guide, the model guidance starts from decodes
        return decoder(model, conds, text_ids) if anchor is None else decoder(anchor.gpt, anchor.conds, free_ids)
    both = pad_rows([*text_ids, *free_ids], c.stop_text_token, text_ids.device)  # tagged rows, then twins
    anchored = None if anchor is None else decoder(anchor.gpt, anchor.conds, free_ids)
    return GuidedDecoder(decoder(model, conds if conds.shape[0] == 1 else torch.cat([conds, conds]), both), guide,
                         anchored)


def code_lengths(codes: torch.Tensor, stop: int) -> torch.Tensor:
    """(B,) index of each row's first ``stop`` code, or the row width when it has none."""
    is_stop = codes == stop  # (B, T)
    first = is_stop.int().argmax(dim=1)
    return torch.where(is_stop.any(dim=1), first, torch.full_like(first, codes.shape[1]))


def _check_positions(model, cfg: GenerationConfig) -> None:
    """The mel position table must hold every position a fed code can get."""
    last = cfg.max_new_tokens - 1  # the last generated code is never fed back
    needed = last + 2 if cfg.position_mode == "official" and last > 0 else last + 1
    rows = model.mel_pos_embedding.emb.num_embeddings
    if needed > rows:
        raise ValueError(f"max_new_tokens {cfg.max_new_tokens} needs {needed} mel positions; "
                         f"the model has {rows} (max_mel_tokens + 3)")
