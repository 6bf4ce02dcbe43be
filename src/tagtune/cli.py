"""Command line: each subcommand parses its arguments and calls ONE library function."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXIT_USER_ERROR = 2
# library argument -> the flag that sets it, for error messages (the library speaks in its own terms)
FLAGS = {"out_dir": "--out", "resume": "--resume", "overwrite": "--overwrite", "dtype": "--dtype",
         "adapter_only": "--adapter-only", "batch": "--batch", "text": "--text", "ref": "--ref", "out": "--out",
         "model_dir": "--model", "data_dir": "--data", "val_fraction": "--val-fraction", "config": "--config",
         "seed": "--seed", "which": "--which", "base_dir": "--base", "adapter": "--adapter"}


def _describe(error) -> str:
    """The library's message, then the flags it concerns."""
    flags = [FLAGS[p] for p in getattr(error, "params", ()) if p in FLAGS]
    return str(error) + (f" ({', '.join(dict.fromkeys(flags))})" if flags else "")


def _selftest(a) -> int:
    from tagtune.selftest import run_selftest

    return run_selftest(a.fixture, verbose=a.verbose)


def _tags_scan(a) -> int:
    import json

    from tagtune.data.sources import open_source
    from tagtune.tags import load_tag_map, scan_texts

    texts = [r.text for r in open_source(a.data, kind=a.kind).records() if isinstance(r.text, str)]
    scan = scan_texts(texts, tag_map=load_tag_map(a.tag_map) if a.tag_map else {}, multiword=a.multiword)
    if a.json:
        print(json.dumps({
            "texts": scan.texts, "texts_with_tags": scan.texts_with_tags,
            "canonical": dict(scan.canonical_counts.most_common()), "raw": dict(scan.raw_counts.most_common()),
            "merged_into": scan.merged_into, "dropped": dict(scan.dropped), "unknown": dict(scan.unknown),
        }, indent=2, ensure_ascii=False))
    else:
        print(scan.summary())
    return 0


def _tags_add(a) -> int:
    from tagtune.tags.add import add_tags
    from tagtune.tags.vocab import parse_tag_list

    res = add_tags(a.model, parse_tag_list(a.tags), a.out, init=a.init, tag_map=a.tag_map,
                   multiword=a.multiword, seed=a.seed)
    for tag, i in res.added.items():
        print(f"added {tag} -> id {i}")
    for tag, i in res.kept.items():
        print(f"kept  {tag} -> id {i}")
    print(f"wrote {res.out_dir}")
    return 0


def _prepare(a) -> int:
    from tagtune.data.for_model import prepare_for_model
    from tagtune.data.prepare import DataDirMismatch
    from tagtune.tags.vocab import parse_tag_list

    tags = "auto" if a.tags == "auto" else parse_tag_list(a.tags)
    extra = {k: v for k, v in (("cond_mode", a.cond), ("val_fraction", a.val_fraction), ("seed", a.seed),
                               ("trim_silence", a.trim_silence), ("cond_max_seconds", a.cond_max_seconds),
                               ("shard_size", a.shard_size))
             if v is not None}
    try:
        manifest = prepare_for_model(a.model, a.data, a.out, tags=tags, tag_map=a.tag_map, multiword=a.multiword,
                                     kind=a.kind, workers=a.workers, overwrite=a.overwrite,
                                     progress=not a.no_progress, device=a.device, **extra)
    except DataDirMismatch as e:
        raise DataDirMismatch(e.data_dir, e.reasons, "choose another --out, or add --overwrite to rebuild it") from None
    if manifest is not None:
        c = manifest["counts"]
        print(f"prepared {c['accepted']} of {c['records']} clips ({manifest['hours']['total']:.2f} h; "
              f"train {c['train']}, val {c['val']}, tagged {c['tagged']}); rejected {c['rejected']}"
              + (f": {manifest['rejections']}" if c["rejected"] else ""))
        print(f"wrote {a.out}")
    return 0


def _eval(a) -> int:
    from tagtune.evaluate import evaluate

    report = evaluate(a.model, a.data, a.out, base_dir=a.base, adapter=a.adapter, n_free=a.n_free, seed=a.seed,
                      device=a.device)
    print((Path(a.out) / "report.md").read_text() if (Path(a.out) / "report.md").exists() else report)
    return 0


def _demo(a) -> int:
    from tagtune.demo import DemoSettings, format_summary, run_demo

    settings = DemoSettings.quick(a.seed) if a.quick else DemoSettings(seed=a.seed)
    if a.steps is not None:
        settings.steps = a.steps
    if a.clips is not None:
        settings.clips = a.clips
    summary = run_demo(a.out, settings)
    print(format_summary(summary))
    return 0


def _train(a) -> int:
    import re

    from tagtune.folders import shipped_recipe
    from tagtune.train import train
    from tagtune.train.config import CLI_OVERRIDES, TrainConfig, TrainConfigError
    from tagtune.train.run import RunExistsError

    overrides = {"max_steps": a.max_steps, "epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr,
                 "rank": a.rank, "seed": a.seed}
    try:
        cfg = TrainConfig.from_yaml(a.config or shipped_recipe()).with_overrides(**overrides)
        res = train(a.data, a.out, cfg, resume=a.resume)
    except TrainConfigError as e:  # a recipe key this command line set: say which flag set it
        flags = [f"--{name.replace('_', '-')}" for name, value in overrides.items()
                 if value is not None and re.search(rf"(?<![\w.]){re.escape(CLI_OVERRIDES[name])}\b", str(e))]
        if flags:
            raise TrainConfigError(f"{e} (set by {', '.join(flags)})") from None
        raise
    except RunExistsError as e:
        raise RunExistsError(f"{e} (--resume continues it; --out names another)") from None
    print(f"trained {res.steps} steps; best val loss {res.best_val_loss} at step {res.best_step}; "
          f"weights in {res.weights_dir}")
    if res.forgetting_pct is not None:
        print(f"untagged val loss vs base: {res.forgetting_pct:+.2f}%")
    return 0


def _export(a) -> int:
    from tagtune.export import export

    out = export(a.run, a.out, adapter_only=a.adapter_only, dtype=a.dtype, which=a.which, overwrite=a.overwrite)
    print(f"wrote {out}")
    return 0


def _synth(a) -> int:
    from tagtune.errors import UserError
    from tagtune.synthesis.jobs import synth_command

    if a.batch is not None and (a.text is not None or a.out is not None):
        raise UserError("give either --batch FILE or --text with --out, not both")
    if a.batch is None and (a.text is None or a.ref is None or a.out is None):
        raise UserError("--text, --ref and --out are required (or --batch FILE)")

    sampling = {k: getattr(a, k) for k in ("num_beams", "top_k", "top_p", "temperature", "repetition_penalty",
                                            "max_new_tokens")}
    written = synth_command(a.model, ref=a.ref, text=a.text, batch=a.batch, out=a.out, adapter=a.adapter,
                            seed=a.seed, compat=a.compat, precision=a.precision, greedy=a.greedy, device=a.device,
                            unknown_tags="drop" if a.drop_unknown_tags else "error", **sampling)
    for path in written:
        print(f"wrote {path}")
    return 0


def _webui(a) -> int:
    from tagtune.webui import launch_webui

    launch_webui(a.model, base_dir=a.base, adapter=a.adapter, host=a.host, port=a.port, precision=a.precision,
                 device=a.device)
    return 0


def _add_tag_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tag-map", help="YAML/JSON file mapping tag spellings to canonical tags (null drops)")
    p.add_argument("--multiword", choices=("own", "base", "drop"), default="own",
                   help="what <laughs nervously> becomes: its own tag, its base tag <laughs>, or nothing")


def build_parser() -> argparse.ArgumentParser:
    from tagtune.tags.rows import FORMULA_INITS

    p = argparse.ArgumentParser(prog="tagtune", description=__doc__ and "Teach IndexTTS 1.0/1.5 expressive tags.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("selftest", help="check this install against a parity fixture folder")
    s.add_argument("--fixture", type=Path, required=True,
                   help="folder with checkpoint/, inputs/, expected.safetensors, README.md")
    s.set_defaults(func=_selftest)

    tags = sub.add_parser("tags", help="inspect a corpus's tags, or add tag tokens to a model").add_subparsers(
        dest="tags_command", required=True, metavar="ACTION")
    s = tags.add_parser("scan", help="list the tags of a corpus with counts and their canonical mapping")
    s.add_argument("--data", required=True, help="any source `prepare` accepts")
    s.add_argument("--kind", default="auto", choices=("auto", "table", "ljspeech", "manifest", "hf"))
    s.add_argument("--json", action="store_true", help="machine-readable output")
    _add_tag_options(s)
    s.set_defaults(func=_tags_scan)
    s = tags.add_parser("add", help="write a model folder whose tokenizer and GPT know new tags")
    s.add_argument("--model", required=True, type=Path, help="base model folder (official or tagtune)")
    s.add_argument("--tags", required=True, help='comma-separated, e.g. "<laughs>,<giggles>,<sighs>"')
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--init", choices=FORMULA_INITS, default="mean",
                   help="new rows: the mean old row scaled to a typical norm (mean), the plain mean row (plain), or "
                        "the tag's spelled-out words (words)")
    s.add_argument("--seed", type=int, default=0)
    _add_tag_options(s)
    s.set_defaults(func=_tags_add)

    s = sub.add_parser("prepare", help="turn a tagged speech corpus into training shards for a base model")
    s.add_argument("--model", required=True, type=Path, help="base model folder")
    s.add_argument("--data", required=True, help="parquet/arrow file or folder, LJSpeech folder, CSV/JSONL "
                   "manifest, folder with metadata.jsonl, or a Hugging Face dataset name with --kind hf")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--kind", default="auto", choices=("auto", "table", "ljspeech", "manifest", "hf"))
    s.add_argument("--tags", default="auto", help='"auto" (discover) or a list like "<laughs>,<sighs>"')
    s.add_argument("--cond", choices=("other", "self"), help="reference clip: another clip of the speaker (default)")
    s.add_argument("--cond-max-seconds", type=float, help="crop of the stored reference mel (default 6)")
    s.add_argument("--val-fraction", type=float)
    s.add_argument("--trim-silence", action="store_true", default=None)
    s.add_argument("--seed", type=int)
    s.add_argument("--shard-size", type=int, help="clips per shard file (default 256)")
    s.add_argument("--workers", type=int, default=0, help="decoding processes (0: decode in this process)")
    s.add_argument("--device", help="device for the DVAE (default: best available)")
    s.add_argument("--overwrite", action="store_true", help="rebuild a DATA_DIR made from other inputs/settings")
    s.add_argument("--no-progress", action="store_true")
    _add_tag_options(s)
    s.set_defaults(func=_prepare)

    s = sub.add_parser("train", help="LoRA-fine-tune the base model of a DATA_DIR on its tags")
    s.add_argument("--data", required=True, type=Path, help="a DATA_DIR written by `tagtune prepare`")
    s.add_argument("--out", required=True, type=Path, help="RUN_DIR (checkpoints, metrics, best weights)")
    s.add_argument("--config", type=Path, help="YAML recipe (default: the shipped configs/lora.yaml)")
    s.add_argument("--resume", action="store_true", help="continue RUN_DIR from its last checkpoint")
    s.add_argument("--max-steps", type=int)
    s.add_argument("--epochs", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--rank", type=int)
    s.add_argument("--seed", type=int)
    s.set_defaults(func=_train)

    s = sub.add_parser("export", help="a model folder the official IndexTTS loader accepts, or a PEFT adapter")
    s.add_argument("--run", required=True, type=Path, help="RUN_DIR of `tagtune train`")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--adapter-only", action="store_true", help="write a PEFT adapter folder instead of merging")
    s.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32")
    s.add_argument("--which", choices=("best", "last"), default="best", help="best-by-validation or last weights")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_export)

    s = sub.add_parser("synth", help="speak tagged text in the voice of a reference clip")
    s.add_argument("--model", required=True, type=Path, help="official or exported model folder")
    s.add_argument("--adapter", type=Path, help="PEFT adapter folder from `tagtune export --adapter-only`")
    s.add_argument("--ref", type=Path, help="reference voice (wav/flac/ogg, any rate, mono or stereo)")
    s.add_argument("--text", help='e.g. "Seriously? <giggles> That is so cute!"')
    s.add_argument("--batch", type=Path, help="JSONL file: one {text, ref, out[, seed, sampling...]} per line")
    s.add_argument("--out", type=Path, help="output wav (24 kHz, 16-bit) for --text")
    s.add_argument("--seed", type=int, help="makes sampling reproducible")
    s.add_argument("--compat", choices=("official",), help="reproduce the official decoding exactly")
    s.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    s.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16", "int8"),
                   help="GPT decode precision of the fast path")
    s.add_argument("--device", default="cpu")
    s.add_argument("--drop-unknown-tags", action="store_true", help="drop unknown tags with a warning")
    s.add_argument("--num-beams", type=int)
    s.add_argument("--top-k", type=int)
    s.add_argument("--top-p", type=float)
    s.add_argument("--temperature", type=float)
    s.add_argument("--repetition-penalty", type=float)
    s.add_argument("--max-new-tokens", type=int)
    s.set_defaults(func=_synth)

    s = sub.add_parser("webui", help="a web page to try the model (needs the webui extra: gradio)")
    s.add_argument("--model", required=True, type=Path)
    s.add_argument("--base", type=Path, help="base model, synthesised side by side")
    s.add_argument("--adapter", type=Path)
    s.add_argument("--host", default="127.0.0.1", help="listen address (default: this machine only)")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16", "int8"))
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=_webui)

    s = sub.add_parser("eval", help="measure tag reliance, forgetting and free-running tag hits")
    s.add_argument("--model", type=Path, help="tuned model folder (or the base, with --adapter)")
    s.add_argument("--base", type=Path, help="base model folder to compare against")
    s.add_argument("--adapter", type=Path, help="PEFT adapter folder applied on top of --base")
    s.add_argument("--data", required=True, type=Path, help="a prepared DATA_DIR (its val split is used)")
    s.add_argument("--out", required=True, type=Path, help="REPORT_DIR for report.json, report.md, plots")
    s.add_argument("--n-free", type=int, default=48, help="free-running prompts per model (0: skip)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=_eval)

    s = sub.add_parser("demo", help="the whole job on bundled defaults: corpus -> prepare -> train -> export -> "
                       "synth -> eval")
    s.add_argument("--out", type=Path, default=Path("tagtune-demo"))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quick", action="store_true", help="a small, fast variant (used by the tests)")
    s.add_argument("--steps", type=int, help="training steps (default: the demo recipe's)")
    s.add_argument("--clips", type=int, help="corpus size")
    s.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from tagtune.errors import UserError

    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"tagtune {args.command}: error: {_describe(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"tagtune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
