"""Tiny random-init judge models saved as hub models would be (``save_pretrained``), for tests that load them
through the real loading code without a download."""

from __future__ import annotations

import json
from pathlib import Path

AUDIOSET_LABELS = ["Speech", "Laughter", "Giggle", "Snicker", "Sigh", "Breathing", "Music", "Cough"]


def tiny_ast(folder: Path) -> None:
    """A random 1-layer AST whose classes carry AudioSet names (the event map's classes among them)."""
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    labels = dict(enumerate(AUDIOSET_LABELS))
    cfg = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_length=128,
                    id2label=labels, label2id={v: k for k, v in labels.items()})
    ASTForAudioClassification(cfg).save_pretrained(folder)
    ASTFeatureExtractor(max_length=128).save_pretrained(folder)


WHISPER_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|zh|>", "<|translate|>", "<|transcribe|>",
                    "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]


def _tiny_xvector(folder: Path) -> None:
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    cfg = WavLMConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                      conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                      num_conv_pos_embedding_groups=2, tdnn_dim=(32, 32), tdnn_kernel=(3, 1), tdnn_dilation=(1, 1),
                      xvector_output_dim=16)
    WavLMForXVector(cfg).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folder)


def _tiny_whisper(folder: Path) -> None:
    """A 1-layer Whisper with a byte-level BPE tokenizer of printable ASCII and Whisper's special tokens."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate([chr(c) for c in range(33, 127)] + ["\u0120"])}  # U+0120: the BPE space
    vocab |= {s: len(vocab) + k for k, s in enumerate(WHISPER_SPECIALS)}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    eot, start = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    tok = WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token="<|endoftext|>",
                           bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                           additional_special_tokens=WHISPER_SPECIALS[1:])
    cfg = WhisperConfig(vocab_size=len(vocab), num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_source_positions=1500, max_target_positions=64, decoder_start_token_id=start,
                        eos_token_id=eot, pad_token_id=eot, bos_token_id=eot)
    model = WhisperForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=start, eos_token_id=eot, pad_token_id=eot, max_length=16, is_multilingual=True,
        no_timestamps_token_id=vocab["<|notimestamps|>"],
        lang_to_id={"<|en|>": vocab["<|en|>"], "<|zh|>": vocab["<|zh|>"]},
        task_to_id={"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]})
    model.save_pretrained(folder)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok).save_pretrained(folder)


def save_tiny_judges(root: Path) -> dict[str, Path]:
    """The three tiny judges under ``root``: {"events", "words", "voice"} -> folder."""
    import torch

    torch.manual_seed(0)
    for name, build in (("ast", tiny_ast), ("whisper", _tiny_whisper), ("sv", _tiny_xvector)):
        build(root / name)
    return {"events": root / "ast", "words": root / "whisper", "voice": root / "sv"}
