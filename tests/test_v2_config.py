"""IndexTTS2 config.yaml: the official full-size values, the tiny fixture's file with its ``fixture:`` section,
round trips, and one clear error per bad value."""

from __future__ import annotations

import copy

import pytest
import yaml

from tagtune.checkpoint import CheckpointError, read_config_v2
from tagtune.config import (
    ConditionConfig,
    ConfigError,
    HardCodedSizes,
    ModelConfig,
    ModelConfigV2,
    v2,
)
from v2_fixture import V2_CHECKPOINT, V2_KEYS, require_v2

FULL_CONFIG = V2_KEYS / "config.yaml"


@pytest.fixture(scope="module")
def fixture_yaml() -> dict:
    require_v2()
    path = V2_CHECKPOINT / "config.yaml"
    return yaml.safe_load(path.read_text())


def test_defaults_are_the_official_full_size_values():
    cfg = v2()
    g = cfg.gpt
    assert (g.model_dim, g.layers, g.heads, g.max_mel_tokens, g.max_text_tokens) == (1280, 24, 20, 1815, 600)
    assert (g.number_text_tokens, g.number_mel_codes, g.start_mel_token, g.stop_mel_token) == (12000, 8194, 8192, 8193)
    assert g.condition_module == ConditionConfig(512, 2048, 8, 6, "conv2d2", 2)
    assert g.emo_condition_module == ConditionConfig(512, 1024, 4, 4, "conv2d2", 2)
    assert (cfg.s2mel.DiT.hidden_dim, cfg.s2mel.DiT.depth, cfg.s2mel.wavenet.num_layers) == (512, 13, 8)
    assert cfg.semantic_codec.codebook_size == 8192 and cfg.emo_num == [3, 17, 2, 8, 4, 5, 10, 24]
    sizes = cfg.sizes
    assert (sizes.w2v_bert_hidden_layer, sizes.gpt_layer_in_dim) == (17, 1280)
    widths = sizes.campplus_extra_kwargs
    assert (widths.growth_rate, widths.bn_size, widths.init_channels) == (32, 4, 128)
    assert cfg.s2mel.preprocess_params.spect_params.fmax_hz is None


def test_full_size_reference_config_reads_as_the_defaults():
    if not FULL_CONFIG.is_file():
        pytest.skip(f"official IndexTTS2 config not found at {FULL_CONFIG}")
    cfg = ModelConfigV2.from_dict(yaml.safe_load(FULL_CONFIG.read_text()))
    assert cfg == v2()


def test_fixture_config_reads_every_section_and_the_scaled_constants(fixture_yaml):
    cfg = ModelConfigV2.from_dict(fixture_yaml)
    g = cfg.gpt
    assert (g.model_dim, g.layers, g.heads, g.max_mel_tokens, g.number_text_tokens) == (64, 2, 4, 100, 224)
    assert g.emo_condition_module.perceiver_mult == 0.125  # a fraction is legal in v2
    assert (cfg.s2mel.DiT.hidden_dim, cfg.s2mel.DiT.depth, cfg.s2mel.length_regulator.channels) == (64, 3, 32)
    assert (cfg.semantic_codec.codebook_size, cfg.semantic_codec.vocos_dim) == (256, 32)
    assert cfg.vocoder.name == "nvidia/bigvgan_v2_22khz_80band_256x" and cfg.version == 2.0
    assert cfg.sizes == HardCodedSizes(1, 64, {"growth_rate": 8, "bn_size": 2, "init_channels": 32})
    assert cfg.extra == {}


def test_fixture_config_round_trips(fixture_yaml):
    cfg = ModelConfigV2.from_dict(fixture_yaml)
    again = ModelConfigV2.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))
    assert again == cfg
    assert cfg.to_dict()["fixture"]["campplus_extra_kwargs"]["init_channels"] == 32
    assert "fixture" not in v2().to_dict()  # the official file has no such section


def test_read_config_v2_names_the_file(tmp_path, fixture_yaml):
    with pytest.raises(CheckpointError, match="not found"):
        read_config_v2(tmp_path)
    bad = copy.deepcopy(fixture_yaml)
    bad["gpt"]["heads"] = 5
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(CheckpointError, match=r"config\.yaml: gpt.model_dim 64 is not divisible by gpt.heads 5"):
        read_config_v2(tmp_path)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["gpt"]["emo_condition_module"].update(perceiver_mult=0), "perceiver_mult must be > 0"),
    (lambda d: d["gpt"]["emo_condition_module"].update(num_blocks="2"), "num_blocks must be an integer"),
    (lambda d: d.update(emo_num=[3, 17]), "emo_num must be 8 positive row counts"),
    (lambda d: d["s2mel"]["wavenet"].update(hidden_dim=32), "wavenet.hidden_dim 32 must equal s2mel.DiT.hidden_dim"),
    (lambda d: d["semantic_codec"].update(hidden_size=512), "semantic_codec.hidden_size must be 1024"),
    (lambda d: d["fixture"].update(w2v_bert_hidden_layer=0), "fixture.w2v_bert_hidden_layer must be >= 1"),
    (lambda d: d.update(version=1.5), "this reader is for IndexTTS 2.0"),
    (lambda d: d.pop("s2mel"), r"lacks section\(s\) \['s2mel'\]"),
])
def test_bad_values_are_one_clear_error(fixture_yaml, edit, message):
    d = copy.deepcopy(fixture_yaml)
    edit(d)
    with pytest.raises(ConfigError, match=message):
        ModelConfigV2.from_dict(d)


def test_the_two_generations_point_at_each_other(fixture_yaml):
    with pytest.raises(ConfigError, match="looks like an IndexTTS2 config"):
        ModelConfig.from_dict(fixture_yaml)
    with pytest.raises(ConfigError, match="looks like an IndexTTS 1.x config"):
        ModelConfigV2.from_dict({"gpt": {}, "vqvae": {}, "bigvgan": {}})


def test_v1_condition_module_still_takes_integer_multipliers():
    assert ConditionConfig(perceiver_mult=2).perceiver_mult == 2
    with pytest.raises(ConfigError, match="perceiver_mult"):
        ConditionConfig(perceiver_mult="2")
