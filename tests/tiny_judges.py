"""Tiny random-init judge models saved as hub models would be (``save_pretrained``), for tests that load them
through the real loading code without a download."""

from __future__ import annotations

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
