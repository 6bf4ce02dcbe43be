"""UnifiedVoice: the autoregressive GPT of IndexTTS 1.0 / 1.5 (text + speaker prompt -> DVAE mel codes).

The sequence the backbone sees is ``[conds (32) || text segment || mel segment]``:

    text segment  = [start_text, t1..tLt, stop_text]      + text_pos rows 0..Lt+1
    mel segment   = [start_mel,  c1..cLm, stop_mel]       + mel_pos rows 0..Lm+1

with padding overwritten by stop tokens (text at index >= text_length, mel at index >= ceil(wav/1024)+1).
Hidden states go through the backbone's ``ln_f`` and then ``final_norm`` (two LayerNorms in series) before
``text_head`` / ``mel_head``. Attribute names are the official state-dict keys. Sampling, beams and the
decode loop live outside this module; it only offers the embedding / head helpers they need.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tagtune.config import GPTConfig
from tagtune.models.conditioning import MEL_BANDS, ConformerEncoder, PerceiverResampler, length_mask
from tagtune.models.gpt2 import GPT2Backbone

OFFICIAL_DROPOUT = 0.1  # GPT-2 attn/resid/embd dropout of the official config (train mode only)
POS_INIT_STD = 0.02
IGNORE_INDEX = -100  # target value F.cross_entropy skips: marks padding when the loss is masked
COND_LATENTS = 32  # speaker latents in front of every sequence
LN_EPS = 1e-5


class LearnedPositionEmbeddings(nn.Module):
    """A learned position table; ``forward(x)`` returns rows 0..x.shape[1]-1 as (L, D)."""

    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(rows, dim)
        nn.init.normal_(self.emb.weight, std=POS_INIT_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length, rows = x.shape[1], self.emb.num_embeddings
        if length > rows:
            raise ValueError(f"sequence of {length} positions exceeds the {rows}-row position table")
        return self.emb(torch.arange(length, device=x.device))  # (L, D)

    def get_fixed_embedding(self, index: int, device=None) -> torch.Tensor:
        """Row ``index`` as (1, 1, D)."""
        return self.emb(torch.tensor([index], device=device or self.emb.weight.device))[None]


class TrainingTokens(NamedTuple):
    """Aligned token rows of the training layout; the masks are True on a row's real positions."""

    text_inputs: torch.Tensor  # (B, Lt+2) [start, text (padding -> stop), stop]
    text_targets: torch.Tensor  # (B, Lt+2) [text, stop, stop]
    mel_inputs: torch.Tensor  # (B, Lm+2) [start, codes (padding -> stop), stop]
    mel_targets: torch.Tensor  # (B, Lm+2) [codes, stop, stop]
    text_mask: torch.Tensor  # (B, Lt+2) bool: the first text_length + 2 positions
    mel_mask: torch.Tensor  # (B, Lm+2) bool: the first code_length + 2 positions


class GPTLogits(NamedTuple):
    """Per-position logits in the official (B, vocab, L) layout and their targets (IGNORE_INDEX = skip)."""

    text_logits: torch.Tensor  # (B, number_text_tokens + 1, Lt+2)
    mel_logits: torch.Tensor  # (B, number_mel_codes, Lm+2)
    text_targets: torch.Tensor  # (B, Lt+2)
    mel_targets: torch.Tensor  # (B, Lm+2)


def _overwrite_tail(ids: torch.Tensor, lengths: torch.Tensor, value: int) -> torch.Tensor:
    """A copy of ``ids`` (B, L) with every position >= lengths[b] set to ``value``."""
    pos = torch.arange(ids.shape[1], device=ids.device)[None, :]  # (1, L)
    return ids.masked_fill(pos >= lengths[:, None], value)


def _wrap(ids: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Append ``stop``, then build inputs = [start] + seq and targets = seq + [stop]."""
    seq = F.pad(ids, (0, 1), value=stop)
    return F.pad(seq, (1, 0), value=start), F.pad(seq, (0, 1), value=stop)


def _real_positions(lengths: torch.Tensor, width: int, seq_len: int) -> torch.Tensor:
    """(B, width + 2) bool: the first min(length, seq_len) + 2 positions (start .. own stop)."""
    real = lengths.clamp(max=seq_len) + 2
    return torch.arange(width, device=lengths.device)[None, :] < real[:, None]


def aligned_tokens(cfg: GPTConfig, text_ids, text_lengths, codes, code_lengths) -> TrainingTokens:
    """Text ids (B, Lt) and codes (B, Lm) in the training layout: positions at or past a row's length become
    stop tokens, then [start, ..., stop] inputs and [..., stop, stop] targets. Inputs are not modified.

    ``code_lengths`` counts the codes kept (1.x derives it from wav lengths, IndexTTS2 passes code counts)."""
    text = _overwrite_tail(text_ids.long(), text_lengths, cfg.stop_text_token)
    mel = _overwrite_tail(codes.long(), code_lengths, cfg.stop_mel_token)
    text_in, text_tgt = _wrap(text, cfg.start_text_token, cfg.stop_text_token)
    mel_in, mel_tgt = _wrap(mel, cfg.start_mel_token, cfg.stop_mel_token)
    text_mask = _real_positions(text_lengths, text_in.shape[1], text_ids.shape[1])
    mel_mask = _real_positions(code_lengths, mel_in.shape[1], codes.shape[1])
    return TrainingTokens(text_in, text_tgt, mel_in, mel_tgt, text_mask, mel_mask)


def training_inputs(model, prefix: torch.Tensor, tokens: TrainingTokens) -> torch.Tensor:
    """[prefix || text segment || mel segment] embeddings, (B, N + Lt+2 + Lm+2, D)."""
    text_emb = model.embed_text(tokens.text_inputs)  # (B, Lt+2, D)
    mel_emb = model.mel_embedding(tokens.mel_inputs) + model.mel_pos_embedding(tokens.mel_inputs)
    return torch.cat([prefix, text_emb, mel_emb], dim=1)


def segment_hidden(model, prefix: torch.Tensor, tokens: TrainingTokens, mask_padding: bool):
    """Backbone + final_norm over [prefix || text segment || mel segment] -> (text hidden (B, Lt+2, D),
    mel hidden (B, Lm+2, D)) for any UnifiedVoice generation (the prefix is 32 latents in 1.x, 34 in v2).

    With ``mask_padding`` each row's real positions are packed to the front before the backbone (text
    padding otherwise sits between the text and mel segments), so plain causal attention gives every
    real position exactly what its unpadded run sees, and SDPA keeps its fast causal kernels (no mask).
    Padding positions come back with hidden states of no meaning; mask them out of any loss.
    """
    emb = training_inputs(model, prefix, tokens)  # (B, S, D)
    if mask_padding:
        keep = torch.ones(prefix.shape[:2], dtype=torch.bool, device=prefix.device)
        real = torch.cat([keep, tokens.text_mask, tokens.mel_mask], dim=1)  # (B, S)
        order = torch.argsort((~real).to(torch.uint8), dim=1, stable=True)  # real positions first, in order
        packed = model.gpt(emb.gather(1, order[..., None].expand_as(emb)))
        h = torch.empty_like(packed).scatter_(1, order[..., None].expand_as(packed), packed)
    else:
        h = model.gpt(emb)
    h = model.final_norm(h[:, prefix.shape[1]:])
    n_text = tokens.text_inputs.shape[1]
    return h[:, :n_text], h[:, n_text:]


def add_token_trunk(model: nn.Module, cfg, D: int, dropout: float) -> None:
    """The parts both IndexTTS generations share, under the official names, in the official creation order
    (random init draws in this order): token tables, GPT-2 blocks, position tables, final norm, heads."""
    model.text_embedding = nn.Embedding(cfg.text_rows, D)
    model.mel_embedding = nn.Embedding(cfg.number_mel_codes, D)
    for emb in (model.text_embedding, model.mel_embedding):
        nn.init.normal_(emb.weight, std=POS_INIT_STD)
    model.gpt = GPT2Backbone(D, cfg.layers, cfg.heads)
    model.gpt.set_dropout(dropout)
    model.mel_pos_embedding = LearnedPositionEmbeddings(cfg.mel_positions, D)
    model.text_pos_embedding = LearnedPositionEmbeddings(cfg.text_positions, D)
    model.final_norm = nn.LayerNorm(D, eps=LN_EPS)
    model.text_head = nn.Linear(D, cfg.text_rows)
    model.mel_head = nn.Linear(D, cfg.number_mel_codes)


class TokenTrunk(nn.Module):
    """The embeddings and mel head around the GPT-2 trunk that ``add_token_trunk`` builds, shared by both
    IndexTTS generations' GPTs (no parameters of its own)."""

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Text ids (B, L) -> embeddings plus text position rows 0..L-1, (B, L, D)."""
        return self.text_embedding(ids) + self.text_pos_embedding(ids)

    def embed_mel(self, ids: torch.Tensor, positions: torch.Tensor | int) -> torch.Tensor:
        """Mel ids (B, T) plus mel position rows ``positions`` (an int, (T,) or (B, T)) -> (B, T, D)."""
        pos = torch.as_tensor(positions, device=ids.device)
        return self.mel_embedding(ids) + self.mel_pos_embedding.emb(pos)

    def mel_logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Backbone output (B, T, D) -> mel logits (B, T, number_mel_codes) through final_norm and mel_head."""
        return self.mel_head(self.final_norm(hidden))


class UnifiedVoice(TokenTrunk):
    """The IndexTTS GPT, built from ``GPTConfig``; its state dict matches the official ``gpt.pth``."""

    def __init__(self, cfg: GPTConfig, dropout: float = OFFICIAL_DROPOUT):
        super().__init__()
        self.cfg = cfg
        D, cm = cfg.model_dim, cfg.condition_module
        self.conditioning_encoder = ConformerEncoder(cm, MEL_BANDS)
        self.perceiver_encoder = PerceiverResampler(
            D, cm.output_size, cm.attention_heads, cm.perceiver_mult, cfg.condition_num_latent
        )
        add_token_trunk(self, cfg, D, dropout)

    # ------------------------------------------------------------------------------------ conditioning

    def get_conditioning(self, cond_mel: torch.Tensor, cond_lengths: torch.Tensor | None = None, *,
                         mask_padding: bool = False) -> torch.Tensor:
        """Reference log-mel (B, 100, T) + frame counts (B,) -> speaker latents ``conds`` (B, 32, D).

        Batches are right-padded. The official encoder leaks a little padding into the last frames (see
        ``conditioning``); with ``mask_padding`` each row equals its unpadded run exactly.
        """
        if cond_lengths is None:
            cond_lengths = torch.full((cond_mel.shape[0],), cond_mel.shape[2], device=cond_mel.device)
        x, mask = self.conditioning_encoder(cond_mel.transpose(1, 2), cond_lengths, mask_padding)  # (B, T', C)
        return self.perceiver_encoder(x, mask)

    def reference_frames(self, cond_mel: torch.Tensor, cond_lengths: torch.Tensor) -> list[torch.Tensor]:
        """Reference log-mels (B, 100, T) + frame counts (B,) -> each row's real subsampled frames (T'_b, C): the
        conditioning encoder's input subsampling, which ``conditioning_from_frames`` continues."""
        frames, mask = self.conditioning_encoder.embed.frames(
            cond_mel.transpose(1, 2), length_mask(cond_lengths, cond_mel.shape[2]))
        return [f[: int(n)] for f, n in zip(frames, mask.sum(dim=1), strict=True)]

    def conditioning_from_frames(self, frames: torch.Tensor, frame_lengths: torch.Tensor, *,
                                 mask_padding: bool = False) -> torch.Tensor:
        """Right-padded subsampled frames (B, T', C) from ``reference_frames`` + counts (B,) -> speaker latents
        (B, 32, D); with ``mask_padding`` equal to ``get_conditioning`` of the mels they came from."""
        x, mask = self.conditioning_encoder.encode(frames, length_mask(frame_lengths, frames.shape[1]), mask_padding)
        return self.perceiver_encoder(x, mask)


    # ------------------------------------------------------------------------------- training layout

    def training_tokens(self, text_ids, text_lengths, codes, wav_lengths) -> TrainingTokens:
        """Official padding and alignment (§2.4) of text ids (B, Lt) and codes (B, Lm); inputs are not modified."""
        return aligned_tokens(self.cfg, text_ids, text_lengths, codes, self.cfg.kept_codes(wav_lengths))

    def build_training_inputs(self, conds: torch.Tensor, tokens: TrainingTokens) -> torch.Tensor:
        """[conds || text segment || mel segment] embeddings, (B, N + Lt+2 + Lm+2, D)."""
        return training_inputs(self, conds, tokens)

    def _segment_hidden(self, conds, tokens: TrainingTokens, mask_padding: bool):
        """(text hidden, mel hidden) after final_norm; see ``segment_hidden``."""
        return segment_hidden(self, conds, tokens, mask_padding)

    def _conds(self, cond_mel, cond_mel_lengths, conds, mask_padding: bool):
        if (cond_mel is None) == (conds is None):
            raise ValueError("give exactly one of cond_mel (reference log-mel) and conds (precomputed latents)")
        if conds is not None:
            return conds
        return self.get_conditioning(cond_mel, cond_mel_lengths, mask_padding=mask_padding)

    def logits(self, cond_mel, text_ids, text_lengths, codes, wav_lengths, cond_mel_lengths=None, *,
               conds=None, mask_padding: bool = False, mask_loss: bool = False) -> GPTLogits:
        """Per-position text and mel logits of the training layout, with their targets.

        Defaults reproduce the official forward. ``mask_padding`` hides padding from the conditioning
        encoder and from attention, so each row's real positions equal its unpadded run; ``mask_loss`` sets
        padding targets to IGNORE_INDEX, which ``F.cross_entropy`` skips. ``conds`` (B, 32, D) replaces
        ``cond_mel`` when already computed.
        """
        conds = self._conds(cond_mel, cond_mel_lengths, conds, mask_padding)
        tok = self.training_tokens(text_ids, text_lengths, codes, wav_lengths)
        text_h, mel_h = self._segment_hidden(conds, tok, mask_padding)
        text_tgt, mel_tgt = tok.text_targets, tok.mel_targets
        if mask_loss:
            text_tgt = text_tgt.masked_fill(~tok.text_mask, IGNORE_INDEX)
            mel_tgt = mel_tgt.masked_fill(~tok.mel_mask, IGNORE_INDEX)
        text_logits = self.text_head(text_h).transpose(1, 2)  # (B, Vt, Lt+2)
        mel_logits = self.mel_head(mel_h).transpose(1, 2)  # (B, Vm, Lm+2)
        return GPTLogits(text_logits, mel_logits, text_tgt, mel_tgt)

    def forward(self, cond_mel, text_ids, text_lengths, codes, wav_lengths, cond_mel_lengths=None,
                return_latent: bool = False):
        """The official training forward: ``(loss_text, loss_mel, mel_logits (B, Vm, Lm+2))``.

        With ``return_latent`` it returns the vocoder latents instead: the final_norm'd hidden states of the
        mel segment without its last two positions, (B, Lm, D).
        """
        if return_latent:
            conds = self.get_conditioning(cond_mel, cond_mel_lengths)
            tok = self.training_tokens(text_ids, text_lengths, codes, wav_lengths)
            return self._segment_hidden(conds, tok, mask_padding=False)[1][:, :-2]
        out = self.logits(cond_mel, text_ids, text_lengths, codes, wav_lengths, cond_mel_lengths)
        loss_text = F.cross_entropy(out.text_logits, out.text_targets)
        loss_mel = F.cross_entropy(out.mel_logits, out.mel_targets)
        return loss_text, loss_mel, out.mel_logits

    def latents(self, conds, text_ids, codes, text_lengths=None, code_lengths=None) -> torch.Tensor:
        """Vocoder latents (B, N, D) for codes (B, N) at training positions; latent k predicts code k+1.

        Without lengths this is the official unbatched latent pass. With right-padded batches pass the
        lengths: text padding is then hidden from attention, and each row's first ``code_lengths[b]``
        latents equal its unpadded run (causality already keeps later codes out of them).
        """
        B, Lt, N = text_ids.shape[0], text_ids.shape[1], codes.shape[1]
        masked = text_lengths is not None
        text_lengths = text_lengths if masked else torch.full((B,), Lt, device=codes.device)
        code_lengths = code_lengths if code_lengths is not None else torch.full((B,), N, device=codes.device)
        tok = self.training_tokens(text_ids, text_lengths, codes, code_lengths * self.cfg.mel_length_compression)
        return self._segment_hidden(conds, tok, mask_padding=masked)[1][:, :-2]


def onset_weights(shape: torch.Size, onsets: list[list[int]] | None, weight: float,
                  codes: int) -> torch.Tensor | None:
    """Per-position code CE weights (B, L) for ``row_ce``: ``weight`` on the first ``codes`` codes of each event
    that ``onsets`` starts (target position k is code k), 1 elsewhere; None when nothing is weighted."""
    if weight == 1.0 or not onsets or not any(onsets):
        return None
    out = torch.ones(shape)
    for row, starts in enumerate(onsets):
        for first in starts:
            out[row, first : first + codes] = weight
    return out


def position_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CE of each position, (B, L): logits (B, V, L), targets (B, L); 0 where the target is IGNORE_INDEX."""
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="none")


def row_ce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean CE of each row over its non-ignored positions: logits (B, V, L), targets (B, L) -> (B,); ``weights``
    (B, L) scale each position's CE (the count of positions stays the divisor)."""
    return row_mean(position_ce(logits, targets), targets, weights)


def row_mean(ce: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``row_ce`` from per-position CE (B, L) already taken (``position_ce``)."""
    if weights is not None:
        ce = ce * weights.to(ce.device)
    count = (targets != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return ce.sum(dim=1) / count
