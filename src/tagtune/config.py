"""Model configuration: typed dataclasses mirroring the sections of the official ``config.yaml``.

Field names follow the YAML keys so that ``ModelConfig.from_dict(yaml.safe_load(f))`` reads an official
file as it is and ``to_dict()`` writes one the official loader accepts. Keys we do not model (the BigVGAN
training / discriminator settings) are kept verbatim in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from tagtune.errors import UserError

SUPPORTED_VERSIONS = (1.0, 1.5)


class ConfigError(UserError, ValueError):
    """A config.yaml that does not describe an IndexTTS 1.0/1.5 model."""


# ------------------------------------------------------------------------------------------ typed fields


def check_fields(obj, prefix: str = "", error: type[Exception] = ConfigError) -> None:
    """Check every field of dataclass ``obj`` against its annotation; raise ``error`` naming the first bad one.

    Understood annotations: int, float, bool, str, Any, ``X | None``, ``list[X]``, ``dict[K, V]`` and nested
    dataclasses. Values are checked, never converted: an int is a valid float, a bool is not a number, a
    string is never a number (``"8"`` for an int field is an error, not an 8). The message reads
    ``<prefix><field> must be <what>, got <value> (<type>)``, e.g. ``optim.lr must be a number, got '1e-4' (str)``.
    """
    hints = _type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, expected = getattr(obj, f.name), hints[f.name]
        if not _matches(value, expected):
            raise error(f"{prefix}{f.name} must be {_describe(expected)}, got {value!r} ({type(value).__name__})")


def check_positive(obj, prefix: str, names: tuple[str, ...], error: type[Exception] = ConfigError) -> None:
    """Sizes that must be at least 1 (a zero head count divides by zero, a zero layer count builds nothing)."""
    for name in names:
        value = getattr(obj, name)
        if value < 1:
            raise error(f"{prefix}{name} must be >= 1, got {value!r}")


@functools.cache
def _type_hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _union_args(tp) -> tuple | None:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return typing.get_args(tp)
    return None


def _matches(value, tp) -> bool:
    if tp is Any:
        return True
    if (options := _union_args(tp)) is not None:
        return any(_matches(value, t) for t in options)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    if dataclasses.is_dataclass(tp):
        return isinstance(value, tp)
    raise TypeError(f"check_fields does not understand the annotation {tp!r}")


_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "true/false values"),
          str: ("a string", "strings")}


def _describe(tp, plural: bool = False) -> str:
    if (options := _union_args(tp)) is not None:
        words = [_describe(t, plural) for t in options if t is not type(None)]
        return " or ".join(words) + (" or null" if type(None) in options else "")
    if tp in _NAMES:
        return _NAMES[tp][plural]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return f"{'lists' if plural else 'a list'} of {_describe(args[0], plural=True)}"
    return "mappings" if plural else "a mapping"


def _pick(cls, data: dict[str, Any], section: str):
    """Build dataclass ``cls`` from ``data``; unknown keys are kept in ``extra`` when the class has one."""
    if not isinstance(data, dict):
        raise ConfigError(f"{section} must be a mapping, got {data!r} ({type(data).__name__})")
    names = {f.name for f in dataclasses.fields(cls)}
    known = {k: v for k, v in data.items() if k in names and k != "extra"}
    unknown = {k: v for k, v in data.items() if k not in names}
    if "extra" in names:
        known["extra"] = unknown
    try:
        return cls(**known)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"config section '{section}': {e}") from None


@dataclass
class MelConfig:
    sample_rate: int = 24000
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mels: int = 100
    mel_fmin: float = 0
    normalize: bool = False

    def __post_init__(self):
        check_fields(self, "dataset.mel.")
        check_positive(self, "dataset.mel.", ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels"))


@dataclass
class DatasetConfig:
    bpe_model: str = "bpe.model"
    sample_rate: int = 24000
    squeeze: bool = False
    mel: MelConfig = field(default_factory=MelConfig)

    def __post_init__(self):
        check_fields(self, "dataset.")
        check_positive(self, "dataset.", ("sample_rate",))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"dataset must be a mapping, got {d!r} ({type(d).__name__})")
        d = dict(d)
        mel = _pick(MelConfig, d.pop("mel", {}) or {}, "dataset.mel")
        return cls(mel=mel, **{k: v for k, v in d.items() if k in ("bpe_model", "sample_rate", "squeeze")})


@dataclass
class ConditionConfig:
    output_size: int = 512
    linear_units: int = 2048
    attention_heads: int = 8
    num_blocks: int = 6
    input_layer: str = "conv2d2"
    perceiver_mult: float = 2  # FF inner width int(D * mult * 2/3); IndexTTS2 configs may give a fraction

    def __post_init__(self):
        check_fields(self, "gpt.condition_module.")
        check_positive(self, "gpt.condition_module.",
                       ("output_size", "linear_units", "attention_heads", "num_blocks"))
        if self.perceiver_mult <= 0:
            raise ConfigError(f"gpt.condition_module.perceiver_mult must be > 0, got {self.perceiver_mult!r}")
        if self.input_layer != "conv2d2":
            raise ConfigError(f"condition_module.input_layer '{self.input_layer}' is not supported (only conv2d2)")
        if self.output_size % self.attention_heads:
            raise ConfigError("condition_module.output_size must be divisible by attention_heads")


@dataclass
class GPTConfig:
    model_dim: int = 1280
    layers: int = 24
    heads: int = 20
    max_mel_tokens: int = 800
    max_text_tokens: int = 600
    number_text_tokens: int = 12000
    number_mel_codes: int = 8194
    start_mel_token: int = 8192
    stop_mel_token: int = 8193
    start_text_token: int = 0
    stop_text_token: int = 1
    use_mel_codes_as_input: bool = True
    mel_length_compression: int = 1024
    train_solo_embeddings: bool = False
    condition_type: str = "conformer_perceiver"
    condition_module: ConditionConfig = field(default_factory=ConditionConfig)
    activation_function: str | None = None  # absent in the official 1.5 file -> "gelu_new"
    checkpointing: bool | None = None  # absent -> official default True (training only)
    condition_num_latent: int = 32  # not in config.yaml; fixed by the official code
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.condition_module, dict):
            self.condition_module = _pick(ConditionConfig, self.condition_module, "gpt.condition_module")
        check_fields(self, "gpt.")
        check_positive(self, "gpt.", ("model_dim", "layers", "heads", "max_mel_tokens", "max_text_tokens",
                                      "number_text_tokens", "number_mel_codes", "mel_length_compression",
                                      "condition_num_latent"))
        if self.condition_type != "conformer_perceiver":
            raise ConfigError(f"gpt.condition_type '{self.condition_type}' is not supported")
        if self.model_dim % self.heads:
            raise ConfigError(f"gpt.model_dim {self.model_dim} is not divisible by gpt.heads {self.heads}")
        if self.activation_function not in (None, "gelu_new", "gelu_pytorch_tanh"):
            raise ConfigError(f"gpt.activation_function '{self.activation_function}' is not supported")
        if self.train_solo_embeddings or not self.use_mel_codes_as_input:
            raise ConfigError("train_solo_embeddings / use_mel_codes_as_input=false are not used by IndexTTS 1.x")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.heads

    @property
    def mel_positions(self) -> int:
        """Rows of ``mel_pos_embedding`` (max_mel_tokens + 2 + 1)."""
        return self.max_mel_tokens + 3

    @property
    def text_positions(self) -> int:
        """Rows of ``text_pos_embedding`` (max_text_tokens + 2)."""
        return self.max_text_tokens + 2

    @property
    def n_positions(self) -> int:
        """The official backbone's ``n_positions``: the longest causal sequence it accepts."""
        return self.mel_positions + self.text_positions

    @property
    def text_rows(self) -> int:
        """Rows of ``text_embedding`` / ``text_head``: the vocabulary plus one spare row."""
        return self.number_text_tokens + 1

    def kept_codes(self, wav_lengths):
        """Mel positions a clip of ``wav_lengths`` samples fills in training (int or tensor): one code per
        ``mel_length_compression`` samples rounded up, plus the stop code (the official alignment, spec §2.4)."""
        c = self.mel_length_compression
        return (wav_lengths + c - 1) // c + 1


@dataclass
class DVAEConfig:
    channels: int = 100
    num_tokens: int = 8192
    hidden_dim: int = 512
    num_resnet_blocks: int = 3
    codebook_dim: int = 512
    num_layers: int = 2
    positional_dims: int = 1
    kernel_size: int = 3
    smooth_l1_loss: bool = True
    use_transposed_convs: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_fields(self, "vqvae.")
        check_positive(self, "vqvae.", ("channels", "num_tokens", "hidden_dim", "codebook_dim", "num_layers",
                                        "kernel_size"))
        if self.positional_dims != 1 or self.use_transposed_convs:
            raise ConfigError("vqvae: only positional_dims=1 without transposed convs is supported")


@dataclass
class BigVGANConfig:
    gpt_dim: int = 1280
    resblock: str = "1"
    upsample_rates: list[int] = field(default_factory=lambda: [4, 4, 4, 4, 2, 2])
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [8, 8, 4, 4, 4, 4])
    upsample_initial_channel: int = 1536
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]])
    feat_upsample: bool = False
    speaker_embedding_dim: int = 512
    cond_d_vector_in_each_upsampling_layer: bool = True
    activation: str = "snakebeta"
    snake_logscale: bool = True
    num_mels: int = 100
    extra: dict[str, Any] = field(default_factory=dict)  # training/discriminator keys, kept verbatim

    def __post_init__(self):
        if isinstance(self.resblock, int) and not isinstance(self.resblock, bool):
            self.resblock = str(self.resblock)  # the official files write "1"; an unquoted 1 means the same
        check_fields(self, "bigvgan.")
        check_positive(self, "bigvgan.", ("gpt_dim", "upsample_initial_channel", "speaker_embedding_dim", "num_mels"))
        if self.resblock != "1" or self.activation != "snakebeta" or self.feat_upsample:
            raise ConfigError("bigvgan: only resblock '1', snakebeta activation and feat_upsample=false are supported")


@dataclass
class ModelConfig:
    """The whole ``config.yaml`` of an IndexTTS 1.0 / 1.5 checkpoint folder."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    gpt: GPTConfig = field(default_factory=GPTConfig)
    vqvae: DVAEConfig = field(default_factory=DVAEConfig)
    bigvgan: BigVGANConfig = field(default_factory=BigVGANConfig)
    gpt_checkpoint: str = "gpt.pth"
    dvae_checkpoint: str = "dvae.pth"
    bigvgan_checkpoint: str = "bigvgan_generator.pth"
    version: float | None = None  # absent in 1.0 configs
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.version is not None:
            try:
                self.version = float(self.version)
            except (TypeError, ValueError):
                raise ConfigError(f"version must be a number, got {self.version!r}") from None
            if self.version not in SUPPORTED_VERSIONS and not (1.0 <= self.version < 2.0):
                raise ConfigError(
                    f"config says version {self.version}: tagtune supports IndexTTS 1.0 and 1.5 "
                    "(IndexTTS2 checkpoints use a different architecture)"
                )
        check_fields(self)
        if self.bigvgan.gpt_dim != self.gpt.model_dim:
            raise ConfigError(f"bigvgan.gpt_dim {self.bigvgan.gpt_dim} != gpt.model_dim {self.gpt.model_dim}")

    @property
    def is_v15(self) -> bool:
        """v1.5-style config (has ``version`` >= 1.5): batch text rows are right-padded with stop tokens."""
        return self.version is not None and self.version >= 1.5

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if not isinstance(d, dict):
            raise ConfigError("config.yaml must be a mapping")
        missing = [k for k in ("gpt", "vqvae", "bigvgan") if k not in d]
        if missing:
            hint = " (this looks like an IndexTTS2 config)" if "s2mel" in d or "semantic_codec" in d else ""
            raise ConfigError(f"config.yaml lacks section(s) {missing}{hint}")
        d = dict(d)
        top = {k: d.pop(k) for k in ("gpt_checkpoint", "dvae_checkpoint", "bigvgan_checkpoint", "version") if k in d}
        return cls(
            dataset=DatasetConfig.from_dict(d.pop("dataset", {}) or {}),
            gpt=_pick(GPTConfig, d.pop("gpt"), "gpt"),
            vqvae=_pick(DVAEConfig, d.pop("vqvae"), "vqvae"),
            bigvgan=_pick(BigVGANConfig, d.pop("bigvgan"), "bigvgan"),
            extra=d,
            **top,
        )

    def to_dict(self) -> dict[str, Any]:
        """The official YAML layout (unknown keys restored, fields the official file omits left out)."""

        def section(obj) -> dict[str, Any]:
            out = {}
            for f in dataclasses.fields(obj):
                if f.name in ("extra", "condition_num_latent"):
                    continue
                v = getattr(obj, f.name)
                if v is None:
                    continue
                out[f.name] = section(v) if dataclasses.is_dataclass(v) else v
            out.update(getattr(obj, "extra", {}) or {})
            return out

        out = {
            "dataset": section(self.dataset),
            "gpt": section(self.gpt),
            "vqvae": section(self.vqvae),
            "bigvgan": section(self.bigvgan),
            "dvae_checkpoint": self.dvae_checkpoint,
            "gpt_checkpoint": self.gpt_checkpoint,
            "bigvgan_checkpoint": self.bigvgan_checkpoint,
        }
        if self.version is not None:
            out["version"] = self.version
        out.update(self.extra)
        return out


def v1_0() -> ModelConfig:
    """Full-size IndexTTS-1.0 (D1024 / L20 / H16, max 605 mel / 402 text tokens, no ``version`` key)."""
    return ModelConfig(
        gpt=GPTConfig(model_dim=1024, layers=20, heads=16, max_mel_tokens=605, max_text_tokens=402),
        bigvgan=BigVGANConfig(gpt_dim=1024),
        version=None,
    )


def v1_5() -> ModelConfig:
    """Full-size IndexTTS-1.5 (D1280 / L24 / H20, max 800 mel / 600 text tokens)."""
    return ModelConfig(version=1.5)


# -------------------------------------------------------------------------------------------- IndexTTS2
#
# The official IndexTTS-2 config.yaml: dataset and gpt as in 1.x (plus the emotion conditioner), then the
# semantic codec, s2mel (length regulator, DiT, WaveNet), the emotion matrices and the vocoder name. Sizes the
# official code hard-codes rather than reads (the w2v-BERT layer, the gpt_layer input width, CAMPPlus widths)
# are fields of ``HardCodedSizes`` with the official values as defaults; a scaled-down parity folder states
# them in a ``fixture:`` section that the official file does not have.

V2_VERSION = 2.0
EMOTION_GROUPS = 8  # emo_num has one entry per emotion of the 8-value emotion vector
W2V_BERT_DIM = 1024  # hidden size of w2v-BERT 2.0: the conditioners' input, the emotion perceiver's width


def _emo_condition_default() -> ConditionConfig:
    return ConditionConfig(output_size=512, linear_units=1024, attention_heads=4, num_blocks=4)


@dataclass
class GPTV2Config(GPTConfig):
    """``gpt`` of IndexTTS2: the 1.x fields (w2v-BERT features instead of a mel for the speaker conformer)
    plus ``emo_condition_module``, the conformer and perceiver of the emotion vector."""

    max_mel_tokens: int = 1815
    emo_condition_module: ConditionConfig = field(default_factory=_emo_condition_default)

    def __post_init__(self):
        if isinstance(self.emo_condition_module, dict):
            self.emo_condition_module = _pick(ConditionConfig, self.emo_condition_module, "gpt.emo_condition_module")
        super().__post_init__()


@dataclass
class SemanticCodecConfig:
    """MaskGCT RepCodec quantising w2v-BERT features to semantic codes."""

    codebook_size: int = 8192
    hidden_size: int = W2V_BERT_DIM
    codebook_dim: int = 8
    vocos_dim: int = 384
    vocos_intermediate_dim: int = 2048
    vocos_num_layers: int = 12
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_fields(self, "semantic_codec.")
        check_positive(self, "semantic_codec.", ("codebook_size", "hidden_size", "codebook_dim", "vocos_dim",
                                                 "vocos_intermediate_dim", "vocos_num_layers"))


@dataclass
class SpectConfig:
    """``s2mel.preprocess_params.spect_params``: the 22.05 kHz mel of s2mel and BigVGAN."""

    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    fmin: float = 0
    fmax: str | float | None = "None"

    def __post_init__(self):
        check_fields(self, "s2mel.preprocess_params.spect_params.")
        check_positive(self, "s2mel.preprocess_params.spect_params.", ("n_fft", "win_length", "hop_length", "n_mels"))

    @property
    def fmax_hz(self) -> float | None:
        """The official reading: "None" means sr/2 (None); any other value means 8000 Hz."""
        return None if self.fmax in ("None", None) else 8000.0


@dataclass
class PreprocessConfig:
    sr: int = 22050
    spect_params: SpectConfig = field(default_factory=SpectConfig)

    def __post_init__(self):
        if isinstance(self.spect_params, dict):
            self.spect_params = _pick(SpectConfig, self.spect_params, "s2mel.preprocess_params.spect_params")
        check_fields(self, "s2mel.preprocess_params.")
        check_positive(self, "s2mel.preprocess_params.", ("sr",))


@dataclass
class LengthRegulatorConfig:
    channels: int = 512
    is_discrete: bool = False
    in_channels: int = W2V_BERT_DIM
    content_codebook_size: int = 2048
    sampling_ratios: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    vector_quantize: bool = False
    n_codebooks: int = 1
    quantizer_dropout: float = 0.0
    f0_condition: bool = False
    n_f0_bins: int = 512

    def __post_init__(self):
        check_fields(self, "s2mel.length_regulator.")
        check_positive(self, "s2mel.length_regulator.", ("channels", "in_channels", "content_codebook_size"))


@dataclass
class DiTConfig:
    hidden_dim: int = 512
    num_heads: int = 8
    depth: int = 13
    class_dropout_prob: float = 0.1
    block_size: int = 8192
    in_channels: int = 80
    style_condition: bool = True
    final_layer_type: str = "wavenet"
    target: str = "mel"
    content_dim: int = 512
    content_codebook_size: int = 1024
    content_type: str = "discrete"
    f0_condition: bool = False
    n_f0_bins: int = 512
    content_codebooks: int = 1
    is_causal: bool = False
    long_skip_connection: bool = True
    zero_prompt_speech_token: bool = False
    time_as_token: bool = False
    style_as_token: bool = False
    uvit_skip_connection: bool = True
    add_resblock_in_transformer: bool = False

    def __post_init__(self):
        check_fields(self, "s2mel.DiT.")
        check_positive(self, "s2mel.DiT.", ("hidden_dim", "num_heads", "depth", "block_size", "in_channels",
                                            "content_dim"))
        if self.hidden_dim % self.num_heads:
            raise ConfigError(f"s2mel.DiT.hidden_dim {self.hidden_dim} is not divisible by num_heads {self.num_heads}")


@dataclass
class WaveNetConfig:
    hidden_dim: int = 512
    num_layers: int = 8
    kernel_size: int = 5
    dilation_rate: int = 1
    p_dropout: float = 0.2
    style_condition: bool = True

    def __post_init__(self):
        check_fields(self, "s2mel.wavenet.")
        check_positive(self, "s2mel.wavenet.", ("hidden_dim", "num_layers", "kernel_size", "dilation_rate"))


@dataclass
class StyleEncoderConfig:
    dim: int = 192

    def __post_init__(self):
        check_fields(self, "s2mel.style_encoder.")
        check_positive(self, "s2mel.style_encoder.", ("dim",))


_S2MEL_SECTIONS = {"preprocess_params": PreprocessConfig, "style_encoder": StyleEncoderConfig,
                   "length_regulator": LengthRegulatorConfig, "DiT": DiTConfig, "wavenet": WaveNetConfig}


@dataclass
class S2MelConfig:
    """``s2mel``: semantic features -> 22.05 kHz mel by flow matching (length regulator + DiT + WaveNet)."""

    preprocess_params: PreprocessConfig = field(default_factory=PreprocessConfig)
    dit_type: str = "DiT"
    reg_loss_type: str = "l1"
    style_encoder: StyleEncoderConfig = field(default_factory=StyleEncoderConfig)
    length_regulator: LengthRegulatorConfig = field(default_factory=LengthRegulatorConfig)
    DiT: DiTConfig = field(default_factory=DiTConfig)  # noqa: N815 (the YAML key)
    wavenet: WaveNetConfig = field(default_factory=WaveNetConfig)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for name, cls in _S2MEL_SECTIONS.items():
            if isinstance(getattr(self, name), dict):
                setattr(self, name, _pick(cls, getattr(self, name), f"s2mel.{name}"))
        check_fields(self, "s2mel.")
        if self.wavenet.hidden_dim != self.DiT.hidden_dim:
            raise ConfigError(f"s2mel.wavenet.hidden_dim {self.wavenet.hidden_dim} must equal s2mel.DiT.hidden_dim "
                              f"{self.DiT.hidden_dim} (the final layer takes the DiT time embedding)")


@dataclass
class VocoderConfig:
    type: str = "bigvgan"
    name: str = "nvidia/bigvgan_v2_22khz_80band_256x"

    def __post_init__(self):
        check_fields(self, "vocoder.")


@dataclass
class CAMPPlusWidths:
    """The CAMPPlus constructor's width arguments (infer_v2 passes only feat_dim and embedding_size)."""

    growth_rate: int = 32
    bn_size: int = 4
    init_channels: int = 128

    def __post_init__(self):
        check_fields(self, "fixture.campplus_extra_kwargs.")
        check_positive(self, "fixture.campplus_extra_kwargs.", ("growth_rate", "bn_size", "init_channels"))


@dataclass
class HardCodedSizes:
    """Sizes the official IndexTTS2 code hard-codes; defaults are the official values (YAML: ``fixture:``)."""

    w2v_bert_hidden_layer: int = 17  # get_emb takes hidden_states[17] of w2v-BERT's 24 layers
    gpt_layer_in_dim: int = 1280  # s2mel gpt_layer[0] = Linear(1280, 256): the GPT width
    campplus_extra_kwargs: CAMPPlusWidths = field(default_factory=CAMPPlusWidths)

    def __post_init__(self):
        if isinstance(self.campplus_extra_kwargs, dict):
            self.campplus_extra_kwargs = _pick(CAMPPlusWidths, self.campplus_extra_kwargs,
                                               "fixture.campplus_extra_kwargs")
        check_fields(self, "fixture.")
        check_positive(self, "fixture.", ("w2v_bert_hidden_layer", "gpt_layer_in_dim"))


_V2_FILE_KEYS = ("gpt_checkpoint", "w2v_stat", "s2mel_checkpoint", "emo_matrix", "spk_matrix", "emo_num",
                 "qwen_emo_path", "version")


@dataclass
class ModelConfigV2:
    """The whole ``config.yaml`` of an IndexTTS-2 checkpoint folder."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    gpt: GPTV2Config = field(default_factory=GPTV2Config)
    semantic_codec: SemanticCodecConfig = field(default_factory=SemanticCodecConfig)
    s2mel: S2MelConfig = field(default_factory=S2MelConfig)
    gpt_checkpoint: str = "gpt.pth"
    w2v_stat: str = "wav2vec2bert_stats.pt"
    s2mel_checkpoint: str = "s2mel.pth"
    emo_matrix: str = "feat2.pt"
    spk_matrix: str = "feat1.pt"
    emo_num: list[int] = field(default_factory=lambda: [3, 17, 2, 8, 4, 5, 10, 24])
    qwen_emo_path: str = "qwen0.6bemo4-merge/"
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)
    version: float = V2_VERSION
    fixture: HardCodedSizes | None = None  # None: the official sizes (see ``sizes``)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_fields(self)
        if not 2.0 <= self.version < 2.5:
            raise ConfigError(f"config says version {self.version}: this reader is for IndexTTS 2.0 "
                              "(1.x folders use ModelConfig; 2.5 is not supported)")
        if len(self.emo_num) != EMOTION_GROUPS or min(self.emo_num) < 1:
            raise ConfigError(f"emo_num must be {EMOTION_GROUPS} positive row counts, got {self.emo_num}")
        if self.semantic_codec.hidden_size != W2V_BERT_DIM:
            raise ConfigError(f"semantic_codec.hidden_size must be {W2V_BERT_DIM} (the w2v-BERT width), "
                              f"got {self.semantic_codec.hidden_size}")

    @property
    def sizes(self) -> HardCodedSizes:
        """The hard-coded sizes in force: the ``fixture:`` section when present, else the official ones."""
        return self.fixture if self.fixture is not None else HardCodedSizes()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfigV2:
        if not isinstance(d, dict):
            raise ConfigError("config.yaml must be a mapping")
        missing = [k for k in ("gpt", "semantic_codec", "s2mel") if k not in d]
        if missing:
            hint = " (this looks like an IndexTTS 1.x config)" if "vqvae" in d or "bigvgan" in d else ""
            raise ConfigError(f"config.yaml lacks section(s) {missing}{hint}")
        d = dict(d)
        top = {k: d.pop(k) for k in _V2_FILE_KEYS if k in d}
        if "version" in top:
            top["version"] = _as_version(top["version"])
        fixture = d.pop("fixture", None)
        return cls(
            dataset=DatasetConfig.from_dict(d.pop("dataset", {}) or {}),
            gpt=_pick(GPTV2Config, d.pop("gpt"), "gpt"),
            semantic_codec=_pick(SemanticCodecConfig, d.pop("semantic_codec"), "semantic_codec"),
            s2mel=_pick(S2MelConfig, d.pop("s2mel"), "s2mel"),
            vocoder=_pick(VocoderConfig, d.pop("vocoder", {}) or {}, "vocoder"),
            fixture=None if fixture is None else _pick(HardCodedSizes, fixture, "fixture"),
            extra=d,
            **top,
        )

    def to_dict(self) -> dict[str, Any]:
        """The official YAML layout (the ``fixture:`` section only when the folder had one)."""
        out = {"dataset": _section_dict(self.dataset), "gpt": _section_dict(self.gpt)}
        for name in ("semantic_codec", "s2mel"):
            out[name] = _section_dict(getattr(self, name))
        out.update({k: getattr(self, k) for k in _V2_FILE_KEYS})
        out["vocoder"] = _section_dict(self.vocoder)
        if self.fixture is not None:
            out["fixture"] = _section_dict(self.fixture)
        out.update(self.extra)
        return out


def _as_version(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"version must be a number, got {value!r}") from None


def _section_dict(obj) -> dict[str, Any]:
    """A dataclass section as its YAML mapping: nested sections recursed, ``extra`` keys restored."""
    out = {}
    for f in dataclasses.fields(obj):
        if f.name in ("extra", "condition_num_latent"):
            continue
        value = getattr(obj, f.name)
        if value is None:
            continue
        out[f.name] = _section_dict(value) if dataclasses.is_dataclass(value) else value
    out.update(getattr(obj, "extra", {}) or {})
    return out


def v2() -> ModelConfigV2:
    """Full-size IndexTTS-2 (GPT D1280 / L24 / H20, max 1815 mel / 600 text tokens)."""
    return ModelConfigV2()
