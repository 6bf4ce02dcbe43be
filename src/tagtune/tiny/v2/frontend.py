"""The tiny v2 base's front end, fitted to the corpus: w2v-BERT statistics and the semantic codec.

IndexTTS2 reads semantic codes: one w2v-BERT layer, normalised by per-channel statistics of speech
(``wav2vec2bert_stats.pt``), quantised by the MaskGCT codec. Here w2v-BERT is a seeded random network at the
parity fixture's tiny size (a random transformer over Kaldi fbank rows keeps what distinguishes sounds; it is
never trained). What is fitted to the corpus, so that the codes carry the speech and are all in use:

* the statistics: mean and variance of the layer's output over the fitting clips (as the released file is);
* the codec's projection (``in_project``, 1024 -> codebook_dim): the principal directions of its encoder's
  output, so that the few codebook dimensions keep the most varied part of the signal, and ``out_project`` its
  transpose (the decoder side, for ``vq2emb``);
* the codebook: spherical k-means of the projected frames (the codec picks codes by cosine).

Event rows can be over-weighted in both fits (``event_share`` of the fitted rows; 3 % in the natural mix, which the
shipped base keeps). With the natural mix, PCA and k-means spend nearly everything on speech, and a giggle's rows
spread over the speech codes. Measured with the built bases' codecs on 300 tagged clips of the demo corpus (held
out of the fit), mutual information between a row's code and its label (speech / laughs / giggles / sighs; label
entropy 0.70 nats): 0.40 nats for the shipped codec (8 dimensions, natural mix), 0.53 with 30 % event rows, 0.59 at
16 dimensions and 30 %; the giggles' Jensen-Shannon divergence from speech 0.33 -> 0.61, their distinct codes
165 -> 67. Distinct codes did not make
the v2 demo better (BENCHMARKS.md, the IndexTTS-2 demo): the events' codes became predictable from one another,
and the tuned model's gain from the tag per event code fell.

The fitting clips are the GPT's training clips plus a few hundred clips of the same voices with the
generator's laughs, giggles and sighs in them: the released codec was trained on audio that has such sounds, and a
codebook fitted to speech alone has no codes for them (the GPT itself never hears an event: its corpus is
untagged). Hidden states are computed the way preparation computes them (``data.semantic``: the speaker path to 16 kHz,
SeamlessM4T fbank rows, batched with the attention mask), so the build's codes are the ones ``prepare`` gives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

from tagtune.audio import code_span
from tagtune.config import SemanticCodecConfig
from tagtune.data.dataset import SAMPLES_PER_SEMANTIC_CODE
from tagtune.data.semantic import speaker_path_16k
from tagtune.models.v2.codec import RepCodec
from tagtune.models.v2.semantic_features import SemanticFeatures, extract_inputs
from tagtune.tiny.kmeans import kmeans
from tagtune.tiny.v2.settings import TinySizesV2, w2v_bert_config

SPEECH = "speech"  # the label of a row outside every event

# SeamlessM4TFeatureExtractor as facebook/w2v-bert-2.0 ships it
EXTRACTOR_SETTINGS = {"feature_size": 80, "num_mel_bins": 80, "padding_value": 1, "stride": 2,
                      "sampling_rate": 16000, "return_attention_mask": True, "padding_side": "right"}
STATE_BATCH = 8
KMEANS_ITERS = 30
# A random transformer layer at full scale mixes every frame with the whole utterance and buries what
# distinguishes one sound from another (measured on the demo's corpus: mutual information between a frame's code
# and "inside a laugh / giggle / sigh / speech" 0.29 nats at full scale, 0.48 with the branches at 0.1, of 0.68).
# Trained deep networks' layers are small updates of their residual stream; the tiny w2v-BERT's layer is made one
# by scaling the output projections of its residual branches.
RESIDUAL_BRANCH_SCALE = 0.1
RESIDUAL_BRANCH_OUTPUTS = ("ffn1.output_dense", "self_attn.linear_out", "conv_module.pointwise_conv2",
                           "ffn2.output_dense")


def feature_extractor() -> SeamlessM4TFeatureExtractor:
    return SeamlessM4TFeatureExtractor(**EXTRACTOR_SETTINGS)


def build_w2v_bert(sizes: TinySizesV2 | None, seed: int) -> Wav2Vec2BertModel:
    """The seeded random w2v-BERT 2.0 of the tiny base (eval mode), residual branches scaled down."""
    torch.manual_seed(seed)
    model = Wav2Vec2BertModel(Wav2Vec2BertConfig(**w2v_bert_config(sizes))).eval()
    with torch.no_grad():
        for layer in model.encoder.layers:
            for name, module in layer.named_modules():
                if name in RESIDUAL_BRANCH_OUTPUTS:
                    module.weight.mul_(RESIDUAL_BRANCH_SCALE)
                    if module.bias is not None:
                        module.bias.mul_(RESIDUAL_BRANCH_SCALE)
    return model


@torch.no_grad()
def hidden_states(w2v: Wav2Vec2BertModel, extractor, wavs: list[np.ndarray],
                  batch_size: int = STATE_BATCH) -> list[torch.Tensor]:
    """The raw output of the layer IndexTTS2 reads for each 24 kHz waveform: (T_i, 1024) float32, real rows."""
    width = w2v.config.hidden_size
    raw = SemanticFeatures(w2v, torch.zeros(width), torch.ones(width)).eval()
    audio = [speaker_path_16k(w)[0] for w in wavs]
    order = sorted(range(len(audio)), key=lambda i: audio[i].shape[-1])
    out: list[torch.Tensor | None] = [None] * len(audio)
    for s in range(0, len(order), batch_size):
        part = order[s : s + batch_size]
        feats, mask = extract_inputs(extractor, [audio[i] for i in part])
        states = raw.hidden_state(feats, mask)
        for row, i in enumerate(part):
            out[i] = states[row, : int(mask[row].sum())].float().clone()
    return out


def feature_stats(states: list[torch.Tensor], indices: list[int]) -> dict[str, torch.Tensor]:
    """Per-channel mean and (population) variance over every row of the ``indices`` clips: the stats file."""
    rows = torch.cat([states[i] for i in indices]).double()
    return {"mean": rows.mean(0).float(), "var": rows.var(0, unbiased=False).clamp(min=1e-8).float()}


def normalise(states: list[torch.Tensor], stats: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    std = stats["var"].sqrt()
    return [(s - stats["mean"]) / std for s in states]


def row_labels(events: Sequence[tuple[str, int, int]], n_rows: int) -> list[str]:
    """Each w2v-BERT row's label (one row per semantic code): the tag of the event it overlaps, else ``"speech"``."""
    labels = [SPEECH] * n_rows
    for tag, start, end in events:
        first, last = code_span(start, end, n_rows, SAMPLES_PER_SEMANTIC_CODE)
        labels[first:last] = [tag] * (last - first)
    return labels


def _draw(rows: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` of ``rows``: without replacement where there are enough, else with replacement (a weighting)."""
    if n <= len(rows):
        return rows[torch.randperm(len(rows), generator=gen)[:n]]
    return rows[torch.randint(len(rows), (n,), generator=gen)]


@torch.no_grad()
def _encoder_frames(codec: RepCodec, feats: list[torch.Tensor], indices: list[int], n_frames: int,
                    gen: torch.Generator, labels: Sequence[list[str]] | None = None,
                    event_share: float = 0.0) -> torch.Tensor:
    """Encoder outputs (N, 1024) of ``n_frames`` rows drawn from the ``indices`` clips.

    Evenly over all rows, or, with per-clip ``labels`` and ``event_share`` > 0, that share from event rows and the
    rest from speech rows.
    """
    z = torch.cat([codec.encoder(feats[i].T[None]) [0] for i in indices])  # (rows, 1024)
    weighted = labels is not None and event_share > 0
    inside = torch.tensor([lab != SPEECH for i in indices for lab in labels[i]]) if weighted else None
    if inside is None or not inside.any():
        if len(z) > n_frames:
            z = z[torch.randperm(len(z), generator=gen)[:n_frames]]
        return z
    n_events = round(n_frames * event_share)
    events = _draw(inside.nonzero().flatten(), n_events, gen)
    speech = (~inside).nonzero().flatten()
    speech = speech[torch.randperm(len(speech), generator=gen)[: n_frames - n_events]]
    return z[torch.cat([events, speech])]


@torch.no_grad()
def fit_codec(cfg: SemanticCodecConfig, feats: list[torch.Tensor], indices: list[int], n_frames: int,
              seed: int, labels: Sequence[list[str]] | None = None, event_share: float = 0.0
              ) -> tuple[RepCodec, dict]:
    """A seeded RepCodec whose projection and codebook are fitted to the normalised features ``feats``.

    ``labels`` (per clip, :func:`row_labels`) and ``event_share``: the share of fitted rows drawn from events.
    Returns the codec (weight norm in its stored form) and fit statistics: the variance share the projection
    keeps, and how many codes the fitting frames use.
    """
    torch.manual_seed(seed)
    codec = RepCodec(cfg).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    z = _encoder_frames(codec, feats, indices, n_frames, gen, labels, event_share).double()
    centre = z.mean(0)
    _, sv, vt = torch.linalg.svd(z - centre, full_matrices=False)
    d = cfg.codebook_dim
    comps = vt[:d]  # (d, 1024) orthonormal principal directions
    kept = float((sv[:d] ** 2).sum() / (sv**2).sum())
    vq = codec.quantizer.quantizers[0]
    vq.in_project.weight_v.copy_(comps[:, :, None].float())
    vq.in_project.weight_g.fill_(1.0)
    vq.in_project.bias.copy_((-comps @ centre).float())
    vq.out_project.weight_v.copy_(comps.T[:, :, None].float())
    vq.out_project.weight_g.copy_(comps.T.norm(dim=1).view(-1, 1, 1).float())
    vq.out_project.bias.copy_(centre.float())
    projected = F.normalize(((z - centre) @ comps.T).float(), dim=1)
    book = F.normalize(kmeans(projected, cfg.codebook_size, seed + 2, iters=KMEANS_ITERS), dim=1)
    vq.codebook.weight.copy_(book)
    used = int(vq.nearest(projected.T[None].contiguous()).unique().numel())
    return codec, {"fit_frames": len(z), "projection_variance_kept": round(kept, 4), "codes_used_on_fit": used}


def code_label_information(codes: Sequence[torch.Tensor], labels: Sequence[list[str]]) -> dict:
    """How much a row's code says about its label: mutual information and the labels' entropy (nats), and per
    tag the distinct codes of its rows and the Jensen-Shannon divergence of its code histogram from speech's."""
    names = sorted({lab for clip in labels for lab in clip})
    size = 1 + max(int(c.max()) for c in codes if len(c))
    joint = torch.zeros(len(names), size, dtype=torch.float64)
    for c, clip in zip(codes, labels):
        joint.index_put_((torch.tensor([names.index(lab) for lab in clip[: len(c)]]), c[: len(clip)]),
                         torch.ones(min(len(c), len(clip)), dtype=torch.float64), accumulate=True)
    p = joint / joint.sum()
    outer = p.sum(1, keepdim=True) * p.sum(0, keepdim=True)
    label_p = p.sum(1)
    out = {"mutual_information": round(float(torch.where(p > 0, p * (p / outer).log(), 0.0).sum()), 4),
           "label_entropy": round(float(-(label_p * label_p.log()).sum()), 4), "tags": {}}
    if SPEECH not in names:
        return out
    speech = joint[names.index(SPEECH)]
    for tag in (n for n in names if n != SPEECH):
        row = joint[names.index(tag)]
        out["tags"][tag] = {"rows": int(row.sum()), "codes": int((row > 0).sum()),
                            "js_from_speech": round(_js(row, speech), 4)}
    return out


def _js(a: torch.Tensor, b: torch.Tensor) -> float:
    """Jensen-Shannon divergence (nats) of two count histograms."""
    p, q = a / a.sum(), b / b.sum()
    m = (p + q) / 2

    def kl(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x * (x / m).log(), 0.0).sum()

    return float((kl(p) + kl(q)) / 2)


@torch.no_grad()
def encode_codes(codec: RepCodec, feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """Semantic codes (T_i,) of each clip's normalised features, each clip alone (as preparation does)."""
    return [codec.quantize(f[None])[0][0].long() for f in feats]
