"""Export of a trained run: merged official-format folder and PEFT adapter folder."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml

pytestmark = pytest.mark.slow
TEXT_KEYS = ("text_embedding.weight", "text_head.weight", "text_head.bias")


def _official(official_keys_dir, name: str) -> dict[str, tuple[int, ...]]:
    lines = (official_keys_dir / name).read_text().splitlines()
    rows = [line.split("\t") for line in lines if line.count("\t") == 2]
    return {k: tuple(int(x) for x in re.findall(r"\d+", shape)) for k, shape, _ in rows}


def _pattern(key: str) -> str:
    return re.sub(r"\.\d+\.", ".N.", key)


@pytest.fixture(scope="module")
def merged(trained_run, tmp_path_factory):
    from tagtune.export import export

    return export(trained_run[0], tmp_path_factory.mktemp("export") / "merged")


def test_full_size_layout_equals_the_official_one_with_grown_text_rows(official_keys_dir):
    from tagtune.config import v1_5
    from tagtune.export import official_shapes

    cfg = v1_5().gpt
    cfg.number_text_tokens += 4  # four tags
    ours = official_shapes(cfg)
    official = _official(official_keys_dir, "sd_gpt_v15.txt")
    assert set(ours) == set(official)
    for key, shape in official.items():
        grown = (12005,) + shape[1:] if key in TEXT_KEYS else shape
        assert ours[key] == grown, key


def test_merged_folder_is_complete_and_loads_strictly(merged, shipped_base):
    from tagtune.checkpoint import load_gpt, read_config
    from tagtune.loaders import load_model
    from tagtune.models.unified_voice import UnifiedVoice

    vocab = read_config(shipped_base).gpt.number_text_tokens  # the tags' ids follow it
    assert {p.name for p in merged.iterdir()} == {"config.yaml", "gpt.pth", "bpe.model", "tags.json", "dvae.pth",
                                                  "bigvgan_generator.pth", "provenance.json", "tag_init.safetensors"}
    cfg = yaml.safe_load((merged / "config.yaml").read_text())
    assert cfg["gpt"]["number_text_tokens"] == vocab + 2 and cfg["gpt_checkpoint"] == "gpt.pth"
    state = torch.load(merged / "gpt.pth", weights_only=True)  # what the official loader does
    assert set(state) == set(torch.load(shipped_base / "gpt.pth", weights_only=True))
    assert all(state[k].shape[0] == vocab + 3 for k in TEXT_KEYS) and state["text_head.weight"].dtype == torch.float32
    plain = UnifiedVoice(load_gpt(merged).cfg)
    plain.load_state_dict(state, strict=True)
    for name in ("dvae.pth", "bigvgan_generator.pth"):
        assert (merged / name).read_bytes() == (shipped_base / name).read_bytes()
    model = load_model(merged)
    assert model.tokenizer.vocab_size == vocab + 2 and model.tagset is not None
    provenance = json.loads((merged / "provenance.json").read_text())
    assert provenance["format"] == "indextts-merged" and provenance["new_token_ids"] == [vocab, vocab + 1]


def test_merged_keys_follow_the_official_patterns(merged, official_keys_dir):
    state = torch.load(merged / "gpt.pth", weights_only=True)
    assert {_pattern(k) for k in state} == {_pattern(k) for k in _official(official_keys_dir, "sd_gpt_v15.txt")}


def test_merged_and_adapter_exports_agree(merged, trained_run, shipped_base, base_inputs, tmp_path):
    from tagtune.checkpoint import load_gpt, read_config
    from tagtune.export import export
    from tagtune.loaders import load_adapter_model

    vocab = read_config(shipped_base).gpt.number_text_tokens  # the tags' ids follow it
    adapter = export(trained_run[0], tmp_path / "adapter", adapter_only=True)
    assert {"adapter_config.json", "adapter_model.safetensors", "bpe.model", "tags.json", "provenance.json",
            "README.md"} <= {p.name for p in adapter.iterdir()}
    tuned, _ = load_adapter_model(shipped_base, adapter)
    plain = load_gpt(merged)
    text = base_inputs["batch_text_ids"].clone()
    text[0, 1], text[1, 3] = vocab, vocab + 1
    batch = (base_inputs["batch_cond_mel"], text, *input_batch(base_inputs)[2:])
    with torch.no_grad():
        a, b = tuned.logits(*batch), plain.logits(*batch)
    torch.testing.assert_close(b.text_logits, a.text_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(b.mel_logits, a.mel_logits, atol=1e-4, rtol=0)
    base = load_gpt(shipped_base)
    with torch.no_grad():
        assert (base.logits(*input_batch(base_inputs)).mel_logits - tuned.logits(*input_batch(base_inputs))
                .mel_logits).abs().max() > 1e-3  # the export really carries the training


def input_batch(inputs):
    return (inputs["batch_cond_mel"], inputs["batch_text_ids"], inputs["batch_text_lengths"],
            inputs["batch_codes"], inputs["batch_wav_lengths"], inputs["batch_cond_mel_lengths"])


def test_fp16_export_and_errors(trained_run, tmp_path):
    from tagtune.errors import UserError
    from tagtune.export import export

    out = export(trained_run[0], tmp_path / "half", dtype="fp16", which="last")
    state = torch.load(out / "gpt.pth", weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    with pytest.raises(UserError, match="is not empty"):
        export(trained_run[0], out)
    with pytest.raises(UserError, match="dtype must be one of"):
        export(trained_run[0], tmp_path / "x", dtype="bf16")
    with pytest.raises(UserError, match="not a tagtune training run"):
        export(tmp_path, tmp_path / "y")
