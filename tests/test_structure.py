"""The package's shape: layers point one way, the library never loads the training recipe, the public face works.

The rules checked here are the ones docs/architecture.md states.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import tagtune
from tagtune.folders import shipped_base

PACKAGE = Path(tagtune.__file__).parent
README = PACKAGE.parents[1] / "README.md"
# Modules allowed to import the training package: training itself and the entry points above every stage.
TRAINING_IMPORTERS = ("train/", "cli.py", "demo.py")
ABOVE_FOUNDATIONS = ("tagtune.models", "tagtune.generation", "tagtune.checkpoint", "tagtune.lora", "tagtune.tags.rows",
                     "tagtune.loaders", "tagtune.synthesis", "tagtune.evaluate", "tagtune.data", "tagtune.train",
                     "tagtune.serve")
# Lower layers never import these higher ones (module prefix -> forbidden prefixes).
LAYERS = {
    "text": ("tagtune.models", "tagtune.checkpoint", "tagtune.lora", "tagtune.tags.rows", "tagtune.tags.neutral",
             "tagtune.loaders", "tagtune.synthesis", "tagtune.evaluate", "tagtune.data", "tagtune.train",
             "tagtune.serve"),
    "models": ("tagtune.checkpoint", "tagtune.lora", "tagtune.tags", "tagtune.loaders", "tagtune.synthesis",
               "tagtune.evaluate", "tagtune.data", "tagtune.train", "tagtune.generation", "tagtune.serve"),
    "generation": ("tagtune.checkpoint", "tagtune.lora", "tagtune.tags", "tagtune.loaders", "tagtune.synthesis",
                   "tagtune.evaluate", "tagtune.data", "tagtune.train", "tagtune.serve"),
    "checkpoint.py": ("tagtune.lora", "tagtune.tags", "tagtune.loaders", "tagtune.synthesis", "tagtune.evaluate",
                      "tagtune.data", "tagtune.train", "tagtune.serve"),
    "lora.py": ("tagtune.tags", "tagtune.loaders", "tagtune.synthesis", "tagtune.evaluate", "tagtune.data",
                "tagtune.train", "tagtune.serve"),
    "tags": ("tagtune.loaders", "tagtune.synthesis", "tagtune.evaluate", "tagtune.data", "tagtune.train",
             "tagtune.serve"),
    "loaders.py": ("tagtune.synthesis", "tagtune.evaluate", "tagtune.data", "tagtune.train", "tagtune.serve"),
    "synthesis": ("tagtune.evaluate", "tagtune.data", "tagtune.train", "tagtune.serve"),
    "evaluate": ("tagtune.synthesis", "tagtune.train", "tagtune.serve"),
    "data": ("tagtune.synthesis", "tagtune.evaluate", "tagtune.train", "tagtune.serve"),
    "serve": ("tagtune.evaluate", "tagtune.data", "tagtune.train"),
    # foundations
    "audio_v2.py": ABOVE_FOUNDATIONS,
    "devices.py": ABOVE_FOUNDATIONS,
    "allocator.py": ABOVE_FOUNDATIONS,
}


def _imports(path: Path) -> list[str]:
    """Every module a source file imports (at any depth: lazy imports inside functions count too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import (the package uses absolute imports)"
            found += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return found


def _sources() -> list[tuple[str, Path]]:
    return [(p.relative_to(PACKAGE).as_posix(), p) for p in sorted(PACKAGE.rglob("*.py"))]


def test_only_training_and_entry_points_import_the_training_package():
    offenders = [(rel, m) for rel, p in _sources() if not rel.startswith(TRAINING_IMPORTERS)
                 for m in _imports(p) if m == "tagtune.train" or m.startswith("tagtune.train.")]
    assert offenders == []


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layers_never_import_upwards(layer):
    offenders = [(rel, m) for rel, p in _sources() if rel == layer or rel.startswith(layer + "/")
                 for m in _imports(p) if m.startswith(LAYERS[layer])]
    assert offenders == []


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_synthesis_and_evaluation_load_no_training_module():
    loaded = _loaded_after("import tagtune.synthesis, tagtune.evaluate, tagtune.loaders, tagtune.tags.rows")
    assert not [m for m in loaded if m == "tagtune.train" or m.startswith("tagtune.train.")]
    assert "tagtune.synthesis.tts" in loaded and "tagtune.evaluate.run" in loaded  # the statement did run


def test_text_and_tag_vocabulary_are_pure_python():
    loaded = _loaded_after("import tagtune, tagtune.text, tagtune.tags")
    assert "torch" not in loaded
    assert {"tagtune.text.tokenizer", "tagtune.tags.vocab", "tagtune.tags.scan"} <= loaded


def test_tag_init_names_are_defined_once():
    from tagtune.tags.rows import FORMULA_INITS, TAG_INITS
    from tagtune.train.config import LoraSettings

    assert set(FORMULA_INITS) < set(TAG_INITS)
    for name in TAG_INITS:
        assert LoraSettings(tag_init=name).tag_init == name
    spelled = [rel for rel, p in _sources() if re.search(r"\(\s*\"mean\",\s*\"words\"", p.read_text())]
    assert spelled == ["tags/rows.py"]


def test_public_face_lists_what_it_offers():
    for name in tagtune.__all__:
        assert getattr(tagtune, name) is not None
    with pytest.raises(AttributeError):
        tagtune.no_such_thing  # noqa: B018


def _readme_python() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1, "the README has one Python example"
    return blocks[0]


def test_readme_python_example_runs_verbatim(tmp_path, monkeypatch):
    """The README's Python example, as written, on the shipped tiny base (folders named as the README names
    them: the base as IndexTTS-1.5, a copy grown with <sighs> as IndexTTS-1.5-tags)."""
    from tagtune.tags.add import add_tags

    code = _readme_python()
    base = tmp_path / "IndexTTS-1.5"
    base.symlink_to(shipped_base(), target_is_directory=True)
    add_tags(base, ["<sighs>"], tmp_path / "IndexTTS-1.5-tags")
    t = np.arange(int(2.5 * 24000)) / 24000
    sf.write(tmp_path / "voice.wav", (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))) / 2,
             24000)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102 - the README's own example
    out = scope["out"]
    assert out.sample_rate == 24000 and len(out.audio) > 0 and out.audio.dtype == np.int16
    assert scope["m"].config.gpt.number_text_tokens == scope["tts"].gpt.cfg.number_text_tokens - 1
    written = [p for p in tmp_path.glob("*.wav") if p.name != "voice.wav"]
    for path in written:
        data, rate = sf.read(path, dtype="int16")
        assert rate == 24000 and np.array_equal(data, out.audio)


def test_public_calls_survive_importing_their_stage_modules():
    import tagtune.evaluate
    import tagtune.export
    import tagtune.train  # noqa: F401

    homes = {"prepare": "tagtune.api", "train": "tagtune.train.loop", "export": "tagtune.api",
             "evaluate": "tagtune.api"}
    for name, home in homes.items():
        assert callable(getattr(tagtune, name)) and getattr(tagtune, name).__module__ == home
    from tagtune.train import loop

    assert loop.__name__ == "tagtune.train.loop"


def test_public_calls_export_and_load_a_run(trained_run, tmp_path):
    """``tagtune.export`` then ``tagtune.load_model(base, adapter=...)``, as a notebook would."""
    run_dir, _ = trained_run
    out = tagtune.export(run_dir, tmp_path / "adapter", adapter_only=True)
    info = tagtune.load_model(shipped_base(), adapter=out)
    assert info.tagset is not None and info.tagset.tags
    assert info.config.gpt.number_text_tokens == tagtune.load_model(shipped_base()).config.gpt.number_text_tokens \
        + len(info.tagset.tags)
    info.check_vocabulary()
