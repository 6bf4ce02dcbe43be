"""An exported adapter in stock PEFT: PeftModel.from_pretrained on a plain base grown by grow_for_adapter."""

from __future__ import annotations

import json
import re
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import tagtune
from base_fixtures import load_plain_gpt

pytestmark = pytest.mark.slow
PREFIX = "base_model.model."


@pytest.fixture(scope="module")
def exports(trained_run, tmp_path_factory):
    """(adapter folder, merged folder) of the trained run."""
    from tagtune.export import export

    root = tmp_path_factory.mktemp("peft-stock")
    return (export(trained_run[0], root / "adapter", adapter_only=True),
            export(trained_run[0], root / "merged"))


def _batch(inputs, tag_ids):
    text = inputs["batch_text_ids"].clone()
    text[0, 1], text[1, 3] = tag_ids  # teacher-forced rows that read both tags
    return (inputs["batch_cond_mel"], text, inputs["batch_text_lengths"], inputs["batch_codes"],
            inputs["batch_wav_lengths"], inputs["batch_cond_mel_lengths"])


def _stock(base_folder, adapter):
    """A plain base GPT (torch + yaml only), grown for the adapter, then stock PeftModel.from_pretrained."""
    from peft import PeftModel

    gpt = tagtune.grow_for_adapter(load_plain_gpt(base_folder), adapter)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # peft warns about missing or unexpected adapter keys
        return PeftModel.from_pretrained(gpt, str(adapter)).eval()


def test_adapter_folder_is_in_peft_format(exports, trained_run, shipped_base):
    from tagtune.loaders import read_run_info

    adapter, _ = exports
    info = read_run_info(trained_run[0])
    keys = set(load_file(str(adapter / "adapter_model.safetensors")))
    assert keys and all(k.startswith(PREFIX) for k in keys)
    assert PREFIX + "text_embedding.token_adapter.trainable_tokens_delta" in keys
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == info["base"]["dir"] == str(shipped_base)
    assert config["task_type"] is None
    assert config["trainable_token_indices"] == {"text_embedding": info["new_token_ids"]}
    card = (adapter / "README.md").read_text()
    for tag, token_id in zip(info["tag_names"], info["new_token_ids"]):
        assert f"| `{tag}` | {token_id} |" in card
    assert f"rank {config['r']}" in card and str(shipped_base) in card


def test_model_card_example_runs(exports, shipped_base):
    """The card's stock-PEFT example, with the folder's path filled in, gives the merged tuned GPT."""
    adapter, merged_dir = exports
    card = (adapter / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(blocks) == 1 and "PeftModel.from_pretrained" in blocks[0]
    scope: dict = {}
    exec(compile(blocks[0].replace("path/to/this/folder", str(adapter)), "README.md", "exec"), scope)  # noqa: S102
    official = torch.load(merged_dir / "gpt.pth", weights_only=True)
    state = scope["gpt"].state_dict()
    assert set(state) == set(official)
    for key, value in official.items():
        torch.testing.assert_close(state[key], value, atol=1e-5, rtol=0, msg=key)


def test_stock_peft_equals_the_merged_export(exports, shipped_base, base_inputs):
    from tagtune.checkpoint import load_gpt

    adapter, merged_dir = exports
    merged = load_gpt(merged_dir)
    n = merged.cfg.number_text_tokens
    batch = _batch(base_inputs, (n - 2, n - 1))
    model = _stock(shipped_base, adapter)
    assert type(model).__name__ == "PeftModel" and model.get_base_model().cfg.number_text_tokens == n
    with torch.no_grad():
        want = merged.logits(*batch)
        got = model.get_base_model().logits(*batch)
        torch.testing.assert_close(got.text_logits, want.text_logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.mel_logits, want.mel_logits, atol=1e-5, rtol=0)
        loss_text, loss_mel, mel_logits = model(*batch)  # the plain PeftModel hands the arguments through
        torch.testing.assert_close(mel_logits, merged(*batch)[2], atol=1e-5, rtol=0)
    plain = model.merge_and_unload()
    official = torch.load(merged_dir / "gpt.pth", weights_only=True)
    state = plain.state_dict()
    assert set(state) == set(official)
    for key, value in official.items():
        torch.testing.assert_close(state[key], value, atol=1e-5, rtol=0, msg=key)
    base = load_gpt(shipped_base)
    with torch.no_grad():  # the adapter really changes the model
        untagged = _batch(base_inputs, tuple(base_inputs["batch_text_ids"][[0, 1], [1, 3]].tolist()))
        assert (plain.logits(*untagged).mel_logits - base.logits(*untagged).mel_logits).abs().max() > 1e-3


def test_grow_for_adapter_rows_and_errors(exports, shipped_base, tmp_path):
    from tagtune.errors import UserError

    adapter, merged_dir = exports
    gpt = load_plain_gpt(shipped_base)
    old = gpt.text_embedding.weight.detach().clone()
    old_head, old_bias = gpt.text_head.weight.detach().clone(), gpt.text_head.bias.detach().clone()
    gpt.number_text_tokens = gpt.cfg.number_text_tokens  # the official UnifiedVoice keeps it as an attribute
    assert tagtune.grow_for_adapter(gpt, adapter) is gpt
    n_old, n = old.shape[0] - 1, gpt.cfg.number_text_tokens
    assert n == gpt.number_text_tokens and gpt.text_embedding.weight.shape[0] == gpt.text_head.bias.shape[0] == n + 1
    embedding, head = gpt.text_embedding.weight, gpt.text_head
    assert torch.equal(embedding[:n_old], old[:-1]) and torch.equal(embedding[-1], old[-1])  # spare row last
    assert torch.equal(head.weight[:n_old], old_head[:-1]) and torch.equal(head.bias[-1], old_bias[-1])
    merged = torch.load(merged_dir / "gpt.pth", weights_only=True)  # the grown rows are the adapter's own
    for key in ("text_embedding.weight", "text_head.weight", "text_head.bias"):
        torch.testing.assert_close(gpt.state_dict()[key][n_old:n], merged[key][n_old:n], atol=0, rtol=0)
    assert tagtune.grow_for_adapter(gpt, adapter).text_embedding.weight is embedding  # already grown: unchanged
    with pytest.raises(UserError, match="PEFT adapter folder"):
        tagtune.grow_for_adapter(load_plain_gpt(shipped_base), tmp_path)
    small = load_plain_gpt(shipped_base)
    small.text_head = torch.nn.Linear(small.text_head.in_features, 4)
    small.text_embedding = torch.nn.Embedding(len(old) + 50, old.shape[1])
    with pytest.raises(UserError, match="the adapter's base"):
        tagtune.grow_for_adapter(small, adapter)


def test_older_unprefixed_adapters_still_load_and_export(exports, trained_run, shipped_base, base_inputs, tmp_path):
    """Adapters written before the PEFT prefix (keys relative to the model) load as before and export prefixed."""
    from tagtune.export import export
    from tagtune.loaders import load_adapter_model

    adapter, _ = exports
    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    for weights in (run / "best", run / "last"):
        path = weights / "adapter_model.safetensors"
        state = load_file(str(path))
        save_file({k.removeprefix(PREFIX): v for k, v in state.items()}, str(path))
        assert not any(k.startswith(PREFIX) for k in load_file(str(path)))
    old, _ = load_adapter_model(shipped_base, run / "best")
    new, _ = load_adapter_model(shipped_base, adapter)
    batch = _batch(base_inputs, (new.cfg.number_text_tokens - 2, new.cfg.number_text_tokens - 1))
    with torch.no_grad():
        torch.testing.assert_close(old.logits(*batch).mel_logits, new.logits(*batch).mel_logits, atol=0, rtol=0)
    exported = export(run, tmp_path / "re-exported", adapter_only=True)
    assert all(k.startswith(PREFIX) for k in load_file(str(exported / "adapter_model.safetensors")))
    with torch.no_grad():
        got = _stock(shipped_base, exported).get_base_model().logits(*batch).mel_logits
        torch.testing.assert_close(got, new.logits(*batch).mel_logits, atol=1e-5, rtol=0)
