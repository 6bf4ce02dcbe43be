"""Measure what each training option does for transfer (the table of docs/transfer.md).

    python scripts/transfer_options.py --demo tagtune-demo --out transfer-options [--variants a,b] [--seed 0]

Reuses a finished ``tagtune demo`` folder (its fine-tune, transfer and replay data), trains one run per variant
with the demo recipe and the demo's steps, exports it and evaluates it with the transfer set (decoded as the demo
decodes: its tag guidance, anchored to the base for 1.x), then writes
``table.md`` and ``table.json`` in ``--out``: per variant the fine-tune voice's numbers, the transfer ratio,
false events, untagged NLL ratio and speaker-similarity drop per condition, and how many checks fail.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tagtune.demo import DemoSettings, transfer_arguments
from tagtune.evaluate.transfer import CONDITIONS
from tagtune.folders import shipped_base, shipped_recipe

# variant -> (recipe settings, prepare settings of the fine-tune data, share of Chinese in a replay corpus made
# for the variant or None for the demo's own); "default" is the demo's own recipe
VARIANTS = {
    "default": ({}, {}, None),
    "no-replay": ({"replay.data": None}, {}, None),
    "replay-0.3": ({"replay.fraction": 0.3}, {}, None),
    "replay-0.5": ({"replay.fraction": 0.5}, {}, None),
    "replay-base-kl-1": ({"replay.base_kl": 1.0}, {}, None),
    "replay-base-kl-0.3": ({"replay.base_kl": 0.3}, {}, None),
    "replay-english": ({}, {}, 0.0),
    "replay-zh-0.2": ({}, {}, 0.2),
    "replay-events-0.5": ({"replay.events": 0.5}, {}, None),
    "replay-events-0.75": ({"replay.events": 0.75}, {}, None),
    "event-cuts-0.5": ({"augment.event_cuts": 0.5}, {}, None),
    "event-cuts-1.0": ({"augment.event_cuts": 1.0}, {}, None),
    "replay-events-0.5+cuts-0.5": ({"replay.events": 0.5, "augment.event_cuts": 0.5}, {}, None),
    "replay-events-0.25+cuts-1.0": ({"replay.events": 0.25, "augment.event_cuts": 1.0}, {}, None),
    "replay-events-0.1+cuts-1.0": ({"replay.events": 0.1, "augment.event_cuts": 1.0}, {}, None),
    "prompt-is-target": ({}, {"cond_mode": "self"}, None),
    "rank-4": ({"lora.rank": 4, "lora.alpha": 8}, {}, None),
    "last-2-layers": ({"lora.layers": [2, 3]}, {}, None),
    "train-conditioning": ({"lora.train_conditioning": True}, {}, None),
    "train-conditioning+cuts-0.5": ({"lora.train_conditioning": True, "augment.event_cuts": 0.5}, {}, None),
    "train-conditioning+replay-events-0.5+cuts-0.5": ({"lora.train_conditioning": True, "replay.events": 0.5,
                                                       "augment.event_cuts": 0.5}, {}, None),
    "train-conditioning+replay-events-0.25+cuts-1.0": ({"lora.train_conditioning": True, "replay.events": 0.25,
                                                        "augment.event_cuts": 1.0}, {}, None),
    "train-conditioning+replay-event-pairs-0.5+cuts-0.5": ({"lora.train_conditioning": True, "replay.events": 0.5,
                                                            "replay.event_pairs": True, "augment.event_cuts": 0.5},
                                                           {}, None),
    "replay-events-at-end-0.8": ({"replay.events_at_end": 0.8}, {}, None),
    "onset-4x3": ({"loss.onset_weight": 4.0, "loss.onset_codes": 3}, {}, None),
    "replay-event-pairs-0.5+cuts-0.5": ({"replay.events": 0.5, "replay.event_pairs": True,
                                         "augment.event_cuts": 0.5}, {}, None),
}


def _data_for(demo: Path, out: Path, prep: dict, seed: int, val_fraction: float) -> Path:
    if not prep:
        return demo / "data"
    from tagtune.data.for_model import prepare_for_model

    folder = out / ("data-" + "-".join(f"{k}-{v}" for k, v in prep.items()))
    if not (folder / "manifest.json").is_file():
        prepare_for_model(shipped_base(), str(demo / "corpus"), folder, tags="auto", progress=False, seed=seed,
                          val_fraction=val_fraction, **prep)
    return folder


def _replay(out: Path, s: DemoSettings, chinese: float) -> Path:
    """A replay corpus like the demo's (as many untagged clips of the same voices) with another share of Chinese."""
    from tagtune.data.for_model import prepare_for_model
    from tagtune.demo import CORPUS_SEEDS, DEMO_TAGS
    from tagtune.synthetic import generate_corpus
    from tagtune.synthetic.voices import PRETRAIN, resolve_engine, voices_with

    folder = out / f"replay-zh-{chinese}"
    if not (folder / "manifest.json").is_file():
        engine = resolve_engine("auto")
        generate_corpus(out / f"{folder.name}-corpus", n_clips=s.replay_clips, seed=s.seed + CORPUS_SEEDS["replay"],
                        tags=DEMO_TAGS, untagged_fraction=1.0, voices=voices_with(PRETRAIN, engine), engine=engine,
                        chinese_fraction=chinese)
        prepare_for_model(shipped_base(), str(out / f"{folder.name}-corpus"), folder, tags="auto", progress=False,
                          seed=s.seed, val_fraction=0.0)
    return folder


def run_variant(name: str, demo: Path, out: Path, s: DemoSettings) -> dict:
    from tagtune.evaluate import evaluate
    from tagtune.export import export
    from tagtune.train import train
    from tagtune.train.config import TrainConfig

    recipe, prep, chinese = VARIANTS[name]
    started = time.perf_counter()
    data = _data_for(demo, out, prep, s.seed, s.val_fraction)
    replay = demo / "replay" if chinese is None else _replay(out, s, chinese)
    settings = {"replay.data": str(replay), "replay.fraction": s.replay_fraction, **recipe}
    if settings["replay.data"] is None:
        settings.pop("replay.fraction")
    cfg = TrainConfig.from_yaml(shipped_recipe(s.recipe)).with_settings(settings).with_overrides(
        max_steps=s.steps, seed=s.seed)
    cfg.runtime.progress_bar = False
    folder = out / name
    train(data, folder / "run", cfg, resume=(folder / "run").exists())
    export(folder / "run", folder / "model", overwrite=True)
    report = evaluate(folder / "model", data, folder / "report", base_dir=shipped_base(), n_free=s.free_prompts,
                      seed=s.seed, tag_init=cfg.lora.tag_init, tag_seed=cfg.seed, progress=False,
                      tag_guidance=s.tag_guidance, base_anchor=s.base_anchor,
                      anchor_share=s.decoding_share, **transfer_arguments(demo, s))
    return row(name, report, time.perf_counter() - started)


def row(name: str, report: dict, seconds: float) -> dict:
    t = report["transfer"]
    checks = report["acceptance"]["checks"]
    return {
        "variant": name, "seconds": round(seconds),
        "ft_voice_en_hit": t["ft_voice_en"]["hit_rate"]["mean"],
        "transfer_ratio": {c: t[c]["transfer_ratio"] for c in CONDITIONS if c in t},
        "false_event_rate": {c: t[c]["false_event_rate"] for c in CONDITIONS if c in t},
        "false_event_rate_by_prompt": {c: t[c].get("false_event_rate_by_prompt") for c in CONDITIONS if c in t},
        "untagged_nll_ratio": {c: t[c]["untagged_nll_ratio"] for c in CONDITIONS if c in t},
        "similarity_drop": {c: t[c]["speaker_similarity"]["drop"] for c in CONDITIONS if c in t},
        "similarity_drop_by_prompt": {c: {k: v["drop"] for k, v in t[c]["speaker_similarity"]["by_prompt"].items()}
                                      for c in CONDITIONS if c in t},
        "failed_checks": [c["name"] for c in checks if c["passed"] is False],
        "checks": len(checks),
    }


def _f(v, digits=2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def table(rows: list[dict]) -> str:
    head = ("| variant | ft EN hit | ratio unseen EN / ft ZH / unseen ZH | max false events | max NLL ratio | "
            "similarity drop unseen EN / ZH | failed checks |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratios = " / ".join(_f(r["transfer_ratio"].get(c)) for c in CONDITIONS[1:])
        drops = " / ".join(_f(r["similarity_drop"].get(c), 3) for c in ("unseen_en", "unseen_zh"))
        lines.append(f"| {r['variant']} | {_f(r['ft_voice_en_hit'])} | {ratios} | "
                     f"{_f(max(v for v in r['false_event_rate'].values() if v is not None))} | "
                     f"{_f(max(v for v in r['untagged_nll_ratio'].values() if v is not None), 3)} | {drops} | "
                     f"{len(r['failed_checks'])} of {r['checks']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=Path("tagtune-demo"), help="a finished `tagtune demo` folder")
    ap.add_argument("--out", type=Path, default=Path("transfer-options"))
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--seed", type=int, default=0, help="the demo's seed")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--steps", type=int, default=0, help="training steps (0: the demo's)")
    a = ap.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    s = DemoSettings(seed=a.seed, **({"steps": a.steps} if a.steps else {}))
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in a.variants.split(","):
        rows.append(run_variant(name, a.demo, a.out, s))
        (a.out / "table.json").write_text(json.dumps(rows, indent=1))
        (a.out / "table.md").write_text(table(rows))
        print(table(rows), flush=True)


if __name__ == "__main__":
    main()
