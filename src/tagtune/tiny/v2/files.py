"""Writing the tiny IndexTTS-2 base folder in the official layout, and the seeded random auxiliary networks.

The folder is what ``tagtune.loaders.load_model`` reads, with the auxiliary models in a flat ``hf_cache/``:

    config.yaml  gpt.pth  s2mel.pth  bpe.model  wav2vec2bert_stats.pt  feat1.pt  feat2.pt
    hf_cache/  w2v-bert-2.0/{config.json, model.safetensors, preprocessor_config.json}
               semantic_codec_model.safetensors  campplus_cn_common.bin  bigvgan/{config.json, bigvgan_generator.pt}

Storage (``STORAGE_DTYPES``): GPT, w2v-BERT, s2mel, CAMPPlus and BigVGAN hold float16 tensors (every floating
parameter and buffer; integer buffers keep their dtype); the loaders cast them to float32, as the official
``load_state_dict`` does when copying into a float32 model. The semantic codec stays float32 so its nearest-code
search sees the exact codebook, and so do the w2v-BERT statistics and the emotion matrices. To compute with the
stored values before writing, round a module in place with ``round_trip(module, STORAGE_DTYPES[part])``.

Weight-norm modules are stored in their ``weight_g``/``weight_v`` form, as the official files are; the loaders
fold them after loading. Every file is written atomically, and the same networks give the same bytes.
"""

from __future__ import annotations

import copy
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tagtune.atomic import atomic_write_bytes, atomic_write_text
from tagtune.checkpoint import save_pth, save_safetensors, write_config
from tagtune.config import ModelConfigV2
from tagtune.folders import (
    AUX_MODELS_DIR,
    BIGVGAN_V2_CONFIG_FILE,
    BIGVGAN_V2_DIR,
    BIGVGAN_V2_WEIGHTS_FILE,
    CAMPPLUS_FILE,
    CONFIG_FILE,
    SEMANTIC_CODEC_FILE,
    W2V_BERT_DIR,
    W2V_BERT_FILES,
)
from tagtune.models.bigvgan import WNConv1d, run_upsampling
from tagtune.tiny.files import GENERATOR_WRAPPER, round_trip
from tagtune.tiny.v2.settings import TinySizesV2, bigvgan_v2_config

__all__ = ["STORAGE_DTYPES", "AuxNetworks", "folder_bytes", "random_aux", "round_trip", "write_folder_v2"]

STORAGE_DTYPES = {"gpt": "float16", "w2v_bert": "float16", "s2mel": "float16", "campplus": "float16",
                  "bigvgan": "float16", "semantic_codec": "float16", "w2v_stat": "float32",
                  "emotion_matrices": "float32"}
# the codebook stays float32: the nearest-code search sees the exact k-means centroids
CODEC_FLOAT32_KEYS = ("quantizer.quantizers.0.codebook.weight",)
S2MEL_PARTS = ("cfm", "length_regulator", "gpt_layer")  # s2mel.pth = {'net': {part: state dict}}
S2MEL_WRAPPER = "net"
W2V_CONFIG, W2V_WEIGHTS, W2V_PREPROCESSOR = W2V_BERT_FILES
# SeamlessM4TFeatureExtractor with the real facebook/w2v-bert-2.0 preprocessor_config.json values
W2V_PREPROCESSOR_VALUES = dict(feature_size=80, num_mel_bins=80, padding_value=1, stride=2, sampling_rate=16000,
                               return_attention_mask=True, padding_side="right")
SAFETENSORS_METADATA = {"format": "pt"}  # what transformers' save_pretrained writes into model.safetensors
SPK_MATRIX_STD, EMO_MATRIX_STD = 1.0, 0.5  # the parity fixture's choice; spk rows are compared by cosine only
BIGVGAN_GAIN = 1.0  # every BigVGAN weight_g: unit-norm filters (the default init, g = |v|, is silent)
BIGVGAN_OUT_STD = 0.2  # pre-clamp output std on a seeded log-mel, set through conv_post's weight_g
CALIBRATION_MEL = (-5.0, 2.0, 64)  # mean, std and frames of that log-mel


@dataclass
class AuxNetworks:
    """The IndexTTS-2 networks the tiny world does not train: seeded random, in weight-norm form."""

    s2mel: nn.Module  # S2Mel: gpt_layer, length_regulator, cfm
    campplus: nn.Module  # CAMPPlus style encoder, (B, 192) styles
    bigvgan: nn.Module  # BigVGANv2 built from bigvgan_config
    bigvgan_config: dict  # BigVGAN's config.json
    spk_matrix: torch.Tensor  # (sum(emo_num), style dim) float32: feat1.pt
    emo_matrix: torch.Tensor  # (sum(emo_num), gpt model_dim) float32: feat2.pt


def random_aux(cfg: ModelConfigV2, seed: int, sizes: TinySizesV2 | None = None) -> AuxNetworks:
    """Build s2mel, CAMPPlus, BigVGAN v2 and the emotion matrices from ``seed`` alone (the global RNG is left as
    it was); ``sizes`` gives BigVGAN's width, which config.yaml does not hold (default: the shipped one).

    BigVGAN's default init gives near-silence (output std ~1e-8, almost independent of the mel), so its ``weight_g``
    are set to unit norms and ``conv_post`` is scaled to a fixed output level."""
    from tagtune.models.v2.bigvgan_v2 import BigVGANv2, BigVGANv2Config
    from tagtune.models.v2.campplus import CAMPPlus
    from tagtune.models.v2.s2mel import S2Mel

    bigvgan_config = bigvgan_v2_config(sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        s2mel = S2Mel(cfg.s2mel, cfg.sizes.gpt_layer_in_dim).eval()
        campplus = CAMPPlus(cfg.sizes.campplus_extra_kwargs, embedding_size=cfg.s2mel.style_encoder.dim).eval()
        bigvgan = BigVGANv2(BigVGANv2Config.from_dict(bigvgan_config)).eval()
    gen = torch.Generator().manual_seed(seed)
    rows = sum(cfg.emo_num)
    spk = torch.randn(rows, cfg.s2mel.style_encoder.dim, generator=gen) * SPK_MATRIX_STD
    emo = torch.randn(rows, cfg.gpt.model_dim, generator=gen) * EMO_MATRIX_STD
    _audible_bigvgan(bigvgan, gen)
    return AuxNetworks(s2mel, campplus, bigvgan, bigvgan_config, spk, emo)


@torch.no_grad()
def _audible_bigvgan(bigvgan: nn.Module, gen: torch.Generator) -> None:
    """Unit-norm filters everywhere, then ``conv_post`` (no bias, linear in its gain) scaled so the pre-clamp
    output std on a seeded log-mel is BIGVGAN_OUT_STD (measured with the float16-stored values)."""
    for module in bigvgan.modules():
        if isinstance(module, WNConv1d):
            module.weight_g.fill_(BIGVGAN_GAIN)
    mean, std, frames = CALIBRATION_MEL
    mel = mean + std * torch.randn(1, bigvgan.cfg.num_mels, frames, generator=gen)  # (1, 80, T)
    stored = copy.deepcopy(bigvgan)
    round_trip(stored, STORAGE_DTYPES["bigvgan"])
    x = run_upsampling(stored.conv_pre(mel), stored.ups, stored.resblocks)
    out = stored.conv_post(stored.activation_post(x))  # (1, 1, T * hop), before the clamp
    bigvgan.conv_post.weight_g.mul_(BIGVGAN_OUT_STD / out.std().clamp_min(1e-12))


# ------------------------------------------------------------------------------------------------ writing


def _state(module: nn.Module, dtype: str) -> dict[str, torch.Tensor]:
    """A detached, contiguous CPU copy of the state dict, floating tensors cast to ``dtype`` (shares nothing)."""
    target = getattr(torch, dtype)
    return {k: (v.to(target) if v.is_floating_point() else v).detach().cpu().contiguous().clone()
            for k, v in module.state_dict().items()}


def codec_state(codec: nn.Module) -> dict[str, torch.Tensor]:
    """The codec as stored: float16 but for the codebook (CODEC_FLOAT32_KEYS)."""
    state = _state(codec, STORAGE_DTYPES["semantic_codec"])
    for key in CODEC_FLOAT32_KEYS:
        state[key] = codec.state_dict()[key].detach().float().cpu().contiguous().clone()
    return state


@torch.no_grad()
def round_trip_codec(codec: nn.Module) -> None:
    """Round the codec's values to what ``codec_state`` stores, in place (the build encodes with them)."""
    for name, t in codec.state_dict().items():
        if t.is_floating_point() and name not in CODEC_FLOAT32_KEYS:
            t.copy_(t.to(getattr(torch, STORAGE_DTYPES["semantic_codec"])).float())


def _pt_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _w2v_files(w2v) -> dict[str, bytes]:
    """The three files of ``w2v.save_pretrained`` in float16 (+ the feature extractor), as bytes, written by
    hand so that each file is atomic: the config as save_pretrained annotates it, safetensors with its
    ``format`` metadata."""
    from safetensors.torch import save
    from transformers import SeamlessM4TFeatureExtractor

    config = copy.deepcopy(w2v.config)
    config.architectures = [type(w2v).__name__]
    config.dtype = STORAGE_DTYPES["w2v_bert"]
    extractor = SeamlessM4TFeatureExtractor(**W2V_PREPROCESSOR_VALUES)
    return {W2V_CONFIG: config.to_json_string().encode("utf-8"),
            W2V_WEIGHTS: save(_state(w2v, STORAGE_DTYPES["w2v_bert"]), metadata=SAFETENSORS_METADATA),
            W2V_PREPROCESSOR: extractor.to_json_string().encode("utf-8")}


def write_folder_v2(out_dir: Path, cfg: ModelConfigV2, bpe: bytes, gpt: nn.Module, w2v, stats: dict[str, torch.Tensor],
                    codec: nn.Module, aux: AuxNetworks) -> dict[str, Path]:
    """Write the official IndexTTS-2 folder of these networks into ``out_dir``; returns file key -> path.

    ``w2v``: a ``transformers.Wav2Vec2BertModel``; ``stats``: ``{'mean', 'var'}`` (1024,) of its features;
    ``codec``: RepCodec. Names come from ``cfg`` (config.yaml's keys) and ``tagtune.folders``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    aux_dir = out_dir / AUX_MODELS_DIR
    paths = {"config": out_dir / CONFIG_FILE, "bpe": out_dir / cfg.dataset.bpe_model,
             "gpt": out_dir / cfg.gpt_checkpoint, "s2mel": out_dir / cfg.s2mel_checkpoint,
             "w2v_stat": out_dir / cfg.w2v_stat, "spk_matrix": out_dir / cfg.spk_matrix,
             "emo_matrix": out_dir / cfg.emo_matrix,
             **{f"w2v_bert/{name}": aux_dir / W2V_BERT_DIR / name for name in W2V_BERT_FILES},
             "semantic_codec": aux_dir / SEMANTIC_CODEC_FILE, "campplus": aux_dir / CAMPPLUS_FILE,
             "bigvgan_config": aux_dir / BIGVGAN_V2_DIR / BIGVGAN_V2_CONFIG_FILE,
             "bigvgan": aux_dir / BIGVGAN_V2_DIR / BIGVGAN_V2_WEIGHTS_FILE}
    write_config(out_dir, cfg)  # ModelConfigV2.to_dict via yaml.safe_dump(sort_keys=False)
    atomic_write_bytes(paths["bpe"], bpe)
    save_pth(paths["gpt"], _state(gpt, STORAGE_DTYPES["gpt"]))
    net = {part: _state(getattr(aux.s2mel, part), STORAGE_DTYPES["s2mel"]) for part in S2MEL_PARTS}
    atomic_write_bytes(paths["s2mel"], _pt_bytes({S2MEL_WRAPPER: net}))
    atomic_write_bytes(paths["w2v_stat"], _pt_bytes(_matrices(stats, "w2v_stat")))
    atomic_write_bytes(paths["spk_matrix"], _pt_bytes(_matrices(aux.spk_matrix, "emotion_matrices")))
    atomic_write_bytes(paths["emo_matrix"], _pt_bytes(_matrices(aux.emo_matrix, "emotion_matrices")))
    for name, data in _w2v_files(w2v).items():
        atomic_write_bytes(paths[f"w2v_bert/{name}"], data)
    save_safetensors(paths["semantic_codec"], codec_state(codec))  # = save_model
    save_pth(paths["campplus"], _state(aux.campplus, STORAGE_DTYPES["campplus"]))
    atomic_write_text(paths["bigvgan_config"], json.dumps(aux.bigvgan_config, indent=4) + "\n")
    generator = _state(aux.bigvgan, STORAGE_DTYPES["bigvgan"])
    atomic_write_bytes(paths["bigvgan"], _pt_bytes({GENERATOR_WRAPPER: generator}))
    return paths


def _matrices(value, part: str):
    """A tensor, or a dict of tensors, as detached contiguous CPU copies in the part's storage dtype."""
    target = getattr(torch, STORAGE_DTYPES[part])
    if isinstance(value, dict):
        return {k: v.detach().to("cpu", target).contiguous().clone() for k, v in value.items()}
    return value.detach().to("cpu", target).contiguous().clone()


def folder_bytes(paths: dict[str, Path]) -> dict[str, int]:
    """File key -> size in bytes of a written folder (``write_folder_v2``'s answer)."""
    return {key: path.stat().st_size for key, path in paths.items()}
