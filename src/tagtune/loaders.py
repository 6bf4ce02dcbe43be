"""The one loader: a model folder, optionally with a LoRA adapter folder on top, as the parts a stage needs.

``load_model(model_dir, adapter=None)`` reads the folder's description (config, tokenizer, tag set) at once
and builds each network on first use: ``gpt`` (with an adapter, the adapter merged into plain layers, which
the fast decoding paths need), ``adapter_gpt`` (the adapter kept as peft layers, as training left it),
``dvae``, ``vocoder`` and ``mel``. The tokenizer and tags come from the adapter folder when one is given (it
holds the extended ``bpe.model`` and ``tags.json``); the vocoder, DVAE and configuration from the model folder.
Files are read through ``checkpoint`` (weights, config), ``lora`` (adapter files) and ``tags`` (tag rows).
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
from tagtune.checkpoint import CheckpointError, bpe_path, load_bigvgan, load_dvae, load_gpt, load_into, read_config
from tagtune.config import ModelConfig
from tagtune.errors import UserError
from tagtune.folders import RUN_INFO_FILE, AdapterFolder
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
    """The base GPT with the adapter folded in: a plain UnifiedVoice (fast paths need plain layers)."""
    from tagtune.models.unified_voice import UnifiedVoice

    tuned, cfg = load_adapter_model(base_dir, adapter_dir)
    state = lora.merge(tuned)
    with torch.device("meta"):
        gpt = UnifiedVoice(cfg.gpt)
    load_into(gpt, state, adapter_dir, device=device)
    return gpt.eval()


@dataclass
class LoadedModel:
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

    def _get(self, name: str, make: Callable[[], Any]):
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

    @property
    def text_dir(self) -> Path:
        """The folder whose ``bpe.model`` and ``tags.json`` the text side reads."""
        return self.adapter_dir if self.adapter_dir is not None else self.model_dir

    @property
    def tokenizer_path(self) -> Path:
        own = AdapterFolder(self.adapter_dir).tokenizer if self.adapter_dir is not None else None
        return own if own is not None and own.is_file() else bpe_path(self.model_dir, self.config)

    @property
    def gpt(self) -> nn.Module:
        """The UnifiedVoice in eval mode: plain layers, an adapter merged in."""
        def make():
            if self.adapter_dir is None:
                return load_gpt(self.model_dir, self.config, dtype=self.dtype, device=self.device)
            return merged_adapter_gpt(self.model_dir, self.adapter_dir, self.device)
        return self._get("gpt", make)

    @property
    def adapter_gpt(self) -> nn.Module:
        """The tuned GPT with the adapter kept as peft layers (the plain GPT when there is no adapter)."""
        if self.adapter_dir is None:
            return self.gpt
        return self._get("adapter_gpt", lambda: load_adapter_model(self.model_dir, self.adapter_dir, self.device)[0])

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
               dtype: torch.dtype = torch.float32, unknown_tags: str = "error", eager: bool = False) -> LoadedModel:
    """Open an IndexTTS 1.0/1.5 folder (official or tagtune's), optionally with a tagtune adapter folder.

    Networks load lazily unless ``eager``; with ``eager`` the tokenizer is checked against the GPT's rows.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: not a folder")
    cfg = read_config(model_dir)
    tagset = read_tagset(model_dir)
    if adapter is not None:
        adapter = Path(adapter)
        if not adapter.is_dir():
            raise CheckpointError(f"adapter {adapter}: not a folder")
        meta = read_adapter_meta(adapter)
        n_tokens = cfg.gpt.number_text_tokens + len(meta.get("tag_names", []))
        cfg = dataclasses.replace(cfg, gpt=dataclasses.replace(cfg.gpt, number_text_tokens=n_tokens))
        tagset = read_tagset(adapter)
    m = LoadedModel(model_dir, cfg, adapter, tagset, torch.device(device), dtype, unknown_tags)
    if eager:
        m.check_vocabulary()
        m.vocoder  # noqa: B018 - force loading
    return m
