"""Assemble what synthesis needs from a model folder (official or exported) and an optional LoRA adapter.

Files are read through ``checkpoint`` and ``lora`` only; this module decides which folder supplies what:
the GPT, tokenizer and tags come from the adapter folder when one is given (it holds the extended
``bpe.model`` and ``tags.json``), the vocoder and configuration from the model folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tagtune.errors import UserError

TOKENIZER_FILE = "bpe.model"


def load_tokenizer(folder: str | Path, bpe_file: Path, unknown_tags: str = "error"):
    """TextTokenizer for ``bpe_file`` with the tag set of ``folder``'s tags.json (none: no tags known).

    An empty tag set (rather than none) makes a tag in the text an error that lists the known tags,
    instead of letting "<laughs>" be read out as letters.
    """
    from tagtune.checkpoint import read_tags
    from tagtune.text import TextTokenizer
    from tagtune.tags import TagSet

    data = read_tags(folder)
    tagset = TagSet.from_dict(data) if data is not None else TagSet()
    return TextTokenizer(bpe_file, tagset=tagset, unknown_tags=unknown_tags)


def merged_adapter_gpt(model_dir: str | Path, adapter_dir: str | Path, device):
    """The base GPT with the adapter folded in: a plain UnifiedVoice (fast paths need plain layers)."""
    from tagtune.checkpoint import load_into
    from tagtune.lora import load_adapter_model, merge
    from tagtune.models.unified_voice import UnifiedVoice

    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise UserError(f"adapter {adapter_dir}: not a folder")
    try:
        tuned, cfg = load_adapter_model(model_dir, adapter_dir)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise UserError(f"adapter {adapter_dir}: {e}") from None
    state = merge(tuned)
    with torch.device("meta"):
        gpt = UnifiedVoice(cfg.gpt)
    load_into(gpt, state, adapter_dir, device=device)
    return gpt.eval()


def load_components(model_dir: str | Path, adapter: str | Path | None, device, unknown_tags: str = "error"):
    """(gpt fp32, vocoder, tokenizer, mel) for synthesis."""
    from tagtune.audio import MelSpectrogram
    from tagtune.checkpoint import CheckpointError, bpe_path, load_bigvgan, load_gpt, read_config

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: not a folder")
    cfg = read_config(model_dir)
    if adapter is None:
        gpt = load_gpt(model_dir, cfg, device=device)
        tokenizer = load_tokenizer(model_dir, bpe_path(model_dir, cfg), unknown_tags)
    else:
        gpt = merged_adapter_gpt(model_dir, adapter, device)
        bpe = Path(adapter) / TOKENIZER_FILE
        tokenizer = load_tokenizer(adapter, bpe if bpe.is_file() else bpe_path(model_dir, cfg), unknown_tags)
    if tokenizer.vocab_size + 1 != gpt.cfg.text_rows:
        raise CheckpointError(f"{model_dir}: tokenizer has {tokenizer.vocab_size} pieces but the GPT has "
                              f"{gpt.cfg.text_rows} text rows (expected pieces + 1)")
    vocoder = load_bigvgan(model_dir, cfg, device=device)
    mel = MelSpectrogram.from_config(cfg.dataset.mel).to(device)
    return gpt, vocoder, tokenizer, mel
