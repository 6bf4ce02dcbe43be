"""``TTS.load(model, adapter)``: a PEFT adapter folder with its extended tokenizer and tags file."""

from __future__ import annotations

import pytest
import torch

from tagtune import lora
from tagtune.generation import GenerationConfig
from tagtune.lora import LoraSpec
from tagtune.synthesis.tts import TTS
from tagtune.tags import TagSet, add_tag_pieces
from tagtune.tags.rows import grow_base

TAGS = ["<laughs>", "<sighs>"]
HOP = 1024


@pytest.fixture(scope="module")
def adapter_dir(shipped_base, tmp_path_factory):
    """An untrained adapter (LoRA B = 0): the tuned model must speak untagged text exactly as the base."""
    torch.manual_seed(0)
    ckpt, out = shipped_base, tmp_path_factory.mktemp("adapter")
    gpt, _, new_ids = grow_base(ckpt, TAGS, dropout=0.0)
    lora.apply_lora(gpt, LoraSpec(rank=4), new_ids)
    bpe, ids = add_tag_pieces(ckpt / "bpe.model", TAGS)
    (out / "src").mkdir()
    (out / "src" / "bpe.model").write_bytes(bpe)
    TagSet(TAGS, token_ids=ids).save(out / "src" / "tags.json")
    meta = {"tag_names": TAGS, "new_token_ids": new_ids, "mode": "lora"}
    files = {"bpe.model": out / "src" / "bpe.model", "tags.json": out / "src" / "tags.json"}
    return lora.save_adapter(gpt, out / "adapter", meta, files)


def test_adapter_model_speaks_tags_and_leaves_plain_text_alone(shipped_base, reference_wav, adapter_dir):
    ckpt, ref = shipped_base, reference_wav
    tuned = TTS.load(ckpt, adapter_dir, precision="fp32")
    base = TTS.load(ckpt, precision="fp32")
    vocab = base.tokenizer.vocab_size  # the tags' ids follow the base vocabulary
    assert tuned.known_tags == TAGS and base.known_tags == []
    assert tuned.gpt.cfg.text_rows == vocab + 3 and type(tuned.gpt.gpt.h[0].attn.c_attn).__name__ == "Conv1D"
    greedy = GenerationConfig.greedy(max_new_tokens=12)
    text = "Hello, World! This is IndexTTS speaking."
    a = tuned.synthesize(text, ref, generation=greedy)
    b = base.synthesize(text, ref, generation=greedy)
    assert [c.tolist() for c in a.codes] == [c.tolist() for c in b.codes]
    ids = tuned.sentences("Well, <laugh> that is funny. <sighs>")
    assert vocab in ids[0] and vocab + 1 in ids[-1]
    out = tuned.synthesize("Well, <laughs> that is funny.", ref, generation=greedy)
    assert len(out.audio) == out.tokens * HOP > 0
