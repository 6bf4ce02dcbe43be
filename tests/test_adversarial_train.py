"""Adversarial use of `tagtune train`: bad input is one line and exit 2, nothing already written changes, and
a run killed at any moment resumes to exactly the weights of a run that was never interrupted."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import signal
import traceback
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tagtune.cli import EXIT_USER_ERROR, main
from train_fixtures import RUN_CONFIG

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------------------------ helpers


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path -> sha256 (empty when the folder does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli_error(capsys, args: list[str]) -> str:
    """Run ``tagtune ARGS``; it must exit 2 and end stderr with exactly one error line (no traceback)."""
    code = main(args)
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR, err[-2000:]
    assert "Traceback" not in err
    lines = err.rstrip("\n").splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith(f"tagtune {args[0]}: error: ")]
    assert errors == [len(lines) - 1], err[-2000:]  # one error line, and nothing after it
    return lines[-1]


def _write_recipe(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


@pytest.fixture()
def recipe(tmp_path) -> Path:
    """RUN_CONFIG as a YAML file: the recipe of ``trained_run``."""
    return _write_recipe(tmp_path / "recipe.yaml", RUN_CONFIG)


@pytest.fixture()
def data_copy(tiny_data, tmp_path) -> Path:
    """A private copy of the prepared tiny corpus (the session's one is shared)."""
    return Path(shutil.copytree(tiny_data, tmp_path / "data"))


@pytest.fixture()
def run_copy(trained_run, tmp_path) -> Path:
    """A private copy of the finished 8-step run (checkpoints step-000004 and step-000008)."""
    return Path(shutil.copytree(trained_run[0], tmp_path / "run"))


def _base_copy(base_dir: Path, dst: Path, data_dir: Path) -> Path:
    """A copy of the base model, which ``data_dir``'s manifest now names (its recorded hash kept)."""
    shutil.copytree(base_dir, dst)
    manifest_path = data_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["base_checkpoint"]["dir"] = str(dst.resolve())
    manifest_path.write_text(json.dumps(manifest))
    return dst


# ------------------------------------------------------------------------------------------------ recipes

BAD_RECIPES = [
    ("quoted number", "optim: {lr: '1e-4'}\n", "bad.yaml: optim.lr must be a number, got '1e-4' (str)"),
    ("string batch", {"batch": {"batch_size": "8"}}, "bad.yaml: batch.batch_size must be an integer, got '8' (str)"),
    ("list recipe", [{"lora": {"rank": 4}}], "bad.yaml: a recipe must be a mapping of sections"),
    ("layers out of range", {"lora": {"layers": [99]}}, "lora.layers [99] out of range: the model has "),
    ("unknown target", {"lora": {"targets": ["attn.q_proj", "c_proj"]}},
     "lora.targets ['attn.q_proj'] name no layer of the GPT-2 blocks; the blocks have attn.c_attn, attn.c_proj, "
     "mlp.c_fc, mlp.c_proj"),
    ("bool rank", {"lora": {"rank": True}}, "lora.rank must be an integer, got True (bool)"),
    ("section not a mapping", {"lora": [4]}, "lora must be a mapping, got [4] (list)"),
]


@pytest.mark.parametrize("name, data, message", BAD_RECIPES, ids=[b[0] for b in BAD_RECIPES])
def test_bad_recipe_is_one_line_naming_the_key(name, data, message, tiny_data, tmp_path, capsys):
    """Case 3 (recipes): wrong types, a list instead of a mapping, lora.layers out of range and unknown
    lora.targets give exit 2 and one line naming the key; no run folder is created."""
    config = _write_recipe(tmp_path / "bad.yaml", RUN_CONFIG | data if isinstance(data, dict) else data)
    line = _cli_error(capsys, ["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"),
                               "--config", str(config)])
    assert message in line
    assert not (tmp_path / "run").exists()


def test_unquoted_exponent_is_a_number_and_flags_are_named(tiny_data, tmp_path, capsys):
    """Case 3 (recipes): `lr: 1e-4` (a string to PyYAML's YAML 1.1) reads as the number it is; an override
    that breaks a rule names the key and the flag that set it."""
    from tagtune.train.config import TrainConfig, TrainConfigError

    config = _write_recipe(tmp_path / "r.yaml", "optim:\n  lr: 1e-4\n  eps: 5E-9\nlora: {alpha: -2.5e+1}\n")
    with pytest.raises(TrainConfigError, match="r.yaml: lora.alpha must be > 0, got -25.0"):
        TrainConfig.from_yaml(config)
    config.write_text("optim:\n  lr: 1e-4\n  eps: 5E-9\n")
    cfg = TrainConfig.from_yaml(config)
    assert (cfg.optim.lr, cfg.optim.eps) == (1e-4, 5e-9) and isinstance(cfg.optim.lr, float)
    line = _cli_error(capsys, ["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"),
                               "--config", str(config), "--batch-size", "0"])
    assert line.endswith("error: batch.batch_size must be >= 1, got 0 (set by --batch-size)")
    assert not (tmp_path / "run").exists()


def test_python_object_yaml_recipe_is_refused(tiny_data, tmp_path, capsys):
    """Held already: a recipe with `!!python/object/apply:os.system` is refused, and never runs the command."""
    marker = tmp_path / "pwned"
    config = _write_recipe(tmp_path / "evil.yaml", f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    line = _cli_error(capsys, ["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"),
                               "--config", str(config)])
    assert "evil.yaml: refused at line 1" in line and "python/object/apply:os.system" in line
    assert not marker.exists() and not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------- the data folder


def _strip_tags(data: Path, base_dir: Path) -> None:
    shutil.copy(base_dir / "bpe.model", data / "bpe.model")  # the base's: no tag pieces


def _truncate_shard(data: Path, base_dir: Path) -> None:
    shard = data / "shards" / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def _garbage_bpe(data: Path, base_dir: Path) -> None:
    (data / "bpe.model").write_bytes(b"\x08\x01garbage" * 40)


def _empty_bpe(data: Path, base_dir: Path) -> None:
    (data / "bpe.model").write_bytes(b"")


def _changed_base(data: Path, base_dir: Path) -> None:
    base = _base_copy(base_dir, data.parent / "base", data)
    state = torch.load(base / "gpt.pth", weights_only=True)
    state["final_norm.weight"] = state["final_norm.weight"] + 1.0
    torch.save(state, base / "gpt.pth")


def _base_config(key: str, value):
    def damage(data: Path, base_dir: Path) -> None:
        base = _base_copy(base_dir, data.parent / "base", data)
        cfg = yaml.safe_load((base / "config.yaml").read_text())
        cfg["gpt"][key] = value
        (base / "config.yaml").write_text(yaml.safe_dump(cfg))
    return damage


BAD_DATA = [
    ("bpe without tag pieces", _strip_tags, r"bpe.model: has no piece ▁<LAUGHS> for tag <laughs> \(the data was "
                                            r"encoded with it at id {vocab}\)"),
    ("base changed", _changed_base, r"base: fingerprint \w+ differs from \w+ recorded in .*manifest.json "
                                    r"\(base_checkpoint.hash\)"),
    ("truncated shard", _truncate_shard, r"shard-00001.safetensors: unreadable shard \(truncated or corrupt\?"),
    ("garbage bpe", _garbage_bpe, r"bpe.model: not a sentencepiece model"),
    ("empty bpe", _empty_bpe, r"bpe.model: empty file, not a sentencepiece model"),
    ("heads 0", _base_config("heads", 0), r"base/config.yaml: gpt.heads must be >= 1, got 0"),
    ("layers four", _base_config("layers", "four"), r"base/config.yaml: gpt.layers must be an integer, got 'four'"),
]


@pytest.mark.parametrize("name, damage, message", BAD_DATA, ids=[b[0] for b in BAD_DATA])
def test_bad_data_folder_is_refused_before_the_run_folder_exists(name, damage, message, data_copy, shipped_base,
                                                                 recipe, tmp_path, capsys):
    """Cases 2 and 3 (data): a bpe.model without the tag pieces, a changed base model (recorded fingerprint), a
    truncated shard, a garbage or empty bpe.model, and a base config.yaml with heads: 0 or layers: four are
    refused in one line naming the file, before any run folder is created; the data folder is unchanged."""
    import re

    from tagtune.checkpoint import read_config

    damage(data_copy, shipped_base)
    before = _snapshot(tmp_path)
    line = _cli_error(capsys, ["train", "--data", str(data_copy), "--out", str(tmp_path / "run"),
                               "--config", str(recipe)])
    vocab = read_config(shipped_base).gpt.number_text_tokens  # the first tag's id
    assert re.search(message.replace("{vocab}", str(vocab)), line), line
    assert not (tmp_path / "run").exists()
    assert _snapshot(tmp_path) == before


BAD_MODEL_CONFIGS = [
    (("gpt", "heads"), 0, "gpt.heads must be >= 1, got 0"),
    (("gpt", "layers"), "four", "gpt.layers must be an integer, got 'four' (str)"),
    (("gpt", "condition_module", "attention_heads"), 0, "gpt.condition_module.attention_heads must be >= 1, got 0"),
    (("bigvgan", "upsample_rates"), "4,4", "bigvgan.upsample_rates must be a list of integers, got '4,4' (str)"),
    (("dataset", "mel", "normalize"), "no", "dataset.mel.normalize must be true or false, got 'no' (str)"),
    (("vqvae", "num_tokens"), 12.5, "vqvae.num_tokens must be an integer, got 12.5 (float)"),
    (("gpt",), [64], "gpt must be a mapping, got [64] (list)"),
]


@pytest.mark.parametrize("keys, value, message", BAD_MODEL_CONFIGS, ids=[".".join(b[0]) for b in BAD_MODEL_CONFIGS])
def test_bad_model_config_names_the_key_and_file(keys, value, message, shipped_base, tmp_path):
    """Case 3 (model config.yaml): a wrong type or a zero size is one CheckpointError line naming the file and
    the key (ModelConfig checks every field against its annotation), and the folder is left as it was."""
    from tagtune.checkpoint import CheckpointError, read_config

    model = Path(shutil.copytree(shipped_base, tmp_path / "model"))
    cfg = yaml.safe_load((model / "config.yaml").read_text())
    node = cfg
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    (model / "config.yaml").write_text(yaml.safe_dump(cfg))
    before = _snapshot(model)
    with pytest.raises(CheckpointError) as e:
        read_config(model)
    assert str(e.value) == f"{model / 'config.yaml'}: {message}"
    assert _snapshot(model) == before


def test_fresh_run_into_an_existing_run_is_refused(run_copy, tiny_data, recipe, capsys):
    """Bad input: a new run into a folder that holds one is refused (the CLI names --resume and --out) and the
    earlier run is left byte-identical."""
    before = _snapshot(run_copy)
    line = _cli_error(capsys, ["train", "--data", str(tiny_data), "--out", str(run_copy), "--config", str(recipe)])
    assert line.endswith("already holds a run; resume it or choose another output folder (--resume continues it; "
                         "--out names another)")
    assert _snapshot(run_copy) == before


def test_malicious_pickle_as_gpt_pth_is_refused(data_copy, shipped_base, recipe, tmp_path, capsys):
    """Held already: a gpt.pth whose unpickling would run code is refused (weights_only), with exit 2, even when
    the data folder records that file's hash; the code never runs."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    base = data_copy.parent / "base"
    shutil.copytree(shipped_base, base)
    (base / "gpt.pth").write_bytes(pickle.dumps(Payload(), protocol=2))
    _base_copy_manifest(data_copy, base)
    line = _cli_error(capsys, ["train", "--data", str(data_copy), "--out", str(tmp_path / "run"),
                               "--config", str(recipe)])
    assert "gpt.pth: refused" in line
    assert not marker.exists() and not (tmp_path / "run").exists()


def _base_copy_manifest(data_dir: Path, base: Path) -> None:
    from tagtune.checkpoint import folder_fingerprint

    manifest = json.loads((data_dir / "manifest.json").read_text())
    manifest["base_checkpoint"] = {"dir": str(base.resolve()), "hash": folder_fingerprint(base)}
    (data_dir / "manifest.json").write_text(json.dumps(manifest))


# --------------------------------------------------------------------------------------------- resuming


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BAD_RESUMES = [
    ("truncated state.json", lambda run: _truncate(run / "checkpoints/step-000008/state.json"), [],
     r"checkpoints/step-000008/state.json: unreadable \(truncated or corrupt\?.*\); delete .*step-000008 to "
     r"resume from step-000004"),
    ("missing rng", lambda run: (run / "checkpoints/step-000008/rng-0.safetensors").unlink(), [],
     r"step-000008/rng-0.safetensors: missing"),
    ("truncated state tensors", lambda run: _truncate(run / "checkpoints/step-000008/state.safetensors"), [],
     r"step-000008/state.safetensors: not a readable safetensors file"),
    ("another rank", lambda run: None, ["--rank", "8"],
     r"train_config.yaml: the run trained with lora.rank 4, the recipe now says 8.* \(set by --rank\)"),
    ("damaged metrics", lambda run: (run / "metrics.jsonl").write_text("garbage\n" + (run / "metrics.jsonl")
                                                                       .read_text()), [],
     r"metrics.jsonl: line 1 is not a metrics record"),
    ("truncated run.json", lambda run: _truncate(run / "run.json"), [], r"run.json: invalid JSON"),
]


@pytest.mark.parametrize("name, damage, flags, message", BAD_RESUMES, ids=[b[0] for b in BAD_RESUMES])
def test_bad_resume_is_one_line_and_changes_nothing(name, damage, flags, message, run_copy, tiny_data, recipe,
                                                    capsys):
    """Case 3 (resume): a truncated state.json, a missing rng-0.safetensors, a truncated state.safetensors, a
    resume with another lora.rank (--rank), a damaged metrics.jsonl and a truncated run.json: exit 2, one line
    naming the file, and the run folder is byte-identical afterwards."""
    import re

    damage(run_copy)
    before = _snapshot(run_copy)
    line = _cli_error(capsys, ["train", "--data", str(tiny_data), "--out", str(run_copy), "--config", str(recipe),
                               "--resume", *flags])
    assert re.search(message, line), line
    assert _snapshot(run_copy) == before


POINTER_DAMAGE = [
    ("LATEST missing", lambda run: (run / "checkpoints/LATEST").unlink(), 8),
    ("LATEST corrupt", lambda run: (run / "checkpoints/LATEST").write_bytes(b"\xff\x00../../etc"), 8),
    ("newest state.json missing", lambda run: (run / "checkpoints/step-000008/state.json").unlink(), 4),
]


@pytest.mark.parametrize("name, damage, step", POINTER_DAMAGE, ids=[p[0] for p in POINTER_DAMAGE])
def test_resume_finds_the_newest_complete_checkpoint(name, damage, step, run_copy, tiny_data, caplog):
    """Case 1: with LATEST missing or corrupt, or the newest checkpoint lacking state.json, --resume continues
    from the newest complete step folder (scanned), not from step 0; what it does not redo stays as it was."""
    from tagtune.train import train
    from tagtune.train.config import TrainConfig

    damage(run_copy)
    kept = _snapshot(run_copy / "checkpoints" / f"step-{step:06d}")
    lines = (run_copy / "metrics.jsonl").read_text().splitlines()
    with caplog.at_level(logging.INFO):
        result = train(tiny_data, run_copy, TrainConfig.from_dict(RUN_CONFIG), resume=True)
    assert f"from step {step}" in caplog.text and "starting from step 0" not in caplog.text
    assert result.steps == 8
    # metric lines up to the restored step are kept byte for byte (a rerun would differ in positions_per_s)
    old = [x for x in lines if json.loads(x)["step"] <= step]
    assert (run_copy / "metrics.jsonl").read_text().splitlines()[: len(old)] == old
    if step == 8:
        assert _snapshot(run_copy / "checkpoints" / "step-000008") == kept
    assert (run_copy / "checkpoints" / "LATEST").read_text() == "step-000008"


def test_resume_sweeps_what_killed_runs_left(run_copy, tiny_data):
    """Case 4: temporary files (metrics, checkpoint files), checkpoint staging folders and publish staging
    folders left by killed processes are removed when a run resumes; complete files are untouched."""
    from tagtune.train import train
    from tagtune.train.config import TrainConfig

    dead = 2 ** 22 + 12345  # above Linux's largest pid: never a live process
    litter = [run_copy / ".metrics.csv.abc123.tmp", run_copy / ".metrics.jsonl.x.tmp",
              run_copy / "checkpoints" / "step-000008" / ".state.json.q.tmp",
              run_copy / "checkpoints" / ".step-000012.tmp" / "rng-0.safetensors",
              run_copy / f".best.staging-{dead}" / "adapter_model.safetensors"]
    for path in litter:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    kept = {d: _snapshot(run_copy / d) for d in ("checkpoints/step-000004", "best")}
    train(tiny_data, run_copy, TrainConfig.from_dict(RUN_CONFIG), resume=True)
    assert not any(p.exists() for p in litter)
    assert not (run_copy / "checkpoints" / ".step-000012.tmp").exists()
    assert not (run_copy / f".best.staging-{dead}").exists()
    assert {d: _snapshot(run_copy / d) for d in kept} == kept


# ----------------------------------------------------------------------------------- SIGKILL and resume

KILL_CONFIG = json.loads(json.dumps(RUN_CONFIG))
KILL_CONFIG["model"]["dropout"] = KILL_CONFIG["lora"]["dropout"] = 0.1  # the RNG state must be restored too
KILL_CONFIG["schedule"]["max_steps"] = 6
KILL_CONFIG["eval"] |= {"every_steps": 2, "save_every_steps": 2, "keep_last": 3}

# (name, what to intercept, file name or None, occurrence, step the resumed run continues from): the process
# kills itself at that moment
KILL_POINTS = [
    ("right after start", "replace", "tag_init.safetensors", 1, 0),  # run.json written, nothing trained
    ("during a step", "loss", None, 3, 2),  # step 3's forward is done, its backward not
    ("during checkpoint writing", "replace", "state.json", 2, 2),  # step 4 staged, not yet renamed
    ("before LATEST moves", "replace", "LATEST", 2, 4),  # step-000004 complete, LATEST still says step-000002
    ("during best/ publishing", "replace", "best", 2, 2),  # the old best/ moved aside, the new one not in place
    ("during metrics write", "replace", "metrics.csv", 2, 0),  # a metrics temp file written, not renamed
]


def _arm(kind: str, target: str | None, nth: int) -> None:
    """In the child: SIGKILL this process at the ``nth`` rename onto ``target`` or the ``nth`` training loss."""
    from tagtune.train import loop

    seen = [0]

    def tripwire():
        seen[0] += 1
        if seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    if kind == "replace":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if Path(dst).name == target:
                tripwire()
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
    else:
        real_combine = loop.combine

        def combine(*args, **kwargs):
            tripwire()
            return real_combine(*args, **kwargs)

        loop.combine = combine


def _forked_train(data: Path, out: Path, resume: bool, kill: tuple | None = None) -> int:
    """Train in a forked child (the imports are already paid for); its exit code, -9 when it was killed."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            from tagtune.train import metrics, train
            from tagtune.train.config import TrainConfig

            metrics._plot = lambda records: None  # the PNG costs ~0.5 s a validation and is no part of the weights
            if kill is not None:
                _arm(*kill)
            train(data, out, TrainConfig.from_dict(KILL_CONFIG), resume=resume)
            code = 0
        except BaseException:  # noqa: BLE001 - reported by the parent through the exit code
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert _forked_train(tiny_data, out, resume=False) == 0
    return out


def _records(run: Path) -> list[tuple]:
    return [(r["kind"], r["step"], r.get("loss")) for r in map(json.loads, (run / "metrics.jsonl").read_text()
                                                              .splitlines())]


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def _killed_as_planned(name: str, run: Path) -> None:
    """Check that the kill left the run folder in the state the kill point names."""
    ckpt = run / "checkpoints"
    if name == "right after start":
        assert (run / "run.json").is_file() and not (run / "tag_init.safetensors").exists()
    elif name == "during a step":
        assert (ckpt / "LATEST").read_text() == "step-000002" and not (ckpt / "step-000004").exists()
    elif name == "during checkpoint writing":
        assert list(ckpt.glob(".step-000004.tmp/.state.json.*.tmp")) and not (ckpt / "step-000004").exists()
    elif name == "before LATEST moves":
        assert (ckpt / "LATEST").read_text() == "step-000002" and (ckpt / "step-000004" / "state.json").is_file()
    elif name == "during best/ publishing":
        assert not (run / "best").exists() and list(run.glob(".best.old-*")) and list(run.glob(".best.staging-*"))
    elif name == "during metrics write":
        assert list(run.glob(".metrics.csv.*.tmp"))
        with open(run / "metrics.jsonl", "a") as f:  # and a kill inside an append leaves half a line
            f.write('{"kind": "train", "step": 3, "lo')


@pytest.mark.parametrize("name, kind, target, nth, resumes_at", KILL_POINTS, ids=[k[0] for k in KILL_POINTS])
def test_sigkill_then_resume_equals_an_uninterrupted_run(name, kind, target, nth, resumes_at, uninterrupted,
                                                         tiny_data, tmp_path):
    """Held already, and cases 1 and 4: SIGKILL right after start, during a step, during checkpoint writing,
    before LATEST moves, during best/ publishing and during a metrics write; --resume continues from the newest
    complete checkpoint and ends with bit-identical best/ and last/ weights and the same metric lines as an
    uninterrupted run, and no temporary file or staging folder is left."""
    run = tmp_path / "run"
    assert _forked_train(tiny_data, run, resume=False, kill=(kind, target, nth)) == -signal.SIGKILL
    _killed_as_planned(name, run)
    kept = [x for x in (run / "metrics.jsonl").read_text().splitlines() if x.endswith("}")
            and 0 < json.loads(x)["step"] <= resumes_at]
    assert _forked_train(tiny_data, run, resume=True) == 0
    # lines up to the restored step are the killed run's own, byte for byte (a rerun differs in positions_per_s)
    assert [x for x in (run / "metrics.jsonl").read_text().splitlines() if 0 < json.loads(x)["step"] <= resumes_at] \
        == kept
    for folder in ("best", "last"):
        a, b = _adapter(uninterrupted / folder), _adapter(run / folder)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), folder
    assert _records(run) == _records(uninterrupted)
    assert (run / "checkpoints" / "LATEST").read_text() == "step-000006"
    leftovers = [p for p in run.rglob(".*") if p.name.endswith(".tmp") or ".staging-" in p.name or ".old-" in p.name]
    assert leftovers == []
