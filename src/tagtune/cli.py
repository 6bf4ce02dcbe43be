"""Command line: each subcommand parses its arguments and calls ONE library function."""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
from pathlib import Path

EXIT_USER_ERROR = 2
# library argument -> the flag that sets it, for error messages (the library speaks in its own terms)
FLAGS = {"out_dir": "--out", "resume": "--resume", "overwrite": "--overwrite", "dtype": "--dtype",
         "adapter_only": "--adapter-only", "batch": "--batch", "text": "--text", "ref": "--ref", "out": "--out",
         "model_dir": "--model", "data_dir": "--data", "val_fraction": "--val-fraction", "config": "--config",
         "seed": "--seed", "which": "--which", "base_dir": "--base", "adapter": "--adapter", "device": "--device",
         "judges": "--judges", "event_model": "--event-model", "voices": "--voices", "prompts": "--prompts",
         "judge_batch": "--judge-batch", "calibration_clips": "--calibration-clips"}
SOURCE_KINDS = ("auto", "table", "ljspeech", "manifest", "hf")
MODEL_LIMITS = ("max_text_tokens", "max_mel_tokens")  # preparation settings the base model's config decides
# "path:line: Category: message\n  source line\n", as warnings.formatwarning writes a captured warning
WARNING_TEXT = re.compile(r"(?P<file>.*?):(?P<line>\d+): (?P<category>\w+): (?P<message>.*)", re.S)


def _describe(error) -> str:
    """The library's message, then the flags it concerns."""
    flags = [FLAGS[p] for p in getattr(error, "params", ()) if p in FLAGS]
    return str(error) + (f" ({', '.join(dict.fromkeys(flags))})" if flags else "")


def _device(a) -> str:
    """The ``--device`` of a command, "auto" resolved and a missing device refused (tagtune.devices)."""
    from tagtune.devices import resolve_device

    return str(resolve_device(a.device))


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
    extra = _prepare_settings(a.set)
    extra |= {k: v for k, v in (("cond_mode", a.cond), ("val_fraction", a.val_fraction), ("seed", a.seed),
                                ("trim_silence", a.trim_silence), ("cond_max_seconds", a.cond_max_seconds),
                                ("shard_size", a.shard_size))
              if v is not None}
    try:
        manifest = prepare_for_model(a.model, a.data, a.out, tags=tags, tag_map=a.tag_map, multiword=a.multiword,
                                     kind=a.kind, workers=a.workers, overwrite=a.overwrite,
                                     progress=not a.no_progress, device=_device(a), events=a.events, **extra)
    except DataDirMismatch as e:
        raise DataDirMismatch(e.data_dir, e.reasons, "choose another --out, or add --overwrite to rebuild it") from None
    if manifest is not None:
        c = manifest["counts"]
        print(f"prepared {c['accepted']} of {c['records']} clips ({manifest['hours']['total']:.2f} h; "
              f"train {c['train']}, val {c['val']}, tagged {c['tagged']}); rejected {c['rejected']}"
              + (f": {manifest['rejections']}" if c["rejected"] else ""))
        print(f"wrote {a.out}")
    return 0


def _events(a) -> int:
    from tagtune.evaluate.judges.boundaries import find_boundaries, summary_line

    given = {"event_model": a.event_model, "calibration_clips": a.calibration_clips}  # else the library's defaults
    summary = find_boundaries(a.data, a.out, kind=a.kind, event_map=a.event_map, tag_map=a.tag_map,
                              multiword=a.multiword, device=_device(a), seed=a.seed, progress=not a.no_progress,
                              **{k: v for k, v in given.items() if v is not None})
    print(summary_line(summary))
    print(f"wrote {a.out}")
    return 0


def _prepare_settings(assignments: list[str]) -> dict:
    """``--set key=value`` of prepare: any field of the preparation settings except the limits the model sets."""
    import dataclasses

    from tagtune.data.prepare import PrepareSettings
    from tagtune.errors import UserError
    from tagtune.train.config import parse_setting

    known = sorted(f.name for f in dataclasses.fields(PrepareSettings) if f.name not in MODEL_LIMITS)
    settings = {}
    for text in assignments:
        key, value = parse_setting(text, example="val_fraction=0.1")
        if key not in known:
            raise UserError(f"unknown preparation setting {key!r} (--set {text}); known: {', '.join(known)}")
        settings[key] = value
    return settings


def _judge_settings(a):
    """JudgeSettings from ``--judges`` and its model flags (None when no judge is asked for)."""
    if not a.judges:
        return None
    from tagtune.evaluate.judges import JudgeSettings

    names = {"event_model": a.event_model, "asr_model": a.asr_model, "speaker_model": a.speaker_model}
    return JudgeSettings(judges=tuple(j.strip() for j in a.judges.split(",") if j.strip()), event_map=a.event_map,
                         prompts=a.prompts, voices=a.voices, batch_size=a.judge_batch, progress=not a.no_progress,
                         calibration_clips=a.calibration_clips,
                         **{k: v for k, v in names.items() if v is not None})


def _transfer_settings(a):
    from tagtune.evaluate.transfer import TransferSettings

    return TransferSettings(prompts=a.transfer_prompts, untagged_prompts=max(1, a.transfer_prompts // 2),
                            voices_dir=a.transfer_voices)


def _add_tag_guidance(s, what: str, default: str = "1, off") -> None:
    s.add_argument("--tag-guidance", type=float, help=f"tag guidance: {what} leaning this much further toward "
                   f"what its tags change than the model alone does, 1 to 10 (default: {default}; "
                   "docs/tag-guidance.md)")


def _add_anchor_share(s, default: str = "0, the base alone") -> None:
    s.add_argument("--anchor-share", type=float, help="with --base-anchor: how far the guided start moves from the "
                   "base toward the tuned model's own tag-free scores, 0 to 1; more lets events begin where the base "
                   f"would never make one, such as after the last word (default: {default}; docs/tag-guidance.md)")


def _checked(flag: str, check, value):
    """``check(value)``, or a one-line UserError that names ``flag`` when it raises ValueError."""
    from tagtune.errors import UserError

    try:
        return check(value)
    except ValueError as e:
        raise UserError(f"{flag}: {e}") from None


def _eval(a) -> int:
    from tagtune.evaluate import evaluate
    from tagtune.evaluate.report_md import render_text

    guidance = {} if a.tag_guidance is None else {"tag_guidance": a.tag_guidance}
    if a.base_anchor:
        guidance["base_anchor"] = True
    if a.anchor_share is not None:
        from tagtune.generation.guidance import check_anchor_share

        guidance["anchor_share"] = _checked("--anchor-share", check_anchor_share, a.anchor_share)
    report = evaluate(a.model, a.data, a.out, base_dir=a.base, adapter=a.adapter, n_free=a.n_free, seed=a.seed,
                      device=_device(a), progress=not a.no_progress, judges=_judge_settings(a),
                      transfer_dir=a.transfer, transfer_settings=_transfer_settings(a), **guidance)
    print(render_text(report))  # report.md is for files; the terminal gets the same sections as plain text
    if report.get("transfer"):
        from tagtune.evaluate.transfer_report import transfer_markdown

        print(transfer_markdown(report))
    if report.get("judges"):
        from tagtune.evaluate.judges.report import judges_markdown

        print(judges_markdown(report))
    print(f"wrote {a.out}")
    return 0


def _demo(a) -> int:
    from tagtune.demo import DemoSettings, format_summary, run_demo
    from tagtune.errors import UserError
    from tagtune.generation.guidance import check_anchor_share, check_tag_guidance

    settings = (DemoSettings.quick if a.quick else DemoSettings.full)(a.seed, a.model_family)
    if a.steps is not None:
        settings.steps = a.steps
    if a.clips is not None:
        settings.clips = a.clips
    if a.base_anchor is not None:
        settings.base_anchor = a.base_anchor
    if a.anchor_share is not None:
        settings.anchor_share = _checked("--anchor-share", check_anchor_share, a.anchor_share)
    if a.tag_guidance is not None:
        settings.tag_guidance = _checked("--tag-guidance", check_tag_guidance, a.tag_guidance)
    if a.tag_contrast is not None:  # checked before any stage runs
        from tagtune.train.config import LossSettings

        settings.tag_contrast = LossSettings(tag_contrast=a.tag_contrast).tag_contrast
    try:  # the one thing the demo cannot explain later: where it writes
        Path(a.out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{a.out}: cannot create the demo folder ({e.strerror})", params=("out_dir",)) from None
    summary = run_demo(a.out, settings, base_dir=a.base, progress=not a.no_progress)
    print(format_summary(summary))
    acceptance = summary["acceptance"]
    return 1 if acceptance["judged"] and not acceptance["passed"] else 0  # a smoke run is not judged


def _train(a) -> int:
    from tagtune.folders import shipped_recipe
    from tagtune.train import train
    from tagtune.train.config import CLI_OVERRIDES, TrainConfig, TrainConfigError, parse_setting
    from tagtune.train.run import RunExistsError

    overrides = {"max_steps": a.max_steps, "epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr,
                 "rank": a.rank, "seed": a.seed, "device": a.device, "precision": a.precision,
                 "report_to": a.report_to, "replay": str(a.replay) if a.replay else None,
                 "replay_fraction": a.replay_fraction, "replay_events": a.replay_events,
                 "event_cuts": a.event_cuts, "tag_contrast": a.tag_contrast}
    # recipe key -> the flag that set it, named when that key's value is refused
    set_by = {CLI_OVERRIDES[name]: f"--{name.replace('_', '-')}" for name, v in overrides.items() if v is not None}
    try:
        settings = {}
        for text in a.set:
            key, value = parse_setting(text)
            settings[key] = value
            set_by.setdefault(key, f"--set {text}")  # a flag setting the same key wins, and is the one named
        cfg = TrainConfig.from_yaml(a.config or shipped_recipe()).with_settings(settings).with_overrides(**overrides)
        if a.no_progress:
            cfg.runtime.progress_bar = False
        res = train(a.data, a.out, cfg, resume=a.resume, on_validate=_sample_hook(cfg))
    except TrainConfigError as e:  # a recipe key this command line set: say which flag set it
        flags = [flag for key, flag in set_by.items() if re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", str(e))]
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


def _sample_hook(cfg):
    """The hook that speaks the recipe's ``eval.sample_sentences`` at each validation (None without any), in the
    voice of ``eval.sample_reference`` or else of a validation clip of the data the run opens."""
    if not cfg.eval.sample_sentences:
        return None
    from tagtune.synthesis.run_samples import TrainingSamples

    return TrainingSamples(cfg.eval.sample_reference or None, seed=cfg.seed, voice=_validation_voice)


def _validation_voice(data):
    """The audio (a path, or bytes) of a validation clip of ``data`` (an opened DATA_DIR), untagged and long enough
    for a voice when one is, from the corpus DATA_DIR was prepared from; None, with a warning, when that corpus no
    longer gives it."""
    from tagtune.data.sources import SourceError, open_source
    from tagtune.synthesis.reference import MIN_REFERENCE_SECONDS

    clips = [e for e in data.val.examples if e.get("seconds", 0) >= MIN_REFERENCE_SECONDS] or data.val.examples
    if not clips:
        return None  # no validation split: nothing is validated, so nothing is spoken
    clip = next((e for e in clips if not e["has_tag"]), clips[0])
    corpus, index = data.manifest.get("source", {}).get("name"), clip.get("index")
    try:
        source = open_source(corpus)
        if source.records()[index].source_id == clip.get("source_id"):
            return source.audio(index, index + 1)[0]
        problem = "the corpus lists another clip there"
    except (SourceError, OSError, IndexError, TypeError) as e:
        problem = str(e)
    logging.getLogger(__name__).warning(
        "eval.sample_sentences: no samples: validation clip %s of corpus %s cannot be read (%s); set "
        "eval.sample_reference to an audio file", clip.get("source_id"), corpus, problem)
    return None


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
                                            "max_new_tokens", "tag_guidance", "anchor_share")}
    emotion = {"emo_ref": a.emo_ref, "emo_alpha": a.emo_alpha, "emo_vector": a.emo_vector, "emo_text": a.emo_text}
    written = synth_command(a.model, ref=a.ref, text=a.text, batch=a.batch, out=a.out, adapter=a.adapter,
                            seed=a.seed, compat=a.compat, precision=a.precision, greedy=a.greedy, device=_device(a),
                            unknown_tags="drop" if a.drop_unknown_tags else "error", progress=not a.no_progress,
                            emotion={k: v for k, v in emotion.items() if v is not None}, base_anchor=a.base_anchor,
                            **sampling)
    for path in written:
        print(f"wrote {path}")
    return 0


def _webui(a) -> int:
    from tagtune.webui import launch_webui

    launch_webui(a.model, base_dir=a.base, adapter=a.adapter, host=a.host, port=a.port, precision=a.precision,
                 device=_device(a), share=a.share, base_anchor=a.base_anchor)
    return 0


def _named_folders(values: list[str] | None, flag: str) -> dict[str, Path]:
    """``NAME=PATH`` flags -> {name: path}; a value without ``=`` or a name given twice is a usage error."""
    from tagtune.errors import UserError

    out: dict[str, Path] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise UserError(f"{flag} takes NAME=PATH, got {value!r}")
        if name in out:
            raise UserError(f"{flag} names {name!r} twice")
        out[name] = Path(path)
    return out


def _serve(a) -> int:
    from tagtune.serve import serve
    from tagtune.serve.limits import Limits

    try:
        import fastapi  # noqa: F401 - the serve extra, checked before the model loads
        import uvicorn  # noqa: F401
    except ImportError as e:
        from tagtune.errors import UserError

        raise UserError(f"serve needs the serve extra (pip install 'tagtune[serve]'): {e}") from None
    limits = Limits(max_text_chars=a.max_text_chars, max_reference_seconds=a.max_reference_seconds,
                    max_reference_bytes=int(a.max_reference_mb * 2**20), max_active=a.max_active,
                    max_queue=a.max_queue, request_timeout=a.timeout, shutdown_grace=a.shutdown_grace)
    serve(a.model, _named_folders(a.adapter, "--adapter"), _named_folders(a.voice, "--voice"), host=a.host,
          port=a.port, limits=limits, device=_device(a))
    return 0


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every flag's default after its help ("(default: X)", "none" for an unset one), unless the help already
    says it, the flag is required, or it is a plain switch (off unless given)."""

    def _get_help_string(self, action):
        text = action.help or ""
        switch = action.nargs == 0
        if action.option_strings and not (switch or action.required or "default" in text):
            default = action.default
            shown = "none" if default is None or default == [] else (
                default.as_posix() if isinstance(default, Path) else str(default))
            text += f" (default: {shown})"
        return text


def _common_options(top: bool) -> argparse.ArgumentParser:
    """Options every command takes, before or after its name (``tagtune -v train`` = ``tagtune train -v``).

    Below the top level their default is SUPPRESS, so a subcommand that does not see the flag keeps what the
    top level parsed."""
    p = argparse.ArgumentParser(add_help=False)
    default = {} if top else {"default": argparse.SUPPRESS}
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging", **default)
    p.add_argument("--no-progress", action="store_true", **default,
                   help="no progress bars (they are on stderr, and off anyway when it is not a terminal)")
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tagtune")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from tagtune import __version__

        return __version__


def _add_tag_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tag-map", help="YAML/JSON file mapping tag spellings to canonical tags (null drops) "
                   "(default: none, the built-in canonical forms only)")
    p.add_argument("--multiword", choices=("own", "base", "drop"), default="own",
                   help="what <laughs nervously> becomes: its own tag, its base tag <laughs>, or nothing")


def _add_device(p: argparse.ArgumentParser, what: str) -> None:
    from tagtune.devices import AUTO, DEVICE_HELP

    p.add_argument("--device", default=AUTO, help=f"device for {what}: {DEVICE_HELP}")


def build_parser() -> argparse.ArgumentParser:
    from tagtune.data.prepare import PrepareSettings
    from tagtune.generation import GenerationConfig
    from tagtune.precision import PRECISIONS, TRAINING_PRECISIONS
    from tagtune.serve.limits import Limits
    from tagtune.tags.rows import FORMULA_INITS
    from tagtune.train.config import DEVICES, REPORT_TO

    common = _common_options(top=False)
    p = argparse.ArgumentParser(prog="tagtune", description="Teach IndexTTS 1.0/1.5 expressive tags.",
                                formatter_class=_HelpFormatter, parents=[_common_options(top=True)])
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent, name: str, help_text: str) -> argparse.ArgumentParser:
        return parent.add_parser(name, help=help_text, description=help_text, parents=[common],
                                 formatter_class=_HelpFormatter)

    s = command(sub, "selftest", "check this install against a parity fixture folder")
    s.add_argument("--fixture", type=Path, required=True,
                   help="folder with checkpoint/, inputs/, expected.safetensors, README.md")
    s.set_defaults(func=_selftest)

    tags = command(sub, "tags", "inspect a corpus's tags, or add tag tokens to a model").add_subparsers(
        dest="tags_command", required=True, metavar="ACTION")
    s = command(tags, "scan", "list the tags of a corpus with counts and their canonical mapping")
    s.add_argument("--data", required=True, help="any source `prepare` accepts")
    s.add_argument("--kind", default="auto", choices=SOURCE_KINDS, help="source layout (auto: detected)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    _add_tag_options(s)
    s.set_defaults(func=_tags_scan)
    s = command(tags, "add", "write a model folder whose tokenizer and GPT know new tags")
    s.add_argument("--model", required=True, type=Path, help="base model folder (official or tagtune)")
    s.add_argument("--tags", required=True, help='comma-separated, e.g. "<laughs>,<giggles>,<sighs>"')
    s.add_argument("--out", required=True, type=Path, help="the new model folder")
    s.add_argument("--init", choices=FORMULA_INITS, default="mean",
                   help="new rows: the mean old row scaled to a typical norm (mean), the plain mean row (plain), or "
                        "the tag's spelled-out words (words)")
    s.add_argument("--seed", type=int, default=0, help="seed of the row initialisation")
    _add_tag_options(s)
    s.set_defaults(func=_tags_add)

    s = command(sub, "prepare", "turn a tagged speech corpus into training shards for a base model")
    s.add_argument("--model", required=True, type=Path, help="base model folder")
    s.add_argument("--data", required=True, help="parquet/arrow file or folder, LJSpeech folder, CSV/JSONL "
                   "manifest, folder with metadata.jsonl, or a Hugging Face dataset name with --kind hf")
    s.add_argument("--out", required=True, type=Path, help="DATA_DIR to write (re-running resumes it)")
    s.add_argument("--kind", default="auto", choices=SOURCE_KINDS, help="source layout (auto: detected)")
    s.add_argument("--tags", default="auto", help='"auto" (discover) or a list like "<laughs>,<sighs>"')
    prep = PrepareSettings()
    s.add_argument("--cond", choices=("other", "self"),
                   help=f"reference clip of each example: another clip of the same speaker, or the clip itself "
                        f"(default: {prep.cond_mode})")
    s.add_argument("--cond-max-seconds", type=float,
                   help=f"crop of the stored reference mel (default: {prep.cond_max_seconds})")
    s.add_argument("--val-fraction", type=float,
                   help=f"share of clips held out for validation (default: {prep.val_fraction})")
    s.add_argument("--trim-silence", action="store_true", default=None, help="trim leading and trailing silence")
    s.add_argument("--seed", type=int, help=f"seed of the split and the reference pairing (default: {prep.seed})")
    s.add_argument("--shard-size", type=int, help=f"clips per shard file (default: {prep.shard_size})")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other preparation setting, e.g. --set min_seconds=1.0 --set trim_db=30 (repeatable; "
                        "values read as YAML; flags above win)")
    s.add_argument("--workers", type=int, default=0, help="decoding processes (0: decode in this process)")
    _add_device(s, "the DVAE")
    s.add_argument("--overwrite", action="store_true", help="rebuild a DATA_DIR made from other inputs/settings")
    s.add_argument("--events", type=Path, help="events file of `tagtune events`: event boundaries for the clips the "
                   "corpus lists without them, by clip id")
    _add_tag_options(s)
    s.set_defaults(func=_prepare)

    s = command(sub, "events", "find where each tag's event sounds in a corpus's tagged clips, with an AudioSet "
                "tagger, and write an events file for `prepare --events`")
    s.add_argument("--data", required=True, help="the corpus: any source `prepare` accepts")
    s.add_argument("--out", required=True, type=Path, help="events file to write (JSONL: one line per clip that "
                   "got boundaries)")
    s.add_argument("--kind", default="auto", choices=SOURCE_KINDS, help="source layout (auto: detected)")
    s.add_argument("--event-model", help="an AudioSet tagger, hub id or folder (default: "
                   "MIT/ast-finetuned-audioset-10-10-0.4593)")
    s.add_argument("--event-map", type=Path, help="YAML tag -> AudioSet classes, added to the shipped map")
    s.add_argument("--calibration-clips", type=int, help="clips per tag, and untagged, that calibrate the tagger's "
                   "thresholds (default: 64)")
    s.add_argument("--seed", type=int, default=0, help="seed of the calibration clips' choice")
    _add_device(s, "the tagger")
    _add_tag_options(s)
    s.set_defaults(func=_events)

    s = command(sub, "train", "LoRA-fine-tune the base model of a DATA_DIR on its tags")
    s.add_argument("--data", required=True, type=Path, help="a DATA_DIR written by `tagtune prepare`")
    s.add_argument("--out", required=True, type=Path, help="RUN_DIR (checkpoints, metrics, best weights)")
    s.add_argument("--config", type=Path, help="YAML recipe (default: the shipped configs/lora.yaml)")
    s.add_argument("--resume", action="store_true", help="continue RUN_DIR from its last checkpoint")
    s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="set any recipe value, e.g. --set optim.lr=3e-4 --set lora.layers=[0,1] (repeatable; "
                        "values read as YAML; the flags below win; default: the recipe's values)")
    recipe = "(default: the recipe's {})"
    s.add_argument("--max-steps", type=int, help="optimizer steps " + recipe.format("schedule.max_steps"))
    s.add_argument("--epochs", type=int, help="passes over the data " + recipe.format("schedule.epochs"))
    s.add_argument("--batch-size", type=int, help="micro-batch per process " + recipe.format("batch.batch_size"))
    s.add_argument("--lr", type=float, help="learning rate " + recipe.format("optim.lr"))
    s.add_argument("--rank", type=int, help="LoRA rank " + recipe.format("lora.rank"))
    s.add_argument("--seed", type=int, help="seed of the run " + recipe.format("seed"))
    s.add_argument("--device", choices=DEVICES, help="auto: a GPU when there is one " + recipe.format("runtime.device"))
    s.add_argument("--precision", choices=("auto", *TRAINING_PRECISIONS),
                   help="auto: accelerate's mixed precision when set there, else bf16/fp16 on a GPU, bf16 on a CPU "
                        "with native bf16 (AVX512_BF16 or AMX) and fp32 on other CPUs "
                        + recipe.format("runtime.precision"))
    s.add_argument("--report-to", choices=REPORT_TO,
                   help="metrics tracker through accelerate (auto: TensorBoard when installed) "
                        + recipe.format("runtime.report_to"))
    s.add_argument("--replay", type=Path, help="a DATA_DIR prepared from the same base whose untagged clips (many "
                   "voices, both languages) are mixed into training, against voice drift and forgetting "
                   + recipe.format("replay.data"))
    s.add_argument("--replay-fraction", type=float, help="share of replay clips in the training mix "
                   + recipe.format("replay.fraction"))
    s.add_argument("--replay-events", type=float, help="share of replay clips given one event cut from a tagged "
                   "clip, with its tag, at an edge of their text (tags in the replay's voices and languages) "
                   + recipe.format("replay.events"))
    s.add_argument("--event-cuts", type=float, help="share of tagged clips also trained on with their events cut "
                   "out and their tags removed, against events where no tag stands "
                   + recipe.format("augment.event_cuts"))
    s.add_argument("--tag-contrast", type=float, help="weight of the tag-contrast term: each tagged event must be "
                   "likelier under its own text than with its tag replaced or removed (docs/tag-contrast.md) "
                   + recipe.format("loss.tag_contrast"))
    s.set_defaults(func=_train)

    s = command(sub, "export", "a model folder the official IndexTTS loader accepts, or a PEFT adapter")
    s.add_argument("--run", required=True, type=Path, help="RUN_DIR of `tagtune train`")
    s.add_argument("--out", required=True, type=Path, help="model (or adapter) folder to write")
    s.add_argument("--adapter-only", action="store_true", help="write a PEFT adapter folder instead of merging")
    s.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32", help="dtype of the merged weights")
    s.add_argument("--which", choices=("best", "last"), default="best", help="best-by-validation or last weights")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    s.set_defaults(func=_export)

    s = command(sub, "synth", "speak tagged text in the voice of a reference clip")
    s.add_argument("--model", required=True, type=Path, help="official or exported model folder")
    s.add_argument("--adapter", type=Path, help="PEFT adapter folder from `tagtune export --adapter-only`")
    s.add_argument("--ref", type=Path, help="reference voice (wav/flac/ogg, any rate, mono or stereo)")
    s.add_argument("--text", help='e.g. "Seriously? <giggles> That is so cute!"')
    s.add_argument("--batch", type=Path, help="JSONL file: one {text, ref, out[, seed, sampling...]} per line")
    s.add_argument("--out", type=Path, help="output wav (24 kHz, 16-bit) for --text")
    s.add_argument("--seed", type=int, help="makes sampling reproducible (default: a fresh random seed)")
    s.add_argument("--compat", choices=("official",), help="reproduce the official decoding exactly")
    s.add_argument("--greedy", action="store_true",
                   help="argmax decoding instead of sampling; keeps the repetition penalty 10 as the official "
                        "greedy does (add --repetition-penalty 1 for plain argmax)")
    s.add_argument("--precision", default="auto", choices=("auto", *PRECISIONS),
                   help="GPT decode precision of the fast path (auto: int8 on a CPU, bf16/fp16 on a GPU)")
    _add_device(s, "synthesis")
    s.add_argument("--drop-unknown-tags", action="store_true", help="drop unknown tags with a warning")
    s.add_argument("--emo-ref", type=Path, help="IndexTTS-2: emotion reference clip (default: the voice itself)")
    s.add_argument("--emo-alpha", type=float, help="IndexTTS-2: strength of the emotion reference or vector, 0..1 "
                   "(default 1)")
    s.add_argument("--emo-vector", help="IndexTTS-2: 8 emotion weights happy,angry,sad,afraid,disgusted,"
                   "melancholic,surprised,calm (e.g. 0,0,0.3,0,0,0,0.2,0)")
    s.add_argument("--emo-text", help='IndexTTS-2: describe the emotion in words (needs the QwenEmotion folder; '
                   '"" uses the text itself)')
    official = GenerationConfig()
    for flag, kind, what in (("num-beams", int, "beams"), ("top-k", int, "top-k sampling"),
                             ("top-p", float, "nucleus sampling"), ("temperature", float, "sampling temperature"),
                             ("repetition-penalty", float, "repetition penalty"),
                             ("max-new-tokens", int, "most codes per sentence")):
        s.add_argument(f"--{flag}", type=kind,
                       help=f"{what} (default: the official {getattr(official, flag.replace('-', '_'))})")
    _add_tag_guidance(s, "each tagged sentence decodes")
    s.add_argument("--base-anchor", type=Path, metavar="BASE", help="the base model folder this model was trained "
                   "from: guided decoding starts from the base, so the tuned model adds only what its tags change "
                   "(default: none; docs/tag-guidance.md)")
    _add_anchor_share(s)
    s.set_defaults(func=_synth)

    s = command(sub, "webui", "a web page to try the model (needs the webui extra: gradio)")
    s.add_argument("--model", required=True, type=Path, help="tuned (or official) model folder")
    s.add_argument("--base", type=Path, help="base model, synthesised side by side (default: none)")
    s.add_argument("--adapter", type=Path, help="PEFT adapter folder applied on top of --model (default: none)")
    s.add_argument("--host", default="127.0.0.1", help="listen address (this machine only)")
    s.add_argument("--port", type=int, default=7860, help="listen port")
    s.add_argument("--share", action="store_true",
                   help="also publish the page through a public gradio.live link (off by default)")
    s.add_argument("--base-anchor", action="store_true", help="the tuned model's guided decoding starts from --base, "
                   "so it adds only what its tags change (docs/tag-guidance.md)")
    s.add_argument("--precision", default="auto", choices=("auto", *PRECISIONS),
                   help="GPT decode precision (auto: int8 on a CPU, bf16/fp16 on a GPU)")
    _add_device(s, "synthesis")
    s.set_defaults(func=_webui)

    s = command(sub, "serve", "an HTTP server with an OpenAI-style speech API (needs the serve extra: fastapi, "
                "uvicorn)")
    s.add_argument("--model", required=True, type=Path, help="base (or tuned) model folder, loaded once")
    s.add_argument("--adapter", action="append", metavar="NAME=DIR",
                   help="a PEFT adapter folder served as model NAME on the same base (repeatable; default: none)")
    s.add_argument("--voice", action="append", metavar="NAME=WAV",
                   help="a reference recording served as voice NAME (repeatable; clients may also upload voices)")
    s.add_argument("--host", default="127.0.0.1", help="listen address (this machine only)")
    s.add_argument("--port", type=int, default=8000, help="listen port")
    limits = Limits()
    s.add_argument("--max-active", type=int, default=limits.max_active,
                   help="requests decoding at once (their steps are batched)")
    s.add_argument("--max-queue", type=int, default=limits.max_queue,
                   help="requests waiting beyond those; more get HTTP 429")
    s.add_argument("--timeout", type=float, default=limits.request_timeout,
                   help="seconds a request may take (then HTTP 504)")
    s.add_argument("--max-text-chars", type=int, default=limits.max_text_chars, help="longest input text")
    s.add_argument("--max-reference-seconds", type=float, default=limits.max_reference_seconds,
                   help="longest uploaded reference voice")
    s.add_argument("--max-reference-mb", type=float, default=limits.max_reference_bytes / 2**20,
                   help="largest uploaded reference file")
    s.add_argument("--shutdown-grace", type=float, default=limits.shutdown_grace,
                   help="seconds running requests get to finish on shutdown (the rest are cancelled)")
    _add_device(s, "synthesis")
    s.set_defaults(func=_serve)

    s = command(sub, "eval", "measure tag reliance, forgetting and free-running tag hits")
    s.add_argument("--model", type=Path, help="tuned model folder (or the base, with --adapter)")
    s.add_argument("--base", type=Path, help="base model folder to compare against (default: none)")
    s.add_argument("--adapter", type=Path, help="PEFT adapter folder applied on top of --base (default: none)")
    s.add_argument("--data", required=True, type=Path, help="a prepared DATA_DIR (its val split is used)")
    s.add_argument("--out", required=True, type=Path, help="REPORT_DIR for report.json, report.md, plots")
    s.add_argument("--n-free", type=int, default=48, help="free-running prompts per model (0: skip)")
    s.add_argument("--seed", type=int, default=0, help="seed of the prompt choice and the sampling")
    _add_tag_guidance(s, "the free-running check's tagged prompts decode")
    s.add_argument("--base-anchor", action="store_true", help="the tuned model's free-running prompts decode "
                   "anchored to --base: guidance starts from the base's distribution (docs/tag-guidance.md)")
    _add_anchor_share(s)
    _add_device(s, "the models")
    s.add_argument("--transfer", type=Path, help="a DATA_DIR prepared from the same base with the same tags, spoken "
                   "by the fine-tune voices and by unseen voices in English and Chinese: adds the transfer report "
                   "(default: none)")
    s.add_argument("--transfer-prompts", type=int, default=24, help="tagged transfer prompts per condition "
                   "(default: 24)")
    s.add_argument("--transfer-voices", type=Path, help="a DATA_DIR prepared from the same base with clips of more "
                   "speakers (any tags), e.g. the replay data: the transfer report's speaker embedding learns "
                   "them too (default: the transfer set's voices alone)")
    s.add_argument("--judges", help="independent judges of the models' speech on a prompt suite, comma-separated: "
                   "events,words,voice (default: none)")
    s.add_argument("--event-model", help="events judge: an AudioSet tagger, hub id or folder (default: "
                   "MIT/ast-finetuned-audioset-10-10-0.4593), or 'codes' for the detector trained on the corpus")
    s.add_argument("--event-map", type=Path, help="YAML tag -> AudioSet classes, added to the shipped map")
    s.add_argument("--asr-model", help="words judge: a speech recogniser, hub id or folder (default: "
                   "openai/whisper-large-v3-turbo)")
    s.add_argument("--speaker-model", help="voice judge: a speaker-verification model, hub id or folder (default: "
                   "microsoft/wavlm-base-plus-sv), or the model's own speaker encoder: 'ecapa' (IndexTTS 1.x), "
                   "'campplus' (IndexTTS-2)")
    s.add_argument("--prompts", type=Path, action="append", help="prompt suite file, one prompt per line; repeat "
                   "for several (default: the shipped English and Chinese suites)")
    s.add_argument("--voices", type=Path, help="folder of reference recordings, one voice per file (default: "
                   "the validation speakers; required for IndexTTS-2)")
    s.add_argument("--judge-batch", type=int, default=8, help="clips per judge and generation batch (default: 8)")
    s.add_argument("--calibration-clips", type=int, default=48, help="corpus clips per tag, and untagged, that "
                   "calibrate the events judge's thresholds (default: 48)")
    s.set_defaults(func=_eval)

    s = command(sub, "demo", "the whole job on bundled defaults: corpus -> prepare -> train -> export -> synth -> "
                "eval; exits 1 when a judged run fails an acceptance check")
    s.add_argument("--out", type=Path, default=Path("tagtune-demo"), help="folder for everything the demo writes")
    s.add_argument("--seed", type=int, default=0, help="seed of every stage")
    s.add_argument("--quick", action="store_true",
                   help="a smoke run: every stage at a tiny size, checks shown but not judged")
    s.add_argument("--model-family", choices=("v1", "v2"), default="v1",
                   help="the base's family: v1 (IndexTTS 1.x) or v2 (IndexTTS-2: multi-voice, no transfer set) "
                   "(default: v1)")
    s.add_argument("--base", type=Path, help="base model folder of that family (default: the shipped tiny base)")
    s.add_argument("--steps", type=int, help="training steps (default: the demo's, 800 for v1 and v2; 20 with "
                   "--quick)")
    s.add_argument("--clips", type=int, help="corpus size (default: the demo's, 1200 for v1, 1600 for v2; 160 "
                   "with --quick)")
    _add_tag_guidance(s, "the tuned model's samples and free-running checks decode", "3")
    s.add_argument("--base-anchor", action=argparse.BooleanOptionalAction, help="the tuned model's samples and "
                   "free-running checks decode anchored to the base (default: on; "
                   "docs/tag-guidance.md)")
    _add_anchor_share(s, "0.5 for v1, 1 for v2")
    s.add_argument("--tag-contrast", type=float, help="training's tag-contrast weight (loss.tag_contrast; default: "
                   "the demo's, DEMO_TAG_CONTRAST)")
    s.set_defaults(func=_demo)
    return p


class _OneLineFormatter(logging.Formatter):
    """Log lines as ``LEVEL message``; a captured Python warning becomes ``WARNING Category: message (file:line)``
    instead of warnings' own two lines with the source line."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "py.warnings":
            match = WARNING_TEXT.match(record.getMessage())
            if match:
                message = (match["message"].strip().splitlines() or [""])[0]
                where = f"{Path(match['file']).name}:{match['line']}"
                record = logging.makeLogRecord({**record.__dict__, "args": None,
                                                "msg": f"{match['category']}: {message} ({where})"})
        return super().format(record)


@contextlib.contextmanager
def console_logging(verbose: bool):
    """Log records and Python warnings as one line each on stderr, printed above any progress bar."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter("%(levelname)s %(message)s"))
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)
    try:
        with logging_redirect_tqdm():
            yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tagtune.allocator import keep_freed_memory
    from tagtune.errors import UserError

    keep_freed_memory()  # large temporaries reused, not faulted in again at every call (tagtune.allocator)

    name = " ".join(n for n in (args.command, getattr(args, "tags_command", None)) if n)
    with console_logging(args.verbose):
        try:
            return int(args.func(args) or 0)
        except UserError as e:
            print(f"tagtune {name}: error: {_describe(e)}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print(f"tagtune {name}: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
