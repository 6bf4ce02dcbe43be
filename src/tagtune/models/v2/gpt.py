"""UnifiedVoice of IndexTTS2: text + speaker and emotion prompts -> semantic codes, and latents for s2mel.

The 1.x trunk (GPT-2 blocks, text/mel tables and heads, ``final_norm``) with three differences:

* the speaker conformer reads normalised w2v-BERT features (B, T, 1024) instead of a log-mel;
* an emotion conformer + a one-latent perceiver of width 1024 give the emotion vector
  ``emo_layer(emovec_layer(.))`` (B, D), added to each of the 32 speaker latents;
* two ``speed_emb`` rows follow the latents, so the prefix is 34 positions:
  ``[conds + emovec (32), speed_emb(1), speed_emb(0)]``, then the text segment, then the mel segment.

Attribute names are the official state-dict keys (``emo_conditioning_encoder``, ``emo_perceiver_encoder``,
``emo_layer``, ``emovec_layer``, ``speed_emb`` ...). Decoding lives in ``generation.v2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tagtune.config import W2V_BERT_DIM, GPTV2Config
from tagtune.models.conditioning import ConformerEncoder, PerceiverResampler
from tagtune.models.unified_voice import (
    IGNORE_INDEX,
    OFFICIAL_DROPOUT,
    GPTLogits,
    TokenTrunk,
    add_token_trunk,
    aligned_tokens,
    segment_hidden,
)

EMO_LATENTS = 1  # the emotion perceiver resamples to one latent
SPEED_ROWS = 2  # speed_emb rows; the prefix uses row 1 then row 0


class UnifiedVoiceV2(TokenTrunk):
    """The IndexTTS2 GPT, built from ``GPTV2Config``; its state dict matches the official ``gpt.pth``."""

    def __init__(self, cfg: GPTV2Config, dropout: float = OFFICIAL_DROPOUT):
        super().__init__()
        self.cfg = cfg
        D, cm, em = cfg.model_dim, cfg.condition_module, cfg.emo_condition_module
        self.conditioning_encoder = ConformerEncoder(cm, W2V_BERT_DIM)
        self.perceiver_encoder = PerceiverResampler(
            D, cm.output_size, cm.attention_heads, cm.perceiver_mult, cfg.condition_num_latent
        )
        self.speed_emb = nn.Embedding(SPEED_ROWS, D)
        nn.init.zeros_(self.speed_emb.weight)  # the official init
        self.emo_conditioning_encoder = ConformerEncoder(em, W2V_BERT_DIM)
        # the official model hard-codes the emotion perceiver width to the w2v-BERT width
        self.emo_perceiver_encoder = PerceiverResampler(
            W2V_BERT_DIM, em.output_size, em.attention_heads, em.perceiver_mult, EMO_LATENTS
        )
        self.emovec_layer = nn.Linear(W2V_BERT_DIM, D)
        self.emo_layer = nn.Linear(D, D)
        add_token_trunk(self, cfg, D, dropout)

    # ------------------------------------------------------------------------------------ conditioning

    def get_conditioning(self, spk_cond_emb: torch.Tensor, lengths: torch.Tensor | None = None, *,
                         mask_padding: bool = False) -> torch.Tensor:
        """Speaker w2v-BERT features (B, T, 1024) + frame counts (B,) -> speaker latents (B, 32, D).

        The official pipeline passes the feature width (1024) as every row's "length", so nothing is masked
        for prompts up to 1024 frames; ``lengths=None`` means all frames are real. With true lengths of a
        right-padded batch the official conformer still leaks padding into valid frames (see
        ``models.conditioning``); ``mask_padding`` makes each row equal its unpadded run.
        """
        x, mask = self.conditioning_encoder(spk_cond_emb, _lengths(spk_cond_emb, lengths), mask_padding)
        return self.perceiver_encoder(x, mask)  # (B, 32, D)

    def get_emo_conditioning(self, emo_cond_emb: torch.Tensor, lengths: torch.Tensor | None = None, *,
                             mask_padding: bool = False) -> torch.Tensor:
        """Emotion w2v-BERT features (B, T, 1024) -> the emotion perceiver's latent (B, 1024)."""
        x, mask = self.emo_conditioning_encoder(emo_cond_emb, _lengths(emo_cond_emb, lengths), mask_padding)
        return self.emo_perceiver_encoder(x, mask)[:, 0]

    def get_emovec(self, emo_cond_emb: torch.Tensor, lengths: torch.Tensor | None = None, *,
                   mask_padding: bool = False) -> torch.Tensor:
        """Emotion features (B, T, 1024) -> emotion vector (B, D)."""
        latent = self.get_emo_conditioning(emo_cond_emb, lengths, mask_padding=mask_padding)
        return self.emo_layer(self.emovec_layer(latent))

    def merge_emovec(self, spk_cond_emb, emo_cond_emb, spk_lengths=None, emo_lengths=None,
                     alpha: float = 1.0) -> torch.Tensor:
        """The official blend ``base + alpha * (emo - base)`` of the speaker's own emotion vector (base) and
        the emotion prompt's, computed this way even for alpha = 1 (B, D)."""
        emo = self.get_emovec(emo_cond_emb, emo_lengths)
        base = self.get_emovec(spk_cond_emb, spk_lengths)
        return base + alpha * (emo - base)

    def conditioning_prefix(self, conds: torch.Tensor, emovec: torch.Tensor) -> torch.Tensor:
        """Speaker latents (B or 1, 32, D) + emotion vector (B, D) -> the 34-position prefix (B, 34, D)."""
        B = max(conds.shape[0], emovec.shape[0])
        rows = torch.tensor([1, 0], device=conds.device)
        speed = self.speed_emb(rows)[None].expand(B, -1, -1)  # (B, 2, D): speed_emb(1), speed_emb(0)
        return torch.cat([(conds + emovec[:, None]).expand(B, -1, -1), speed], dim=1)


    # ------------------------------------------------------------------------------- teacher forcing

    def _hidden(self, conds, emovec, text_ids, text_lengths, codes, code_lengths, mask_padding: bool):
        tokens = aligned_tokens(self.cfg, text_ids, text_lengths, codes, code_lengths)
        prefix = self.conditioning_prefix(conds, emovec)
        return tokens, *segment_hidden(self, prefix, tokens, mask_padding)

    def logits(self, conds, emovec, text_ids, text_lengths, codes, code_lengths, *,
               mask_padding: bool = False, mask_loss: bool = False) -> GPTLogits:
        """Text logits (B, Vt, Lt+2) and mel logits (B, Vm, N+2) of the training layout, with targets.

        Positions at or past ``text_lengths`` / ``code_lengths`` (code counts, not wav lengths) become stop
        tokens, as in the official forward. ``mask_padding`` hides padding from attention; ``mask_loss`` sets
        padding targets to IGNORE_INDEX, which ``F.cross_entropy`` skips.
        """
        tok, text_h, mel_h = self._hidden(conds, emovec, text_ids, text_lengths, codes, code_lengths, mask_padding)
        text_tgt, mel_tgt = tok.text_targets, tok.mel_targets
        if mask_loss:
            text_tgt = text_tgt.masked_fill(~tok.text_mask, IGNORE_INDEX)
            mel_tgt = mel_tgt.masked_fill(~tok.mel_mask, IGNORE_INDEX)
        text_logits = self.text_head(text_h).transpose(1, 2)
        mel_logits = self.mel_head(mel_h).transpose(1, 2)
        return GPTLogits(text_logits, mel_logits, text_tgt, mel_tgt)

    def forward(self, conds, emovec, text_ids, text_lengths, codes, code_lengths, *,
                mask_padding: bool = False) -> torch.Tensor:
        """The official forward: latents for s2mel (B, N, D), the final_norm'd mel-segment states without the
        last two positions; latent k is the state at input k of [start, c0, c1, ...] and predicts c_k."""
        _, _, mel_h = self._hidden(conds, emovec, text_ids, text_lengths, codes, code_lengths, mask_padding)
        return mel_h[:, :-2]


def feature_width_lengths(features: torch.Tensor) -> torch.Tensor:
    """The official conditioning "lengths" of features (B, T, C): C for every row (1024, all frames real
    for prompts up to 1024 frames); pass these to reproduce the official numbers bit for bit."""
    return torch.full((features.shape[0],), features.shape[-1], device=features.device)


def _lengths(features: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    if lengths is not None:
        return lengths.to(features.device)
    return torch.full((features.shape[0],), features.shape[1], device=features.device)


# ---------------------------------------------------------------------------------- emotion-vector mix
#
# An 8-value emotion vector w selects, for each emotion i, the row of its ``spk_matrix`` group (feat1.pt)
# most cosine-similar to the speaker's CAMPPlus style, and mixes the matching ``emo_matrix`` rows (feat2.pt):
# emovec = sum_i w_i * emo_matrix_i[index_i] + (1 - sum w) * merged speaker/emotion-prompt vector.


def scale_emotion_weights(weights: list[float], alpha: float) -> list[float]:
    """The official strength scaling of an emotion vector: alpha clamped to [0, 1], and for alpha != 1 each
    weight scaled and truncated to 4 decimals."""
    scale = max(0.0, min(1.0, alpha))
    if scale == 1.0:
        return list(weights)
    return [int(w * scale * 10000) / 10000 for w in weights]


def emotion_rows(style: torch.Tensor, spk_matrix: torch.Tensor, emo_num: list[int]) -> torch.Tensor:
    """Per emotion group, the index of the ``spk_matrix`` row most cosine-similar to ``style`` (1, S) -> (8,)."""
    groups = torch.split(spk_matrix.float(), emo_num)
    sims = [F.cosine_similarity(style.float(), g, dim=1) for g in groups]  # each (rows of group,)
    return torch.stack([s.argmax() for s in sims])


def emotion_matrix_vector(weights: torch.Tensor, rows: torch.Tensor, emo_matrix: torch.Tensor,
                          emo_num: list[int]) -> torch.Tensor:
    """sum_i weights[i] * emo_matrix group i row rows[i] -> (1, D)."""
    groups = torch.split(emo_matrix, emo_num)
    picked = torch.stack([g[i] for g, i in zip(groups, rows.tolist(), strict=True)])  # (8, D)
    return (weights[:, None].to(picked) * picked).sum(0, keepdim=True)


def blend_emotion_vector(emovec_mat: torch.Tensor, weights: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
    """The official mix: the matrix vector plus the merged prompt vector with the weight left over (1, D)."""
    return emovec_mat + (1 - weights.sum()) * merged
