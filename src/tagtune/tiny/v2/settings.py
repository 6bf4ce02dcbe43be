"""What the tiny IndexTTS-2 base is: its official-format config (with the ``fixture:`` section of hard-coded
sizes), its w2v-BERT and BigVGAN v2 configs, and the build recipe's knobs.

The auxiliary networks have the parity fixture's tiny sizes (w2v-BERT keeps width 1024, which the official GPT
hard-codes as its conditioners' input, but only the one layer IndexTTS2 reads); the GPT is wider and deeper than
the fixture's so that it can learn speech from the synthetic corpus.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tagtune.config import (
    CAMPPlusWidths,
    ConditionConfig,
    DiTConfig,
    GPTV2Config,
    HardCodedSizes,
    LengthRegulatorConfig,
    ModelConfigV2,
    S2MelConfig,
    SemanticCodecConfig,
    WaveNetConfig,
)

NUM_SEMANTIC_CODES = 256  # codec codebook size; the GPT adds start (256) and stop (257)
W2V_HIDDEN_LAYER = 1  # the tiny w2v-BERT has one layer and IndexTTS2 reads its output (hidden_states[1])


@dataclass
class TinySizesV2:
    """Model sizes of the tiny v2 base (the vocabulary size comes from the trained tokenizer)."""

    model_dim: int = 128
    layers: int = 4
    heads: int = 4
    max_mel_tokens: int = 800  # 16 s at 50 codes/s
    max_text_tokens: int = 160
    cond_dim: int = 32
    cond_units: int = 64
    cond_heads: int = 2
    cond_blocks: int = 1
    emo_dim: int = 16
    emo_units: int = 32
    emo_blocks: int = 1
    emo_perceiver_mult: float = 0.125  # the emotion perceiver is 1024 wide (hard-coded): a small multiplier
    codec_dim: int = 32
    codec_units: int = 64
    codec_layers: int = 2
    codec_codebook_dim: int = 8
    w2v_intermediate: int = 64
    bigvgan_channels: int = 64  # upsample_initial_channel: 64 -> 32 ... -> 1 channel (a random vocoder)


def w2v_bert_config(sizes: TinySizesV2 | None = None) -> dict:
    """The tiny w2v-BERT 2.0 ``config.json`` values that differ from transformers' defaults (width 1024, one
    layer, small feed-forward), as a dict for ``Wav2Vec2BertConfig(**...)``."""
    s = sizes or TinySizesV2()
    return {"hidden_size": 1024, "num_hidden_layers": W2V_HIDDEN_LAYER, "num_attention_heads": 16,
            "intermediate_size": s.w2v_intermediate, "feature_projection_input_dim": 160,
            "conv_depthwise_kernel_size": 31, "position_embeddings_type": "relative_key",
            "left_max_position_embeddings": 64, "right_max_position_embeddings": 8, "hidden_act": "swish",
            "layer_norm_eps": 1e-5, "add_adapter": False, "output_hidden_size": 1024,
            "hidden_dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "feat_proj_dropout": 0.0,
            "apply_spec_augment": False, "layerdrop": 0.0}


def bigvgan_v2_config(sizes: TinySizesV2 | None = None) -> dict:
    """The BigVGAN v2 ``config.json`` of the official 22 kHz / 80-band / 256x vocoder with a small first width."""
    s = sizes or TinySizesV2()
    return {"resblock": "1", "upsample_rates": [4, 4, 2, 2, 2, 2], "upsample_kernel_sizes": [8, 8, 4, 4, 4, 4],
            "upsample_initial_channel": s.bigvgan_channels, "resblock_kernel_sizes": [3, 7, 11],
            "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "use_tanh_at_final": False,
            "use_bias_at_final": False, "activation": "snakebeta", "snake_logscale": True, "num_mels": 80,
            "n_fft": 1024, "hop_size": 256, "win_size": 1024, "sampling_rate": 22050, "fmin": 0, "fmax": None}


def tiny_config_v2(vocab_size: int, sizes: TinySizesV2 | None = None) -> ModelConfigV2:
    """The official-format ModelConfigV2 of the tiny v2 base for a tokenizer of ``vocab_size`` pieces."""
    s = sizes or TinySizesV2()
    gpt = GPTV2Config(
        model_dim=s.model_dim, layers=s.layers, heads=s.heads, max_mel_tokens=s.max_mel_tokens,
        max_text_tokens=s.max_text_tokens, number_text_tokens=vocab_size,
        number_mel_codes=NUM_SEMANTIC_CODES + 2, start_mel_token=NUM_SEMANTIC_CODES,
        stop_mel_token=NUM_SEMANTIC_CODES + 1,
        condition_module=ConditionConfig(output_size=s.cond_dim, linear_units=s.cond_units,
                                         attention_heads=s.cond_heads, num_blocks=s.cond_blocks),
        emo_condition_module=ConditionConfig(output_size=s.emo_dim, linear_units=s.emo_units, attention_heads=2,
                                             num_blocks=s.emo_blocks, perceiver_mult=s.emo_perceiver_mult))
    codec = SemanticCodecConfig(codebook_size=NUM_SEMANTIC_CODES, codebook_dim=s.codec_codebook_dim,
                                vocos_dim=s.codec_dim, vocos_intermediate_dim=s.codec_units,
                                vocos_num_layers=s.codec_layers)
    s2mel = S2MelConfig(length_regulator=LengthRegulatorConfig(channels=32),
                        DiT=DiTConfig(hidden_dim=64, num_heads=4, depth=3, content_dim=32),
                        wavenet=WaveNetConfig(hidden_dim=64, num_layers=2))
    fixture = HardCodedSizes(w2v_bert_hidden_layer=W2V_HIDDEN_LAYER, gpt_layer_in_dim=s.model_dim,
                             campplus_extra_kwargs=CAMPPlusWidths(growth_rate=8, bn_size=2, init_channels=32))
    return ModelConfigV2(gpt=gpt, semantic_codec=codec, s2mel=s2mel, fixture=fixture)


@dataclass
class BuildSettingsV2:
    """Every knob of the v2 build; the defaults make the shipped model."""

    seed: int = 0
    n_clips: int = 2400
    chinese_fraction: float = 0.45
    val_fraction: float = 0.05
    engine: str = "auto"
    vocab_size: int = 512
    sizes: TinySizesV2 = field(default_factory=TinySizesV2)
    codec_clips: int = 400  # clips with events (half of them), same voices and languages: codec fitting only
    codec_fit_frames: int = 60000  # feature rows the codec's projection and codebook are fitted on
    codec_event_share: float = 0.0  # of those rows, drawn from inside the codec clips' events (0: all rows alike)
    gpt_steps: int = 700
    gpt_batch: int = 16
    gpt_lr: float = 2e-3
    check_texts: int = 16
    threads: int = 1

    @classmethod
    def quick(cls, **overrides) -> BuildSettingsV2:
        """Seconds-long settings for tests: same code path, tiny corpus and step counts."""
        sizes = TinySizesV2(model_dim=32, layers=1, heads=2, max_mel_tokens=600, max_text_tokens=120)
        base = dict(n_clips=30, val_fraction=0.1, vocab_size=200, sizes=sizes, codec_clips=10, codec_fit_frames=2000,
                    gpt_steps=3, gpt_batch=4, check_texts=1)
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict:
        return asdict(self)
