"""Loading official folders (the shipped tiny base): formats accepted, and every failure named clearly."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
import yaml

from tagtune import checkpoint as ckpt
from tagtune.config import ConfigError, ModelConfig, v1_0, v1_5
from tagtune.loaders import load_model


@pytest.fixture()
def model_copy(shipped_base, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(shipped_base, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


def _gpt_state(d):
    return torch.load(d / "gpt.pth", weights_only=True)


def test_official_folder_loads(shipped_base):
    m = load_model(shipped_base)
    raw = yaml.safe_load((shipped_base / "config.yaml").read_text())
    assert m.config.is_v15 and m.config.gpt.model_dim == raw["gpt"]["model_dim"]
    sd = _gpt_state(shipped_base)
    got = m.gpt.state_dict()
    assert set(got) == set(sd)
    assert all(got[k].dtype == torch.float32 for k in sd if sd[k].is_floating_point())  # float16 file, fp32 model
    assert all(torch.equal(got[k], sd[k].to(got[k].dtype)) for k in sd)
    assert not any(k.endswith("weight_g") for k in m.vocoder.state_dict())  # weight norm folded


def test_fp16_and_model_wrapper(model_copy):
    sd = _gpt_state(model_copy)
    torch.save({"model": {k: v.half() for k, v in sd.items()}}, model_copy / "gpt.pth")
    gpt = ckpt.load_gpt(model_copy)
    w = gpt.state_dict()["text_embedding.weight"]
    assert w.dtype == torch.float32
    assert torch.equal(w, sd["text_embedding.weight"].half().float())


def test_missing_and_renamed_keys_are_named(model_copy):
    sd = _gpt_state(model_copy)
    sd["final_norm.gamma"] = sd.pop("final_norm.weight")
    torch.save(sd, model_copy / "gpt.pth")
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load_gpt(model_copy)
    msg = str(e.value)
    assert "gpt.pth" in msg and "missing key final_norm.weight" in msg and "unexpected key final_norm.gamma" in msg


def test_shape_mismatch_names_both_shapes(model_copy):
    sd = _gpt_state(model_copy)
    codes = sd["mel_head.bias"].shape[0]
    sd["mel_head.bias"] = torch.zeros(7)
    torch.save(sd, model_copy / "gpt.pth")
    want = rf"mel_head.bias: file has shape \(7,\), model expects \({codes},\)"
    with pytest.raises(ckpt.CheckpointError, match=want):
        ckpt.load_gpt(model_copy)


def test_vocab_mismatch_explained(model_copy):
    cfg = yaml.safe_load((model_copy / "config.yaml").read_text())
    rows = cfg["gpt"]["number_text_tokens"] + 1  # the tokenizer's pieces and one spare row
    cfg["gpt"]["number_text_tokens"] += 3
    (model_copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    want = f"text_embedding.weight has {rows} rows .* number_text_tokens={rows + 2}"
    with pytest.raises(ckpt.CheckpointError, match=want):
        ckpt.load_gpt(model_copy)


def test_truncated_file(model_copy):
    data = (model_copy / "gpt.pth").read_bytes()
    (model_copy / "gpt.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="gpt.pth: cannot be read"):
        ckpt.load_gpt(model_copy)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_code_running_pickle_refused(model_copy, capsys):
    torch.save({"model": _Evil()}, model_copy / "gpt.pth")
    with pytest.raises(ckpt.CheckpointError, match="refused"):
        ckpt.load_gpt(model_copy)
    assert "this must never run" not in capsys.readouterr().out


def test_wrong_version_and_indextts2_config(model_copy):
    cfg = yaml.safe_load((model_copy / "config.yaml").read_text())
    cfg["version"] = 2.0
    (model_copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ckpt.CheckpointError, match="supports IndexTTS 1.0 and 1.5"):
        ckpt.read_config(model_copy)
    with pytest.raises(ConfigError, match="IndexTTS2"):
        ModelConfig.from_dict({"gpt": {}, "s2mel": {}, "semantic_codec": {}})


def test_missing_file_and_folder(tmp_path, model_copy):
    with pytest.raises(ckpt.CheckpointError, match="not a folder"):
        load_model(tmp_path / "nope")
    (model_copy / "dvae.pth").unlink()
    with pytest.raises(ckpt.CheckpointError, match="dvae.pth: not found"):
        ckpt.load_dvae(model_copy)


def test_v10_style_config_roundtrip(model_copy):
    cfg = ckpt.read_config(model_copy)
    d = cfg.to_dict()
    assert d["bigvgan"]["cqtd_dilations"] == [1, 2, 4]  # training keys survive verbatim
    d.pop("version")
    cfg10 = ModelConfig.from_dict(d)
    assert cfg10.version is None and not cfg10.is_v15
    assert ModelConfig.from_dict(cfg10.to_dict()) == cfg10
    assert v1_0().gpt.n_positions == 1012 and v1_5().gpt.n_positions == 1405


def test_own_format_roundtrip(shipped_base, tmp_path):
    """tagtune's own folder: safetensors weights named by config.yaml, reloaded bit-identically."""
    src = shipped_base
    m = load_model(src)
    out = tmp_path / "own"
    cfg = copy.deepcopy(m.config)
    cfg.gpt_checkpoint = "gpt.safetensors"
    ckpt.save_safetensors(out / "gpt.safetensors", m.gpt.state_dict())
    for name in ("dvae.pth", "bigvgan_generator.pth", "bpe.model"):
        shutil.copy(src / name, out / name)
    ckpt.write_config(out, cfg)
    again = load_model(out)
    a, b = m.gpt.state_dict(), again.gpt.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_atomic_write_keeps_old_content_on_failure(tmp_path):
    p = tmp_path / "f.bin"
    ckpt.atomic_write_bytes(p, b"old")

    with pytest.raises(TypeError):
        ckpt.atomic_write_bytes(p, object())  # type: ignore[arg-type]
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.bin"]
