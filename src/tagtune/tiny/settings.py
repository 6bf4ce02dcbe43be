"""What the tiny base model is: its official-format config and the build recipe's settings.

The model config mirrors the official ``config.yaml`` with small sizes; the bigvgan section carries the
official training-only keys too, so the file reads like a released one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from tagtune.config import BigVGANConfig, ConditionConfig, DatasetConfig, DVAEConfig, GPTConfig, ModelConfig

NUM_MEL_CODES = 256  # DVAE codebook size; the GPT adds start (256) and stop (257)
# Training-only keys of the official bigvgan section (the generator ignores them), as in the release.
BIGVGAN_TRAINING_KEYS = {
    "adam_b1": 0.8, "adam_b2": 0.99, "lr_decay": 0.999998, "seed": 1234,
    "use_cqtd_instead_of_mrd": True, "cqtd_filters": 128, "cqtd_max_filters": 1024, "cqtd_filters_scale": 1,
    "cqtd_dilations": [1, 2, 4], "cqtd_hop_lengths": [512, 256, 256], "cqtd_n_octaves": [9, 9, 9],
    "cqtd_bins_per_octaves": [24, 36, 48],
    "resolutions": [[1024, 120, 600], [2048, 240, 1200], [512, 50, 240]], "mpd_reshapes": [2, 3, 5, 7, 11],
    "use_spectral_norm": False, "discriminator_channel_mult": 1,
    "use_multiscale_melloss": True, "lambda_melloss": 15, "clip_grad_norm": 1000,
    "segment_size": 16384, "num_freq": 1025, "n_fft": 1024, "hop_size": 256, "win_size": 1024,
    "sampling_rate": 24000, "fmin": 0, "fmax": None, "fmax_for_loss": None, "mel_type": "pytorch",
    "num_workers": 2, "dist_config": {"dist_backend": "nccl", "dist_url": "tcp://localhost:54321", "world_size": 1},
}


@dataclass
class TinySizes:
    """Model sizes of the tiny base (the vocabulary size comes from the trained tokenizer)."""

    model_dim: int = 128
    layers: int = 4
    heads: int = 4
    max_mel_tokens: int = 400  # 17 s of speech: espeak-ng's Mandarin runs to ~12 s where English stops at ~7 s
    max_text_tokens: int = 160
    cond_dim: int = 64
    cond_units: int = 128
    cond_heads: int = 2
    cond_blocks: int = 1
    dvae_hidden: int = 64
    dvae_codebook_dim: int = 32
    vocoder_channels: int = 128  # upsample_initial_channel: 128 -> 64 ... -> 2 channels at 24 kHz
    speaker_dim: int = 32


def tiny_config(vocab_size: int, sizes: TinySizes | None = None) -> ModelConfig:
    """The official-format ModelConfig of the tiny base for a tokenizer of ``vocab_size`` pieces."""
    s = sizes or TinySizes()
    cond = ConditionConfig(output_size=s.cond_dim, linear_units=s.cond_units, attention_heads=s.cond_heads,
                           num_blocks=s.cond_blocks)
    gpt = GPTConfig(model_dim=s.model_dim, layers=s.layers, heads=s.heads, max_mel_tokens=s.max_mel_tokens,
                    max_text_tokens=s.max_text_tokens, number_text_tokens=vocab_size,
                    number_mel_codes=NUM_MEL_CODES + 2, start_mel_token=NUM_MEL_CODES,
                    stop_mel_token=NUM_MEL_CODES + 1, condition_module=cond)
    dvae = DVAEConfig(num_tokens=NUM_MEL_CODES, hidden_dim=s.dvae_hidden, num_resnet_blocks=1,
                      codebook_dim=s.dvae_codebook_dim)
    voc = BigVGANConfig(gpt_dim=s.model_dim, upsample_initial_channel=s.vocoder_channels,
                        speaker_embedding_dim=s.speaker_dim, extra=dict(BIGVGAN_TRAINING_KEYS))
    return ModelConfig(dataset=DatasetConfig(), gpt=gpt, vqvae=dvae, bigvgan=voc, version=1.5)


@dataclass
class BuildSettings:
    """Every knob of the build; the defaults make the shipped model (~11 CPU minutes, one thread)."""

    seed: int = 0
    n_clips: int = 3000  # ~1650 English, ~1350 Mandarin: the GPT sees each clip 4-5 times
    chinese_fraction: float = 0.45  # share of Mandarin clips (espeak-ng cmn, the same pre-training voices)
    val_fraction: float = 0.05
    engine: str = "auto"  # espeak-ng when installed
    vocab_size: int = 512  # requested; the corpus may support fewer pieces (the model keeps what it got)
    sizes: TinySizes = field(default_factory=TinySizes)
    dvae_decoder_steps: int = 150
    gpt_steps: int = 800
    gpt_batch: int = 16
    gpt_lr: float = 2e-3
    vocoder_clips: int = 300
    vocoder_steps: int = 300
    vocoder_batch: int = 8
    vocoder_full_stages: int = 2
    prompts_per_speaker: int = 3
    check_texts: int = 24  # validation texts per language sampled after training: the stop-code rate
    threads: int = 1  # one thread: reproducible, and faster than two on a shared 2-core machine

    @classmethod
    def quick(cls, **overrides) -> BuildSettings:
        """Seconds-long settings for tests: same code path, tiny corpus and step counts."""
        sizes = TinySizes(model_dim=32, layers=1, heads=2, max_mel_tokens=250, max_text_tokens=120,
                          cond_dim=16, cond_units=32, cond_blocks=1, dvae_hidden=16, dvae_codebook_dim=8,
                          vocoder_channels=64, speaker_dim=8)
        base = dict(n_clips=36, val_fraction=0.1, vocab_size=200, sizes=sizes, dvae_decoder_steps=2,
                    gpt_steps=3, gpt_batch=4, vocoder_clips=4, vocoder_steps=2, vocoder_batch=2,
                    prompts_per_speaker=1, check_texts=1)
        return cls(**{**base, **overrides})

    def scaled(self, minutes: float) -> BuildSettings:
        """The same recipe with GPT and vocoder steps scaled to ``minutes`` nominal CPU minutes of training."""
        factor = minutes / NOMINAL_TRAIN_MINUTES
        return replace(self, gpt_steps=max(1, round(self.gpt_steps * factor)),
                       vocoder_steps=max(1, round(self.vocoder_steps * factor)))

    def to_dict(self) -> dict:
        return asdict(self)


NOMINAL_TRAIN_MINUTES = 9.0  # CPU minutes the default GPT + vocoder steps took on one core of a 2-core build machine
