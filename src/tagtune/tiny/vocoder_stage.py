"""The build's last two model steps: checking the GPT's free-running output, then fitting the vocoder.

The vocoder learns from the pre-trained GPT's own latents (teacher-forced on the corpus codes, conditioned
on another clip of the speaker), the inputs it will get at synthesis time.
"""

from __future__ import annotations

import torch

from tagtune.config import BigVGANConfig
from tagtune.generation import GenerationConfig, generate_codes
from tagtune.models.bigvgan import BigVGAN
from tagtune.models.unified_voice import UnifiedVoice
from tagtune.tiny.pretrain import Example, fixed_prompts, same_speaker
from tagtune.tiny.vocoder_train import VocoderSettings, mel_l1, train_vocoder, unit_gain_path

HOP = 1024
CHECK_MAX_NEW = 400  # the length limit of the stop check (also capped by the model's max_mel_tokens)
VAL_VOCODER_CLIPS = 8


@torch.no_grad()
def check_generation(gpt: UnifiedVoice, examples: list[Example], mels: list[torch.Tensor], indices: list[int],
                     prompt_pool: list[int], seed: int) -> list[dict]:
    """Sample codes (official defaults) for some texts: did each stop, and how long vs the real clip?"""
    pools = same_speaker(examples, prompt_pool + indices)
    prompts = fixed_prompts(indices, examples, pools, mels)
    gen = torch.Generator().manual_seed(seed)
    max_new = min(CHECK_MAX_NEW, gpt.cfg.max_mel_tokens)
    out = []
    for i, prompt in zip(indices, prompts):
        codes, lengths = generate_codes(gpt, examples[i].text_ids[None], GenerationConfig(max_new_tokens=max_new),
                                        cond_mel=prompt[None], generator=gen)
        n = int(lengths[0])
        out.append({"clip": i, "stopped": bool((codes[0] == gpt.cfg.stop_mel_token).any()),
                    "codes": n, "real_codes": int(len(examples[i].codes)),
                    "distinct_codes": int(codes[0, :n].unique().numel())})
    return out


@torch.no_grad()
def gpt_latents(gpt: UnifiedVoice, examples: list[Example], mels: list[torch.Tensor], indices: list[int],
                prompt_pool: list[int]) -> list[torch.Tensor]:
    """Vocoder inputs of each clip: latents (N, D) of its codes, conditioned on another clip of the speaker."""
    pools = same_speaker(examples, prompt_pool + indices)
    prompts = fixed_prompts(indices, examples, pools, mels)
    out = []
    for i, prompt in zip(indices, prompts):
        conds = gpt.get_conditioning(prompt[None])
        out.append(gpt.latents(conds, examples[i].text_ids[None], examples[i].codes[None])[0])
    return out


@torch.no_grad()
def speaker_embeddings(voc: BigVGAN, examples: list[Example], mels: list[torch.Tensor], indices: list[int],
                       per_speaker: int) -> list[torch.Tensor]:
    """One ECAPA embedding (1, dim) per clip, taken from a few prompts per speaker (ECAPA is costly)."""
    pools = same_speaker(examples, indices)
    table = {spk: [voc.speaker_embedding(mels[j][:, :200].T[None])[0] for j in pool[:per_speaker]]
             for spk, pool in pools.items()}
    return [table[examples[i].speaker][k % len(table[examples[i].speaker])] for k, i in enumerate(indices)]


def _audio(wav: torch.Tensor, n_codes: int) -> torch.Tensor:
    """The clip's samples aligned with its codes: exactly n_codes * 1024 (zero-padded or cut)."""
    target = n_codes * HOP
    return torch.nn.functional.pad(wav, (0, max(0, target - len(wav))))[:target]


def build_vocoder(cfg: BigVGANConfig, gpt: UnifiedVoice, examples: list[Example], clips, train_idx: list[int],
                  val_idx: list[int], s, seed: int, log=print) -> tuple[BigVGAN, dict]:
    """A seeded BigVGAN fitted to the GPT's latents; returns it (eval mode, weight norm kept) and stats."""
    torch.manual_seed(seed)
    voc = BigVGAN(cfg).eval()
    unit_gain_path(voc)
    mels = [c.mel for c in clips]
    step = max(1, len(train_idx) // max(1, s.vocoder_clips))
    fit_idx = train_idx[::step][: s.vocoder_clips]
    check_idx = val_idx[:VAL_VOCODER_CLIPS]
    data = {}
    for name, idx in (("fit", fit_idx), ("val", check_idx)):
        lat = gpt_latents(gpt, examples, mels, idx, train_idx)
        wavs = [_audio(clips[i].wav, len(la)) for i, la in zip(idx, lat)]
        data[name] = (lat, wavs, speaker_embeddings(voc, examples, mels, idx, s.prompts_per_speaker))
    vs = VocoderSettings(steps=s.vocoder_steps, batch_size=s.vocoder_batch, full_stages=s.vocoder_full_stages,
                         seed=seed)
    before = mel_l1(voc, *data["val"], full_stages=vs.full_stages)
    stats = train_vocoder(voc, *data["fit"], vs, log)
    after = mel_l1(voc, *data["val"], full_stages=vs.full_stages)
    stats |= {"clips": len(fit_idx), "val_mel_l1_init": round(before, 4), "val_mel_l1": round(after, 4),
              "ecapa": "seeded random init (not trained)"}
    return voc, stats
