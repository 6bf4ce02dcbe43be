"""Training recipes: the shipped YAML files load and validate; overrides and bad values behave."""

from __future__ import annotations

from pathlib import Path

import pytest

from tagtune.train.config import TrainConfig, TrainConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_default_recipe_is_sized_for_elise():
    cfg = TrainConfig.from_yaml(CONFIGS / "lora.yaml")
    assert (cfg.lora.mode, cfg.lora.rank, cfg.lora.alpha, cfg.lora.layers) == ("lora", 16, 32, None)
    assert cfg.lora.targets == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert cfg.batch.batch_size * cfg.batch.grad_accum == 16
    assert 1100 // 16 * cfg.schedule.epochs == 544  # optimizer steps on ~1.1k training clips
    assert cfg.optim.lr * cfg.optim.tag_lr_scale == pytest.approx(5e-4)
    assert cfg.loss.text_weight == 0.1 and cfg.loss.mask_padding


def test_lowmem_recipe_keeps_the_global_batch_and_saves_memory():
    low, default = TrainConfig.from_yaml(CONFIGS / "lora-lowmem.yaml"), TrainConfig.from_yaml(CONFIGS / "lora.yaml")
    assert low.batch.batch_size * low.batch.grad_accum == default.batch.batch_size * default.batch.grad_accum
    assert low.batch.batch_size < default.batch.batch_size and low.model.gradient_checkpointing
    assert low.lora.alpha / low.lora.rank == default.lora.alpha / default.lora.rank
    assert low.to_dict().keys() == default.to_dict().keys()


def test_shipped_recipes_round_trip_through_yaml(tmp_path):
    import yaml

    shipped = sorted(CONFIGS.glob("*.yaml"))
    assert {"lora.yaml", "lora-lowmem.yaml"} <= {p.name for p in shipped}
    for path in shipped:  # every shipped recipe loads, validates and survives a round trip
        cfg = TrainConfig.from_yaml(path)
        (tmp_path / path.name).write_text(yaml.safe_dump(cfg.to_dict()))
        assert TrainConfig.from_yaml(tmp_path / path.name) == cfg


def test_cli_overrides():
    cfg = TrainConfig().with_overrides(max_steps=7, epochs=3, batch_size=5, lr=2e-3, rank=2, seed=9)
    assert (cfg.schedule.max_steps, cfg.schedule.epochs, cfg.batch.batch_size) == (7, 3, 5)
    assert (cfg.optim.lr, cfg.lora.rank, cfg.seed) == (2e-3, 2, 9)
    assert TrainConfig().with_overrides(lr=None) == TrainConfig()
    with pytest.raises(TrainConfigError, match="unknown override 'alpha'"):
        TrainConfig().with_overrides(alpha=3)
    with pytest.raises(TrainConfigError, match=r"batch.batch_size must be >= 1, got 0"):
        TrainConfig().with_overrides(batch_size=0)


@pytest.mark.parametrize("data, message", [
    ({"lora": {"rank": 0}}, "lora.rank must be >= 1, got 0"),
    ({"lora": {"mode": "qlora"}}, "lora.mode must be one of"),
    ({"lora": {"rnak": 4}}, r"unknown key\(s\) \['rnak'\] in section 'lora'"),
    ({"optim": {"lr": -1}}, "optim.lr must be > 0"),
    ({"schedule": {"min_lr_ratio": 2}}, "schedule.min_lr_ratio must be in"),
    ({"runtime": {"precision": "int8"}}, "runtime.precision must be one of"),
    ({"trainer": {}}, r"unknown recipe key\(s\) \['trainer'\]"),
    ({"model": {"dropout": 1.0}}, r"model.dropout must be in \[0, 1\)"),
])
def test_bad_values_name_the_field(data, message):
    with pytest.raises(TrainConfigError, match=message):
        TrainConfig.from_dict(data)


def test_recipe_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora: {rank: -2}\n")
    with pytest.raises(TrainConfigError, match=r"bad.yaml: lora.rank must be >= 1"):
        TrainConfig.from_yaml(bad)
    with pytest.raises(TrainConfigError, match="recipe not found"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")


def _precision(recipe: str, env: dict, config_file: Path, device: str = "cpu") -> tuple[str, str]:
    import torch

    from tagtune.train.accel import run_precision

    cfg = TrainConfig.from_dict({"runtime": {"precision": recipe}})
    return run_precision(cfg, torch.device(device), env=env, config_file=config_file)


def test_precision_comes_from_accelerate_unless_the_recipe_names_one(tmp_path, monkeypatch):
    import tagtune.precision

    none = tmp_path / "no-config.yaml"
    config = tmp_path / "default_config.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\nmixed_precision: bf16\nnum_processes: 1\n")
    launched = {"ACCELERATE_MIXED_PRECISION": "bf16"}  # accelerate launch --mixed_precision bf16
    assert _precision("auto", launched, none) == ("bf16", "ACCELERATE_MIXED_PRECISION")
    assert _precision("auto", {"ACCELERATE_MIXED_PRECISION": "no"}, config) == ("fp32", "ACCELERATE_MIXED_PRECISION")
    assert _precision("auto", {}, config) == ("bf16", str(config))  # a run started without the launcher
    assert _precision("fp32", launched, config) == ("fp32", "runtime.precision")  # the recipe's choice wins
    for native, default in ((True, "bf16"), (False, "fp32")):  # bf16 where the CPU computes in it natively
        monkeypatch.setattr(tagtune.precision, "cpu_has_native_bf16", lambda native=native: native)
        assert _precision("auto", {}, none) == (default, "the default for cpu")
        # accelerate launch without --mixed_precision sets "no": fp32 on any CPU
        assert _precision("auto", {"ACCELERATE_MIXED_PRECISION": "no"}, none)[0] == "fp32"


@pytest.mark.parametrize("env, recipe, message", [
    ({"ACCELERATE_MIXED_PRECISION": "fp16"}, "auto", "fp16 is for GPUs; .* \\(precision from ACCELERATE_MIXED_"),
    ({"ACCELERATE_MIXED_PRECISION": "fp8"}, "auto", "accelerate's mixed precision 'fp8' .* is not one tagtune trains"),
    ({}, "fp16", "fp16 is for GPUs; .* \\(precision from runtime.precision\\)"),
])
def test_a_precision_this_device_cannot_run_names_where_it_came_from(env, recipe, message, tmp_path):
    with pytest.raises(TrainConfigError, match=message):
        _precision(recipe, env, tmp_path / "none.yaml")


def test_trackers_for_report_to(monkeypatch):
    import accelerate.utils

    from tagtune.train.accel import trackers

    assert trackers("none") == []
    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: True)
    assert trackers("auto") == ["tensorboard"] and trackers("tensorboard") == ["tensorboard"]
    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: False)
    assert trackers("auto") == []  # without the extra, metrics stay in metrics.jsonl/csv
    with pytest.raises(TrainConfigError, match="'tensorboard', but tensorboard is not installed"):
        trackers("tensorboard")
    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    with pytest.raises(TrainConfigError, match=r"pip install 'tagtune\[wandb\]'"):
        trackers("wandb")
    with pytest.raises(TrainConfigError, match="runtime.report_to must be one of"):
        TrainConfig.from_dict({"runtime": {"report_to": "mlflow"}})


def test_dotted_settings_apply_and_unknown_keys_are_named():
    cfg = TrainConfig().with_settings({"optim.lr": 3e-4, "lora.layers": [0], "seed": 3, "runtime.report_to": "none"})
    assert (cfg.optim.lr, cfg.lora.layers, cfg.seed, cfg.runtime.report_to) == (3e-4, [0], 3, "none")
    known = "known in runtime: base_weights, device,"
    with pytest.raises(TrainConfigError, match=f"unknown recipe key 'runtime.reportto'; {known}"):
        TrainConfig().with_settings({"runtime.reportto": "none"})
    with pytest.raises(TrainConfigError, match="optim.lr is not a section"):
        TrainConfig().with_settings({"optim.lr.x": 1})


def test_recipe_from_plain_values(tmp_path):
    from tagtune.folders import shipped_recipe
    from tagtune.train.config import TrainConfig

    shipped = TrainConfig.from_yaml(shipped_recipe())
    assert TrainConfig.of() == shipped and TrainConfig.of(str(shipped_recipe())) == shipped
    assert TrainConfig.of(shipped, max_steps=7).schedule.max_steps == 7 and shipped.schedule.max_steps is None
    assert TrainConfig.of({"seed": 3, "lora": {"rank": 4}}, lr=1e-4).to_dict() == TrainConfig.from_dict(
        {"seed": 3, "lora": {"rank": 4}, "optim": {"lr": 1e-4}}).to_dict()
