"""IndexTTS2 on the CPU with random weights: load time and peak memory, GPT tokens/s, s2mel steps/s, RTF.

A random-init IndexTTS-2 folder (official layout, auxiliary models in ``hf_cache/``) is written with tagtune's
own modules, full size by default (about 7 GB on disk, ~16 GB RAM to build; ``--quick`` writes a tiny one in
seconds to check the script). Then:

* load, each in a fresh subprocess (peak RSS is per process): every network through ``load_model_v2`` (meta
  device, memory-mapped files, tensors assigned) against the usual way (random init on the CPU, ``torch.load``
  of every file into memory, ``load_state_dict``), as a ratio;
* GPT decode tokens/s of the compat path (fp32, official beam sampling) against the default path (the GPT
  decode in ``--precision``, int8 by default), side by side in one process, as a ratio;
* s2mel flow-matching steps/s (25 Euler steps, each one DiT pass on the [cond, uncond] pair);
* end-to-end real-time factor of ``TTSV2.synthesize`` in compat mode against the default path, as a ratio.

The stop code's logit is pushed down so that every run decodes ``--codes`` codes; the text is ``--text-tokens``
random ids (a full-size tokenizer is not part of the random folder).

    python bench/bench_v2.py [--quick] [--workdir DIR] [--codes 100] [--text-tokens 40] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

STOP_LOGIT = -1e4  # on the stop code's bias: random weights would otherwise stop at any step

QUICK = {  # the sizes of the indextts2-tiny parity fixture
    "gpt": {"model_dim": 64, "layers": 2, "heads": 4, "max_mel_tokens": 400, "max_text_tokens": 80,
            "number_text_tokens": 224, "number_mel_codes": 258, "start_mel_token": 256, "stop_mel_token": 257,
            "condition_module": {"output_size": 32, "linear_units": 64, "attention_heads": 2, "num_blocks": 2},
            "emo_condition_module": {"output_size": 16, "linear_units": 32, "attention_heads": 2, "num_blocks": 1,
                                     "perceiver_mult": 0.125}},
    "semantic_codec": {"codebook_size": 256, "vocos_dim": 32, "vocos_intermediate_dim": 64, "vocos_num_layers": 2},
    "s2mel": {"length_regulator": {"channels": 32}, "DiT": {"hidden_dim": 64, "num_heads": 4, "depth": 3,
                                                             "content_dim": 32},
              "wavenet": {"hidden_dim": 64, "num_layers": 2}},
    "fixture": {"w2v_bert_hidden_layer": 1, "gpt_layer_in_dim": 64,
                "campplus_extra_kwargs": {"growth_rate": 8, "bn_size": 2, "init_channels": 32}},
}
QUICK_W2V = {"num_hidden_layers": 2, "intermediate_size": 64}
QUICK_BIGVGAN_CHANNELS = 128

CHILD = r"""
import json, sys, time, torch
from pathlib import Path
torch.set_num_threads(int(sys.argv[3]))
mode, folder = sys.argv[1], Path(sys.argv[2])
t0 = time.perf_counter()
if mode == "tagtune":
    from tagtune.loaders import load_model_v2
    m = load_model_v2(folder)  # every network, as eager=True loads them (the tokenizer is not the model's)
    for part in ("gpt", "semantic_features", "feature_extractor", "semantic_codec", "s2mel", "campplus",
                 "vocoder", "emotion_matrices"):
        getattr(m, part)
else:
    sys.path.insert(0, sys.argv[4])
    from bench_v2 import baseline_load
    baseline_load(folder)
dt = time.perf_counter() - t0
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps({"load_s": dt, "peak_mb": peak}))
"""


def config_dict(quick: bool) -> dict:
    from tagtune.config import v2

    d = v2().to_dict()
    if quick:
        for section, values in QUICK.items():
            _merge(d.setdefault(section, {}), values)
    return d


def _merge(into: dict, values: dict) -> None:
    for k, v in values.items():
        if isinstance(v, dict):
            _merge(into.setdefault(k, {}), v)
        else:
            into[k] = v


def write_folder(folder: Path, quick: bool) -> None:
    """A random-init IndexTTS-2 folder with its auxiliary models in ``hf_cache/`` (flat layout)."""
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

    from tagtune.checkpoint import save_pth, save_safetensors
    from tagtune.config import ModelConfigV2
    from tagtune.folders import AUX_MODELS_DIR, BIGVGAN_V2_DIR, CAMPPLUS_FILE, SEMANTIC_CODEC_FILE, W2V_BERT_DIR
    from tagtune.models.v2.bigvgan_v2 import BigVGANv2, BigVGANv2Config
    from tagtune.models.v2.campplus import CAMPPlus
    from tagtune.models.v2.codec import RepCodec
    from tagtune.models.v2.gpt import UnifiedVoiceV2
    from tagtune.models.v2.s2mel import S2Mel

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    d = config_dict(quick)
    cfg = ModelConfigV2.from_dict(d)
    (folder / "config.yaml").write_text(yaml.safe_dump(d, sort_keys=False), encoding="utf-8")
    gpt = UnifiedVoiceV2(cfg.gpt)
    with torch.no_grad():
        gpt.mel_head.bias[cfg.gpt.stop_mel_token] = STOP_LOGIT
    save_pth(folder / cfg.gpt_checkpoint, gpt.state_dict())
    del gpt
    s2mel = S2Mel(cfg.s2mel, cfg.sizes.gpt_layer_in_dim)
    net = {part: getattr(s2mel, part).state_dict() for part in ("cfm", "length_regulator", "gpt_layer")}
    torch.save({"net": net}, folder / cfg.s2mel_checkpoint)
    del s2mel, net
    rows, D = sum(cfg.emo_num), cfg.gpt.model_dim
    torch.save(torch.randn(rows, cfg.s2mel.style_encoder.dim), folder / cfg.spk_matrix)
    torch.save(torch.randn(rows, D) * 0.5, folder / cfg.emo_matrix)
    torch.save({"mean": torch.zeros(1024), "var": torch.ones(1024)}, folder / cfg.w2v_stat)
    shutil.copy(_tokenizer_model(), folder / cfg.dataset.bpe_model)
    aux = folder / AUX_MODELS_DIR
    w2v = Wav2Vec2BertModel(Wav2Vec2BertConfig(**(QUICK_W2V if quick else {})))
    w2v.save_pretrained(aux / W2V_BERT_DIR)
    del w2v
    SeamlessM4TFeatureExtractor(padding_value=1.0).save_pretrained(aux / W2V_BERT_DIR)
    save_safetensors(aux / SEMANTIC_CODEC_FILE, RepCodec(cfg.semantic_codec).state_dict())
    torch.save(CAMPPlus(cfg.sizes.campplus_extra_kwargs, embedding_size=cfg.s2mel.style_encoder.dim).state_dict(),
               aux / CAMPPLUS_FILE)
    voc_cfg = BigVGANv2Config(upsample_initial_channel=QUICK_BIGVGAN_CHANNELS) if quick else BigVGANv2Config()
    (aux / BIGVGAN_V2_DIR).mkdir(parents=True, exist_ok=True)
    fields = {k: (list(v) if isinstance(v, tuple) else v) for k, v in voc_cfg.__dict__.items() if k != "extra"}
    (aux / BIGVGAN_V2_DIR / "config.json").write_text(json.dumps(fields), encoding="utf-8")
    torch.save({"generator": BigVGANv2(voc_cfg).state_dict()}, aux / BIGVGAN_V2_DIR / "bigvgan_generator.pt")


def _tokenizer_model() -> Path:
    """Any SentencePiece model: only the networks are measured (the text is random ids)."""
    from importlib import resources

    return Path(str(resources.files("tagtune") / "assets" / "tiny-base" / "bpe.model"))


def baseline_load(folder: Path) -> None:
    """The usual way: random init on the CPU, every file read whole by torch.load, then load_state_dict."""
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertModel

    from tagtune.checkpoint import read_config_v2
    from tagtune.folders import AUX_MODELS_DIR, BIGVGAN_V2_DIR, CAMPPLUS_FILE, SEMANTIC_CODEC_FILE, W2V_BERT_DIR
    from tagtune.models.v2.bigvgan_v2 import BigVGANv2, BigVGANv2Config
    from tagtune.models.v2.campplus import CAMPPlus
    from tagtune.models.v2.codec import RepCodec
    from tagtune.models.v2.gpt import UnifiedVoiceV2
    from tagtune.models.v2.s2mel import S2Mel

    cfg = read_config_v2(folder)
    aux = folder / AUX_MODELS_DIR
    gpt = UnifiedVoiceV2(cfg.gpt)
    gpt.load_state_dict(torch.load(folder / cfg.gpt_checkpoint, map_location="cpu", weights_only=True))
    s2mel = S2Mel(cfg.s2mel, cfg.sizes.gpt_layer_in_dim)
    net = torch.load(folder / cfg.s2mel_checkpoint, map_location="cpu", weights_only=True)["net"]
    for part, state in net.items():
        getattr(s2mel, part).load_state_dict(state)
    Wav2Vec2BertModel.from_pretrained(aux / W2V_BERT_DIR)
    SeamlessM4TFeatureExtractor.from_pretrained(aux / W2V_BERT_DIR)
    from safetensors.torch import load_file

    RepCodec(cfg.semantic_codec).load_state_dict(load_file(str(aux / SEMANTIC_CODEC_FILE)))
    campplus = CAMPPlus(cfg.sizes.campplus_extra_kwargs, embedding_size=cfg.s2mel.style_encoder.dim)
    campplus.load_state_dict(torch.load(aux / CAMPPLUS_FILE, map_location="cpu", weights_only=True))
    voc_cfg = BigVGANv2Config.from_dict(json.loads((aux / BIGVGAN_V2_DIR / "config.json").read_text()))
    voc = BigVGANv2(voc_cfg)
    voc.load_state_dict(torch.load(aux / BIGVGAN_V2_DIR / "bigvgan_generator.pt", weights_only=True)["generator"])


def measure_load(folder: Path, threads: int) -> dict:
    out = {}
    for mode in ("baseline", "tagtune"):
        args = [sys.executable, "-c", CHILD, mode, str(folder), str(threads), str(Path(__file__).parent)]
        done = subprocess.run(args, check=True, capture_output=True, text=True)
        out[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def _voice(path: Path, seconds: float = 3.0) -> Path:
    """A speech-like test voice: a pitch-gliding harmonic tone with syllable-rate amplitude and some noise."""
    import soundfile as sf

    sr = 22050
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    x = 0.3 * x / np.abs(x).max() + 0.01 * np.random.default_rng(0).standard_normal(t.shape)
    sf.write(path, x.astype(np.float32), sr)
    return path


def measure_speed(folder: Path, codes: int, text_tokens: int, precision: str, threads: int) -> dict:
    from tagtune.generation.v2 import generate_codes_v2, official_v2
    from tagtune.loaders import load_model_v2
    from tagtune.models.v2.gpt import feature_width_lengths
    from tagtune.synthesis.tts_v2 import TTSV2

    torch.set_num_threads(threads)
    model = load_model_v2(folder)
    tts = TTSV2(model, precision=precision)
    voice = tts.speaker(_voice(folder / "voice.wav"))
    spk = voice.spk_cond_emb
    rng = torch.Generator().manual_seed(0)
    ids = torch.randint(2, model.config.gpt.number_text_tokens, (1, text_tokens), generator=rng)
    tts.sentences = lambda text, limit=None: [ids[0].tolist()]  # random ids stand in for a text
    emovec = tts.emotion_vector(voice, tts.emotion_features(folder / "voice.wav"))
    cfg = official_v2(max_new_tokens=codes)
    out = {}
    for name, decoder in (("compat_fp32", tts.gpt), (f"default_{tts.precision}", tts.fast_gpt)):
        generate_codes_v2(decoder, spk, ids, emovec, official_v2(max_new_tokens=4), generator=rng)  # warm-up
        t0 = time.perf_counter()
        got = generate_codes_v2(decoder, spk, ids, emovec, cfg, spk_lengths=feature_width_lengths(spk), generator=rng)
        out[f"gpt_tokens_per_s_{name}"] = got.codes.shape[1] / (time.perf_counter() - t0)
    frames = int(math.floor(codes * 1.72))
    condition = torch.randn(1, frames, voice.prompt_condition.shape[-1])
    noise = torch.randn(1, 80, voice.prompt_condition.shape[1] + frames, generator=rng)
    with torch.no_grad():
        t0 = time.perf_counter()
        model.s2mel.generate(voice.prompt_condition, condition, voice.ref_mel, voice.style, noise)
        out["s2mel_steps_per_s"] = 25 / (time.perf_counter() - t0)
    tts.synthesize("random ids", folder / "voice.wav", generation=official_v2(max_new_tokens=4), seed=0)  # warm-up
    for name, compat in (("compat", "official"), ("default", None)):
        result = tts.synthesize("random ids", folder / "voice.wav", generation=cfg, seed=0, compat=compat)
        out[f"rtf_{name}"] = result.rtf
        out[f"timings_{name}"] = {k: round(v, 3) for k, v in result.timings.items()}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (checks the script in seconds)")
    p.add_argument("--workdir", type=Path, help="where the random folder is written (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the random folder")
    p.add_argument("--codes", type=int, default=100, help="codes decoded per run")
    p.add_argument("--text-tokens", type=int, default=40)
    p.add_argument("--precision", default="int8", help="GPT decode precision of the default path")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = p.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="tagtune-bench-v2-"))
    folder = work / ("IndexTTS-2-random-quick" if a.quick else "IndexTTS-2-random")
    try:
        if not (folder / "config.yaml").is_file():
            t0 = time.perf_counter()
            write_folder(folder, a.quick)
            print(f"wrote {folder} in {time.perf_counter() - t0:.1f} s")
        load = measure_load(folder, a.threads)
        speed = measure_speed(folder, a.codes, a.text_tokens, a.precision, a.threads)
    finally:
        if not a.keep and a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    size = "quick (fixture sizes)" if a.quick else "full size"
    print(f"IndexTTS2 {size}, random weights, CPU, {a.threads} threads, {a.codes} codes, {a.text_tokens} text ids")
    b, t = load["baseline"], load["tagtune"]
    print(f"load    baseline {b['load_s']:.2f} s, peak {b['peak_mb']:.0f} MB | tagtune {t['load_s']:.2f} s, "
          f"peak {t['peak_mb']:.0f} MB | speed-up x{b['load_s'] / t['load_s']:.2f}, "
          f"memory x{t['peak_mb'] / b['peak_mb']:.2f}")
    fast_key = next(k for k in speed if k.startswith("gpt_tokens_per_s_default"))
    base_tps, fast_tps = speed["gpt_tokens_per_s_compat_fp32"], speed[fast_key]
    print(f"gpt     compat fp32 {base_tps:.1f} tokens/s | {fast_key[len('gpt_tokens_per_s_'):]} {fast_tps:.1f} "
          f"tokens/s | x{fast_tps / base_tps:.2f}")
    print(f"s2mel   {speed['s2mel_steps_per_s']:.2f} steps/s (25 steps per segment)")
    print(f"e2e     RTF compat {speed['rtf_compat']:.3f} | default {speed['rtf_default']:.3f} | "
          f"x{speed['rtf_compat'] / speed['rtf_default']:.2f}")
    print(json.dumps({"load": load, **speed}))


if __name__ == "__main__":
    main()
