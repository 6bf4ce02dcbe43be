"""``tagtune demo``: the whole job on bundled defaults, on one CPU, in minutes.

synthetic tagged corpus -> prepare (shipped tiny base model) -> LoRA + tag rows -> export (official format)
-> synthesise a few tagged sentences -> evaluate base vs tuned -> summary table with the acceptance checks.
Everything is deterministic by seed and lands in one output folder.
"""

from __future__ import annotations

import json
import logging
import re
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from tagtune.folders import SAMPLE_INDEX_FILE, SAMPLE_INDEX_MD_FILE, shipped_base, shipped_recipe

log = logging.getLogger(__name__)

DEMO_TAGS = ("giggles", "laughs", "sighs")
SAMPLE_SENTENCES = (
    "Seriously? <giggles> That is the cutest thing I have ever heard!",
    "He told the joke again <laughs> and nobody could stop.",
    "Well <sighs> I suppose we have to start over.",
    "The weather is quite nice today, so we went for a walk.",
)
SLUG_WORDS = 6  # words of a sample's sentence in its file name


@dataclass
class DemoSettings:
    """Sizes of the demo; ``quick()`` is the CI-sized variant."""

    clips: int = 2600
    untagged_fraction: float = 0.5  # replay of untagged speech keeps the model from emitting events anywhere
    # 1040 validation clips (1560 train): ~170 events per tag. A reliance trial's spread is ~1-2.5 nats on
    # the untrained base, so checking its gap against +-0.3 needs a standard error well below 0.3
    val_fraction: float = 0.4
    steps: int = 1000  # a neutral tag row starts unattended: it needs more steps than a plain one (docs/tag-init.md)
    free_prompts: int = 160  # tagged validation clips generated from (every one at the default size)
    seed: int = 0
    neutral_steps: int | None = None  # steps of the neutral tag-row fit; None = the recipe's
    recipe: str = "demo.yaml"
    smoke: bool = False  # too small to judge: the report shows the numbers and judges no check

    @classmethod
    def quick(cls, seed: int = 0) -> DemoSettings:
        return cls(clips=160, val_fraction=0.2, steps=20, free_prompts=6, seed=seed, neutral_steps=30, smoke=True)


def _stage(name: str, timings: dict):
    class _Timer:
        def __enter__(self):
            log.info("demo: %s ...", name)
            self.t0 = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = round(time.perf_counter() - self.t0, 1)
            log.info("demo: %s done in %.1f s", name, timings[name])

    return _Timer()


def run_demo(out_dir: str | Path, settings: DemoSettings | None = None, base_dir: str | Path | None = None,
             progress: bool = True) -> dict:
    """Run every stage into ``out_dir``; returns the summary (also written as ``summary.json``).

    ``progress`` shows the stages' bars with ETA (prepare, train, synthesise, evaluate) on stderr when it is
    a terminal."""
    from tagtune.data.for_model import prepare_for_model
    from tagtune.evaluate import evaluate
    from tagtune.evaluate.report import attach_samples
    from tagtune.export import export
    from tagtune.synthetic import generate_corpus
    from tagtune.train import train
    from tagtune.train.config import TrainConfig

    s = settings or DemoSettings()
    out = Path(out_dir)
    base = Path(base_dir) if base_dir else shipped_base()
    t: dict[str, float] = {}
    with _stage("corpus", t):
        generate_corpus(out / "corpus", n_clips=s.clips, seed=s.seed, tags=DEMO_TAGS,
                        untagged_fraction=s.untagged_fraction, progress=progress)
    with _stage("prepare", t):
        manifest = prepare_for_model(base, str(out / "corpus"), out / "data", tags="auto", progress=progress,
                                     seed=s.seed, overwrite=True, val_fraction=s.val_fraction)
    with _stage("train", t):
        cfg = TrainConfig.from_yaml(shipped_recipe(s.recipe)).with_overrides(max_steps=s.steps, seed=s.seed,
                                                                                neutral_steps=s.neutral_steps)
        cfg.runtime.progress_bar = progress
        run = train(out / "data", out / "run", cfg, resume=(out / "run").exists())
    with _stage("export", t):
        export(out / "run", out / "model")
    with _stage("synthesise", t):
        samples = synthesise_samples(out / "model", base, out / "corpus", out / "samples", s.seed, progress)
    with _stage("evaluate", t):
        # the base's untrained tag rows are made exactly as training made the tuned model's first ones
        report = evaluate(out / "model", out / "data", out / "report", base_dir=base, n_free=s.free_prompts,
                          seed=s.seed, tag_init=cfg.lora.tag_init, tag_seed=cfg.seed, smoke=s.smoke,
                          progress=progress)
        attach_samples(report, out / "report", samples, out / "samples")
    summary = {"seed": s.seed, "settings": s.__dict__, "timings_s": t, "total_s": round(sum(t.values()), 1),
               "data": manifest["counts"] if manifest else None, "train": _run_summary(run),
               "train_config": {"tag_init": cfg.lora.tag_init, "max_steps": cfg.schedule.max_steps},
               "samples": [str(out / "samples" / e["file"]) for e in samples], "report": report,
               "acceptance": report["acceptance"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def sample_name(number: int, model: str, text: str) -> str:
    """``03-tuned-seriously-giggles-thats-the-cutest.wav``: number, model, the sentence's first words."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    words = re.findall(r"[a-z0-9]+", re.sub(r"['’]", "", ascii_text))
    return f"{number:02d}-{model}-{'-'.join(words[:SLUG_WORDS]) or 'sample'}.wav"


def synthesise_samples(model_dir: Path, base_dir: Path, corpus: Path, out: Path, seed: int,
                       progress: bool = False) -> list[dict]:
    """A few tagged sentences, tuned and base, in the voice of a corpus clip; returns the sample index.

    Files are named by sentence (``sample_name``); ``index.json`` and ``index.md`` in ``out`` list each file
    with its model, voice, text and seed.
    """
    from tqdm.auto import tqdm

    from tagtune.audio import write_wav
    from tagtune.synthesis.tts import TTS

    ref = sorted((corpus / "wavs").glob("*.wav"))[0]
    index = []
    bar = tqdm(total=2 * len(SAMPLE_SENTENCES), desc="demo: samples", unit="sample", dynamic_ncols=True,
               disable=None if progress else True)
    for model, folder, unknown in (("tuned", model_dir, "error"), ("base", base_dir, "drop")):
        tts = TTS.load(folder, unknown_tags=unknown)
        for i, text in enumerate(SAMPLE_SENTENCES):
            res = tts.synthesize(text, ref, seed=seed + i)
            bar.update(1)
            name = sample_name(i + 1, model, text)
            write_wav(out / name, res.audio, res.sample_rate)
            index.append({"file": name, "model": model, "voice": ref.relative_to(corpus.parent).as_posix(),
                          "text": text, "seed": seed + i})
    bar.close()
    index.sort(key=lambda e: e["file"])  # a sentence's tuned and base files side by side
    write_sample_index(out, index)
    return index


def write_sample_index(out: Path, index: list[dict]) -> None:
    """``index.json`` and ``index.md`` (a table linking each file) in the samples folder ``out``."""
    from tagtune.atomic import atomic_write_text
    from tagtune.evaluate.report_md import Markdown

    w = Markdown()
    rows = [[w.link(e["file"], e["file"]), e["model"], w.code(e["voice"]), w.text(e["text"]), str(e["seed"])]
            for e in index]
    atomic_write_text(out / SAMPLE_INDEX_FILE, json.dumps(index, indent=1, ensure_ascii=False))
    atomic_write_text(out / SAMPLE_INDEX_MD_FILE, "\n".join(
        w.heading("Samples", 1) + w.table(["file", "model", "voice", "text", "seed"], rows)))


def _run_summary(run) -> dict:
    return {k: getattr(run, k) for k in ("steps", "train_loss", "best_val_loss", "best_step",
                                         "base_untagged_loss", "forgetting_pct")}


def format_summary(summary: dict) -> str:
    """The table printed at the end of the demo; a smoke run says so first and last."""
    acc = summary["acceptance"]
    smoke = not acc.get("judged", True)
    lines = [f"tagtune demo (seed {summary['seed']}) in {summary['total_s']:.0f} s: "
             + ", ".join(f"{k} {v:.0f} s" for k, v in summary["timings_s"].items()), ""]
    if smoke:
        lines += ["SMOKE RUN (--quick): every stage ran, at a size too small to judge the tags; the checks below "
                  "are not judged.", ""]
    lines.append(f"{'acceptance check':<44} {'value':>8}  result")
    for c in acc["checks"]:
        shown = "-" if c["value"] is None else f"{c['value']:.3f}"
        lines.append(f"{c['name']:<44} {shown:>8}  {c['verdict']}")
    lines.append("")
    lines.append(f"samples: {len(summary['samples'])} wav files, listed in samples/{SAMPLE_INDEX_MD_FILE}; "
                 "report: report/report.md")
    if smoke:
        lines.append("smoke run finished: the pipeline works end to end; run without --quick to judge the tags")
    else:
        failed = sum(c["verdict"] == "fail" for c in acc["checks"])
        lines.append(f"acceptance: {acc['verdict']}" + (f" ({failed} of {len(acc['checks'])} checks failed)"
                                                        if failed else ""))
    return "\n".join(lines)
