"""The one loader: a model folder, optionally with a LoRA adapter folder on top, as the parts a stage needs.

``load_model(model_dir, adapter=None)`` reads the folder's description (config, tokenizer, tag set) at once
and builds each network on first use: ``gpt`` (with an adapter, the adapter merged into plain layers, which
the fast decoding paths need), ``adapter_gpt`` (the adapter kept as peft layers, as training left it),
``dvae``, ``vocoder`` and ``mel``. The tokenizer and tags come from the adapter folder when one is given (it
holds the extended ``bpe.model`` and ``tags.json``); the vocoder, DVAE and configuration from the model folder.
Files are read through ``checkpoint`` (weights, config), ``lora`` (adapter files) and ``tags`` (tag rows).

An official IndexTTS-2 folder (told by its config.yaml) opens as a ``LoadedModelV2``: the same lazy parts for
its networks (GPT, w2v-BERT features, semantic codec, s2mel, CAMPPlus, BigVGAN v2, emotion matrices), with the
auxiliary models found by ``find_aux_models`` in the folder's ``hf_cache/`` or a Hugging Face hub cache.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tagtune import lora
from tagtune.checkpoint import (
    CheckpointError,
    bpe_path,
    build_gpt,
    load_bigvgan,
    load_bigvgan_v2,
    load_campplus,
    load_dvae,
    load_gpt,
    load_gpt_v2,
    load_into,
    load_s2mel,
    load_semantic_codec,
    load_semantic_features,
    model_family,
    read_config,
    read_config_v2,
    read_emotion_matrices,
)
from tagtune.config import ModelConfig, ModelConfigV2
from tagtune.errors import UserError
from tagtune.folders import (
    AUX_MODELS_DIR,
    BIGVGAN_V2_CONFIG_FILE,
    BIGVGAN_V2_DIR,
    BIGVGAN_V2_WEIGHTS_FILE,
    CAMPPLUS_FILE,
    CAMPPLUS_REPO,
    QWEN_EMOTION_CONFIG_FILE,
    RUN_INFO_FILE,
    SEMANTIC_CODEC_FILE,
    SEMANTIC_CODEC_REPO,
    SEMANTIC_CODEC_REPO_FILE,
    W2V_BERT_DIR,
    W2V_BERT_FILES,
    W2V_BERT_REPO,
    AdapterFolder,
)
from tagtune.tags.rows import grow_base
from tagtune.tags.vocab import TagSet, read_tagset


def _read_json(path: Path, what: str, error=CheckpointError) -> dict:
    if not path.is_file():
        raise error(f"{path}: not found ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: invalid JSON ({e})") from None


def read_adapter_meta(adapter_dir: str | Path) -> dict:
    """What a tagtune adapter (or weights) folder records about itself: tag names and ids, mode, base."""
    return _read_json(AdapterFolder(adapter_dir).meta, "not an adapter written by tagtune")


def read_run_info(run_dir: str | Path) -> dict:
    """A training run's ``run.json``: data and base it came from, tags, token ids, mode, versions."""
    return _read_json(Path(run_dir) / RUN_INFO_FILE, f"{run_dir} is not a tagtune training run", UserError)


def load_adapter_model(base_dir: str | Path, adapter_dir: str | Path, device: str | torch.device = "cpu"):
    """Base folder + adapter folder -> the tuned GPT in eval mode (adapters active, not merged).

    Returns ``(gpt, model_config)``; the config has the grown ``number_text_tokens``.
    """
    meta = read_adapter_meta(adapter_dir)
    if meta.get("mode") == "full":
        raise CheckpointError(f"{adapter_dir}: a full fine-tuning run has no adapter; export it merged")
    gpt, cfg, new_ids = grow_base(base_dir, meta["tag_names"])
    if new_ids != meta["new_token_ids"]:
        raise CheckpointError(f"{adapter_dir}: the adapter expects tag rows {meta['new_token_ids']}, its base "
                              f"{base_dir} gives {new_ids}; is this the adapter's base model?")
    return lora.load_adapter(gpt, adapter_dir).to(device).eval(), cfg


def merged_adapter_gpt(base_dir: str | Path, adapter_dir: str | Path, device: str | torch.device = "cpu"):
    """The base GPT with the adapter folded in: a plain UnifiedVoice (UnifiedVoiceV2 on an IndexTTS-2 base;
    fast paths need plain layers)."""
    tuned, cfg = load_adapter_model(base_dir, adapter_dir)
    state = lora.merge(tuned)
    gpt = build_gpt(cfg.gpt)
    load_into(gpt, state, adapter_dir, device=device)
    return gpt.eval()


def _with_adapter(adapter: Path, cfg):
    """(adapter folder, ``cfg`` grown by the adapter's tags, the adapter's tag set)."""
    if not adapter.is_dir():
        raise CheckpointError(f"adapter {adapter}: not a folder")
    meta = read_adapter_meta(adapter)
    n_tokens = cfg.gpt.number_text_tokens + len(meta.get("tag_names", []))
    cfg = dataclasses.replace(cfg, gpt=dataclasses.replace(cfg.gpt, number_text_tokens=n_tokens))
    return adapter, cfg, read_tagset(adapter)


class _FolderNetworks:
    """What both loaded families share: networks built on first use, and the text side's folder (the adapter's
    when there is one). Subclasses are dataclasses with ``model_dir``, ``adapter_dir`` and ``_cache``."""

    def _get(self, name: str, make: Callable[[], Any]):
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

    @property
    def text_dir(self) -> Path:
        """The folder whose ``bpe.model`` and ``tags.json`` the text side reads."""
        return self.adapter_dir if self.adapter_dir is not None else self.model_dir

    @property
    def adapter_gpt(self) -> nn.Module:
        """The tuned GPT with the adapter kept as peft layers (the plain GPT when there is no adapter)."""
        if self.adapter_dir is None:
            return self.gpt
        return self._get("adapter_gpt", lambda: load_adapter_model(self.model_dir, self.adapter_dir, self.device)[0])

    def _adapter_tokenizer(self) -> Path | None:
        own = AdapterFolder(self.adapter_dir).tokenizer if self.adapter_dir is not None else None
        return own if own is not None and own.is_file() else None


@dataclass
class LoadedModel(_FolderNetworks):
    """A model folder (plus an optional adapter folder); networks load on first use.

    ``config`` describes the GPT that ``gpt`` returns: with an adapter, ``number_text_tokens`` counts its tags.
    """

    model_dir: Path
    config: ModelConfig
    adapter_dir: Path | None = None
    tagset: TagSet | None = None  # None for a model that knows no tags
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    unknown_tags: str = "error"
    _cache: dict = field(default_factory=dict, repr=False)

    family = "v1"

    @property
    def tokenizer_path(self) -> Path:
        return self._adapter_tokenizer() or bpe_path(self.model_dir, self.config)

    @property
    def gpt(self) -> nn.Module:
        """The UnifiedVoice in eval mode: plain layers, an adapter merged in."""
        def make():
            if self.adapter_dir is None:
                return load_gpt(self.model_dir, self.config, dtype=self.dtype, device=self.device)
            return merged_adapter_gpt(self.model_dir, self.adapter_dir, self.device)
        return self._get("gpt", make)

    @property
    def dvae(self) -> nn.Module:
        return self._get("dvae", lambda: load_dvae(self.model_dir, self.config, device=self.device))

    @property
    def vocoder(self) -> nn.Module:
        return self._get("vocoder", lambda: load_bigvgan(self.model_dir, self.config, device=self.device))

    @property
    def tokenizer(self):
        """TextTokenizer with this model's tags. A model without tags gets an empty tag set, so that a tag in
        the text is an error listing the known tags instead of being read out as letters."""
        from tagtune.text.tokenizer import TextTokenizer, TokenizerError

        def make():
            try:
                return TextTokenizer(self.tokenizer_path, tagset=self.tagset or TagSet(),
                                     unknown_tags=self.unknown_tags)
            except TokenizerError as e:  # name the folder whose tokenizer and tags disagree
                raise (e if str(self.text_dir) in str(e) else TokenizerError(f"{self.text_dir}: {e}")) from None
        return self._get("tokenizer", make)

    @property
    def mel(self):
        from tagtune.audio import MelSpectrogram

        return self._get("mel", lambda: MelSpectrogram.from_config(self.config.dataset.mel).to(self.device))

    def check_vocabulary(self) -> None:
        """The tokenizer and the GPT's text tables must belong together (pieces + 1 spare row)."""
        if self.tokenizer.vocab_size + 1 != self.gpt.cfg.text_rows:
            raise CheckpointError(f"{self.text_dir}: the tokenizer has {self.tokenizer.vocab_size} pieces but the "
                                  f"GPT has {self.gpt.cfg.text_rows} text rows (expected pieces + 1)")


def load_model(model_dir: str | Path, adapter: str | Path | None = None, *, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, unknown_tags: str = "error",
               eager: bool = False) -> LoadedModel | LoadedModelV2:
    """Open an IndexTTS 1.0/1.5 folder (official or tagtune's), optionally with a tagtune adapter folder, or an
    official IndexTTS-2 folder (a ``LoadedModelV2``; detected from its config.yaml).

    Networks load lazily unless ``eager``; with ``eager`` the tokenizer is checked against the GPT's rows.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: not a folder")
    if model_family(model_dir) == "v2":
        return load_model_v2(model_dir, adapter, device=device, unknown_tags=unknown_tags, eager=eager)
    cfg, tagset = read_config(model_dir), read_tagset(model_dir)
    if adapter is not None:
        adapter, cfg, tagset = _with_adapter(Path(adapter), cfg)
    m = LoadedModel(model_dir, cfg, adapter, tagset, torch.device(device), dtype, unknown_tags)
    if eager:
        m.check_vocabulary()
        m.vocoder  # noqa: B018 - force loading
    return m


# ------------------------------------------------------------------------------------------------- IndexTTS2
#
# An official IndexTTS-2 folder holds config.yaml, gpt.pth, s2mel.pth, bpe.model, wav2vec2bert_stats.pt and the
# emotion matrices feat1/feat2.pt. The four auxiliary models the official code downloads (w2v-BERT 2.0, the
# MaskGCT semantic codec, CAMPPlus, BigVGAN v2) are looked for, in this order:
#   1. <folder>/hf_cache/ flat: w2v-bert-2.0/, semantic_codec_model.safetensors, campplus_cn_common.bin, bigvgan/
#   2. <folder>/hf_cache/ as a Hugging Face hub cache (the official code points HF_HUB_CACHE there)
#   3. the user's Hugging Face hub cache (HF_HUB_CACHE / HF_HOME)


class AuxModelError(CheckpointError):
    """An auxiliary model of an IndexTTS-2 folder that is not where the official code would put it."""


@dataclass(frozen=True)
class AuxModels:
    """Where the auxiliary models of an IndexTTS-2 folder are."""

    w2v_bert: Path  # folder with config.json, model.safetensors, preprocessor_config.json
    semantic_codec: Path  # the MaskGCT semantic codec's safetensors file
    campplus: Path  # campplus_cn_common.bin
    bigvgan: Path  # folder with config.json, bigvgan_generator.pt


def _hub_file(repo: str, filename: str, caches: list[Path | None]) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for cache in caches:
        found = try_to_load_from_cache(repo, filename, cache_dir=cache)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _hub_folder(repo: str, filenames: tuple[str, ...], caches: list[Path | None]) -> Path | None:
    """The snapshot folder of a hub repository holding all ``filenames``."""
    found = [_hub_file(repo, name, caches) for name in filenames]
    if all(found) and len({p.parent for p in found}) == 1:
        return found[0].parent
    return None


def find_aux_models(model_dir: str | Path, cfg=None, *, hub_cache: str | Path | None = None) -> AuxModels:
    """The auxiliary models of an IndexTTS-2 folder (flat ``hf_cache/``, its hub cache, or the user's hub cache
    or ``hub_cache``). A missing one raises AuxModelError naming where it was looked for and how to get it."""
    model_dir = Path(model_dir)
    cfg = cfg or read_config_v2(model_dir)
    local = model_dir / AUX_MODELS_DIR
    caches = [local] + ([Path(hub_cache)] if hub_cache is not None else []) + [None]  # None: the user's cache
    codec_repo_file, bigvgan_repo = SEMANTIC_CODEC_REPO_FILE, cfg.vocoder.name
    bigvgan_files = (BIGVGAN_V2_CONFIG_FILE, BIGVGAN_V2_WEIGHTS_FILE)
    wanted = [
        ("w2v_bert", local / W2V_BERT_DIR, W2V_BERT_REPO, W2V_BERT_FILES, True),
        ("semantic_codec", local / SEMANTIC_CODEC_FILE, SEMANTIC_CODEC_REPO, (codec_repo_file,), False),
        ("campplus", local / CAMPPLUS_FILE, CAMPPLUS_REPO, (CAMPPLUS_FILE,), False),
        ("bigvgan", local / BIGVGAN_V2_DIR, bigvgan_repo, bigvgan_files, True),
    ]
    found = {}
    for name, flat, repo, files, is_folder in wanted:
        if (is_folder and all((flat / f).is_file() for f in files)) or (not is_folder and flat.is_file()):
            found[name] = flat
            continue
        hub = _hub_folder(repo, files, caches) if is_folder else _hub_file(repo, files[0], caches)
        if hub is None:
            raise AuxModelError(
                f"{model_dir}: {repo} ({', '.join(files)}) not found: looked in {flat} and in the Hugging Face "
                f"cache; download it with `hf download {repo} {' '.join(files)} --cache-dir {local}`")
        found[name] = hub
    return AuxModels(**found)


@dataclass
class LoadedModelV2(_FolderNetworks):
    """An IndexTTS-2 folder; networks load on first use, all float32.

    ``gpt`` (UnifiedVoiceV2), ``semantic_features`` (w2v-BERT cut to the layer used, normalised),
    ``feature_extractor`` (its SeamlessM4T front end), ``semantic_codec``, ``s2mel``, ``campplus``, ``vocoder``
    (BigVGAN v2), ``emotion_matrices`` (spk_matrix, emo_matrix), ``prompt_mel``, ``tokenizer``;
    ``qwen_emotion_dir`` names the QwenEmotion folder (an AuxModelError when the folder has none).
    """

    model_dir: Path
    config: ModelConfigV2
    aux: AuxModels
    tagset: TagSet | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    unknown_tags: str = "error"
    adapter_dir: Path | None = None  # a tag adapter on top: the GPT merges it, the text side reads its folder
    _cache: dict = field(default_factory=dict, repr=False)

    family = "v2"

    @property
    def tokenizer_path(self) -> Path:
        return self._adapter_tokenizer() or self.model_dir / self.config.dataset.bpe_model

    @property
    def gpt(self) -> nn.Module:
        """UnifiedVoiceV2 in eval mode: plain layers, an adapter merged in."""
        def make():
            if self.adapter_dir is None:
                return load_gpt_v2(self.model_dir, self.config, device=self.device)
            return merged_adapter_gpt(self.model_dir, self.adapter_dir, self.device)
        return self._get("gpt", make)

    @property
    def semantic_features(self) -> nn.Module:
        return self._get("semantic_features", lambda: load_semantic_features(
            self.aux.w2v_bert, self.model_dir, self.config, device=self.device))

    @property
    def feature_extractor(self):
        def make():
            from transformers import SeamlessM4TFeatureExtractor

            try:
                return SeamlessM4TFeatureExtractor.from_pretrained(self.aux.w2v_bert, local_files_only=True)
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{self.aux.w2v_bert}: cannot read the feature extractor: {e}") from None
        return self._get("feature_extractor", make)

    @property
    def semantic_codec(self) -> nn.Module:
        return self._get("semantic_codec", lambda: load_semantic_codec(
            self.aux.semantic_codec, self.config, device=self.device))

    @property
    def s2mel(self) -> nn.Module:
        return self._get("s2mel", lambda: load_s2mel(self.model_dir, self.config, device=self.device))

    @property
    def campplus(self) -> nn.Module:
        return self._get("campplus", lambda: load_campplus(self.aux.campplus, self.config, device=self.device))

    @property
    def vocoder(self) -> nn.Module:
        return self._get("vocoder", lambda: load_bigvgan_v2(self.aux.bigvgan, device=self.device))

    @property
    def emotion_matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(spk_matrix (R, 192), emo_matrix (R, D))`` on the model's device."""
        def make():
            spk, emo = read_emotion_matrices(self.model_dir, self.config)
            return spk.to(self.device), emo.to(self.device)
        return self._get("emotion_matrices", make)

    @property
    def prompt_mel(self) -> nn.Module:
        from tagtune.audio_v2 import PromptMel

        return self._get("prompt_mel", lambda: PromptMel.from_config(self.config.s2mel.preprocess_params).to(
            self.device))

    @property
    def tokenizer(self):
        """TextTokenizer of ``bpe.model``; as for 1.x, a folder without tags gets an empty tag set."""
        from tagtune.text.tokenizer import TextTokenizer, TokenizerError

        def make():
            path = self.tokenizer_path
            if not path.is_file():
                raise CheckpointError(f"{path}: tokenizer not found (config dataset.bpe_model)")
            try:
                return TextTokenizer(path, tagset=self.tagset or TagSet(), unknown_tags=self.unknown_tags)
            except TokenizerError as e:
                raise (e if str(self.model_dir) in str(e) else TokenizerError(f"{self.model_dir}: {e}")) from None
        return self._get("tokenizer", make)

    @property
    def qwen_emotion_dir(self) -> Path:
        """The QwenEmotion folder (``qwen_emo_path``); AuxModelError when the folder does not have it."""
        path = self.model_dir / self.config.qwen_emo_path
        if not (path / QWEN_EMOTION_CONFIG_FILE).is_file():
            raise AuxModelError(f"{path}: no QwenEmotion model here ({QWEN_EMOTION_CONFIG_FILE} not found); "
                                "text-to-emotion needs the qwen0.6bemo4-merge folder of IndexTeam/IndexTTS-2")
        return path

    def check_vocabulary(self) -> None:
        """The tokenizer and the GPT's text tables must belong together (pieces + 1 spare row)."""
        rows = self.config.gpt.text_rows
        if self.tokenizer.vocab_size + 1 != rows:
            raise CheckpointError(f"{self.model_dir}: the tokenizer has {self.tokenizer.vocab_size} pieces but "
                                  f"the GPT has {rows} text rows (expected pieces + 1)")


def load_model_v2(model_dir: str | Path, adapter: str | Path | None = None, *, device: str | torch.device = "cpu",
                  unknown_tags: str = "error", hub_cache: str | Path | None = None,
                  eager: bool = False) -> LoadedModelV2:
    """Open an IndexTTS-2 folder (official, or grown by ``tags add`` / ``export``), optionally with a tag adapter
    trained on it; the auxiliary models are found at once (see ``find_aux_models``), the networks load on first
    use unless ``eager``."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: not a folder")
    cfg, tagset = read_config_v2(model_dir), read_tagset(model_dir)
    aux = find_aux_models(model_dir, cfg, hub_cache=hub_cache)
    if adapter is not None:
        adapter, cfg, tagset = _with_adapter(Path(adapter), cfg)
    m = LoadedModelV2(model_dir, cfg, aux, tagset, torch.device(device), unknown_tags, adapter)
    if eager:
        m.check_vocabulary()
        for part in ("gpt", "semantic_features", "feature_extractor", "semantic_codec", "s2mel", "campplus",
                     "vocoder", "emotion_matrices"):
            getattr(m, part)
    return m
