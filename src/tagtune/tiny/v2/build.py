"""Build the tiny IndexTTS-2 base model in the official folder layout, deterministically, on a CPU.

    python -m tagtune.tiny.v2.build [OUT_DIR] [--seed 0] [--quick]

Steps: untagged English + Mandarin synthetic corpus (pre-training voices only, as for the 1.x base) ->
sentencepiece ``bpe.model`` -> w2v-BERT (seeded random, one layer at width 1024) -> its statistics -> the
semantic codec fitted to the features (principal projection, k-means codebook) -> semantic codes -> GPT
pre-training -> seeded random s2mel, CAMPPlus, BigVGAN v2 and emotion matrices -> files. The speech the tiny
s2mel and vocoder render is noise: what this base proves is judged on the semantic codes. ``BUILD.json``
records settings, the voices of each role, losses, per-language quality (validation code CE, stop-code rate),
timings and the SHA-256 of every file.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from tagtune.checkpoint import atomic_write_text, file_sha256
from tagtune.tiny.build import Timer, make_tokenizer, torch_threads
from tagtune.tiny.corpus import check_voice_roles, load_clips, make_corpus, split_by_speaker
from tagtune.tiny.pretrain import PretrainSettings
from tagtune.tiny.quality import per_language
from tagtune.tiny.v2 import files, frontend
from tagtune.tiny.v2.pretrain import ExampleV2, check_generation, evaluate, pretrain, same_speaker
from tagtune.tiny.v2.settings import BuildSettingsV2, tiny_config_v2

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "assets" / "tiny-base-v2"
SEED_OFFSETS = {"corpus": 0, "split": 1, "w2v_bert": 2, "codec": 3, "gpt": 4, "aux": 5, "codec_corpus": 6}
CODEC_CORPUS_UNTAGGED = 0.5  # half of the codec's extra clips have no event
BUILD_FILE = "BUILD.json"


def make_codec_corpus(out_dir: Path, n_clips: int, seed: int, engine: str, chinese_fraction: float) -> dict:
    """Clips of the pre-training voices with the generator's events in half of them, for fitting the codec."""
    from tagtune.synthetic import generate_corpus

    info = generate_corpus(out_dir, n_clips=n_clips, seed=seed, untagged_fraction=CODEC_CORPUS_UNTAGGED,
                           engine=engine, chinese_fraction=chinese_fraction)
    check_voice_roles(info.speaker_counts, info.engine)
    return {"n_clips": info.n_clips, "languages": info.language_counts, "tags": info.tag_counts,
            "hours": round(info.total_seconds / 3600, 3)}


def make_examples(clips, tok, feats, codes, cfg) -> list[ExampleV2]:
    """Text ids, codes and features of every clip; raises if a transcript needs the ``<unk>`` piece."""
    out = []
    for c, f, k in zip(clips, feats, codes):
        ids = tok.encode(c.text)
        if tok.unk_token_id in ids:
            raise ValueError(f"the tokenizer does not cover {c.text!r}: {tok.tokenize(c.text)}")
        out.append(ExampleV2(torch.tensor(ids, dtype=torch.long), k, f.half(), c.speaker))
    return out


def fitting(examples: list[ExampleV2], indices: list[int], cfg) -> list[int]:
    return [i for i in indices if len(examples[i].text_ids) <= cfg.gpt.max_text_tokens
            and len(examples[i].codes) <= cfg.gpt.max_mel_tokens]


def language_quality(gpt, examples, clips, train_idx, val_idx, check_texts: int, seed: int) -> tuple[dict, dict]:
    """Per language: validation code CE and the stop-code rate of sampled generations (and the checks)."""
    pools = same_speaker(examples, train_idx + val_idx)
    return per_language(clips, val_idx, check_texts, seed, "val_code_ce",
                        score=lambda idx: evaluate(gpt, examples, idx, pools),
                        check=lambda idx, s: check_generation(gpt, examples, idx, train_idx, s))


def build_tiny_model_v2(out_dir: str | Path = DEFAULT_OUT, seed: int = 0, settings: BuildSettingsV2 | None = None,
                        log=print) -> dict:
    """Build the tiny v2 base into ``out_dir`` (official layout + BUILD.json); returns the BUILD.json record."""
    s = replace(settings or BuildSettingsV2(), seed=seed)
    timer = Timer()
    seeds = {k: seed * 100 + v for k, v in SEED_OFFSETS.items()}
    with torch_threads(s.threads), tempfile.TemporaryDirectory(prefix="tagtune-tiny-v2-") as tmp:
        with timer.stage("corpus", log):
            corpus = make_corpus(Path(tmp) / "corpus", s.n_clips, seeds["corpus"], s.engine, s.chinese_fraction)
            clips = load_clips(Path(tmp) / "corpus")
            train_idx, val_idx = split_by_speaker(clips, s.val_fraction, seeds["split"])
            corpus["codec_fit"] = make_codec_corpus(Path(tmp) / "codec", s.codec_clips, seeds["codec_corpus"],
                                                    s.engine, s.chinese_fraction)
            codec_clips = load_clips(Path(tmp) / "codec")
        with timer.stage("tokenizer", log):
            bpe, tok = make_tokenizer(clips, train_idx, s.vocab_size)
            cfg = tiny_config_v2(tok.vocab_size, s.sizes)
        with timer.stage("semantic front end", log):
            w2v = frontend.build_w2v_bert(s.sizes, seeds["w2v_bert"])
            files.round_trip(w2v, files.STORAGE_DTYPES["w2v_bert"])  # the stored weights give the stored codes
            extractor = frontend.feature_extractor()
            states = frontend.hidden_states(w2v, extractor, [c.wav.numpy() for c in clips + codec_clips])
            fit_idx = train_idx + list(range(len(clips), len(states)))  # training clips + the codec's own
            stats = frontend.feature_stats(states, fit_idx)
            feats = frontend.normalise(states, stats)
            labels = [frontend.row_labels(c.events, len(f)) for c, f in zip(clips + codec_clips, feats)]
            del states
            codec, codec_stats = frontend.fit_codec(cfg.semantic_codec, feats, fit_idx, s.codec_fit_frames,
                                                    seeds["codec"], labels, s.codec_event_share)
            files.round_trip_codec(codec)  # encode with the stored values
            codec_stats["codec_clips_codes"] = frontend.code_label_information(
                frontend.encode_codes(codec, feats[len(clips):]), labels[len(clips):])
            feats = feats[: len(clips)]
            codes = frontend.encode_codes(codec, feats)
            all_codes = torch.cat([codes[i] for i in train_idx])
            codec_stats["codes_used_on_corpus"] = int(all_codes.unique().numel())
            seconds = sum(len(clips[i].wav) for i in train_idx) / 24000
            codec_stats["code_rate_per_s"] = round(len(all_codes) / seconds, 2)
            examples = make_examples(clips, tok, feats, codes, cfg)
            del feats
            n_before = len(train_idx) + len(val_idx)
            train_idx, val_idx = fitting(examples, train_idx, cfg), fitting(examples, val_idx, cfg)
            corpus["too_long_dropped"] = n_before - len(train_idx) - len(val_idx)
        with timer.stage("gpt", log):
            ps = PretrainSettings(steps=s.gpt_steps, batch_size=s.gpt_batch, lr=s.gpt_lr, seed=seeds["gpt"])
            gpt, gpt_history = pretrain(cfg.gpt, examples, train_idx, val_idx, ps, log)
            files.round_trip(gpt, files.STORAGE_DTYPES["gpt"])  # measure and use what will be shipped
            gpt_history["stored_val"] = evaluate(gpt, examples, val_idx, same_speaker(examples, train_idx + val_idx))
            quality, gpt_history["generation_check"] = language_quality(gpt, examples, clips, train_idx, val_idx,
                                                                        s.check_texts, seeds["gpt"])
        with timer.stage("auxiliary networks", log):
            aux = files.random_aux(cfg, seeds["aux"], s.sizes)
    with timer.stage("write", log):
        paths = files.write_folder_v2(Path(out_dir), cfg, bpe, gpt, w2v, stats, codec, aux)
    command = f"python -m tagtune.tiny.v2.build --seed {seed}" + codec_flags(s)
    record = build_record(s, command, seeds, corpus, timer, paths, cfg,
                          {"codec": codec_stats, "gpt": gpt_history}, quality)
    atomic_write_text(Path(out_dir) / BUILD_FILE, json.dumps(record, indent=2) + "\n")
    return record


def codec_flags(s: BuildSettingsV2) -> str:
    """The command-line flags that give ``s``'s codec fit where it is not the default one."""
    default = BuildSettingsV2()
    flags = ""
    if s.codec_event_share != default.codec_event_share:
        flags += f" --codec-event-share {s.codec_event_share}"
    if s.sizes.codec_codebook_dim != default.sizes.codec_codebook_dim:
        flags += f" --codec-dim {s.sizes.codec_codebook_dim}"
    return flags


def build_record(s: BuildSettingsV2, command: str, seeds: dict, corpus: dict, timer, paths: dict[str, Path], cfg,
                 results: dict, quality: dict) -> dict:
    corpus = dict(corpus)
    sizes = {name: p.stat().st_size for name, p in paths.items()}
    return {
        "builder": "tagtune.tiny.v2.build",
        "command": command,
        "seed": s.seed,
        "stage_seeds": seeds,
        "settings": s.to_dict(),
        "voice_roles": {"engine": corpus["engine"], **corpus.pop("voice_roles")},
        "corpus": corpus,
        "vocab_size": cfg.gpt.number_text_tokens,
        "storage_dtypes": files.STORAGE_DTYPES,
        "quality": quality,
        "results": results,
        "timings_s": {**timer.seconds, "total": round(sum(timer.seconds.values()), 2)},
        "cpu_seconds": {**timer.cpu_seconds, "total": round(sum(timer.cpu_seconds.values()), 2)},
        "files": {p.relative_to(paths["config"].parent).as_posix(): {"bytes": sizes[n], "sha256": file_sha256(p)}
                  for n, p in paths.items()},
        "folder_mb": round(sum(sizes.values()) / 1e6, 3),
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "machine": platform.machine(), "torch_threads": s.threads},
        "notes": [
            "Corpus: untagged English and Mandarin (espeak-ng cmn) read by the pretrain voices only; the fine-tune "
            "and held-out voices of voice_roles never reach the base (the build raises otherwise).",
            "w2v-BERT 2.0: seeded random init at width 1024 (the official GPT's conditioner input), one layer, "
            "read as hidden_states[1], the output projections of its residual branches scaled by 0.1 (a full-scale "
            "random layer mixes every frame with the whole utterance); wav2vec2bert_stats.pt: mean and variance of "
            "that layer on the fitting clips.",
            "Semantic codec: seeded random encoder; in_project = the top codebook_dim principal directions of its "
            "output on the fitting clips, out_project their transpose, codebook = spherical k-means of the "
            "projected frames. Fitting clips: the GPT's training clips plus corpus.codec_fit (the same voices, half "
            "of its clips with the generator's laughs, giggles or sighs): a codec needs codes for those sounds. "
            "settings.codec_event_share of the fitted rows come from inside those events (3 % in the natural mix). "
            "results.codec.codec_clips_codes: on the codec clips, the mutual information (nats) between a row's "
            "code and its label (speech or the event's tag), and per tag its distinct codes and the Jensen-Shannon "
            "divergence of its code histogram from speech's. The GPT never hears an event: its corpus is untagged.",
            "GPT: pre-trained on the semantic codes, speaker and emotion prompt = a crop of another clip of the same "
            "speaker. s2mel, CAMPPlus, BigVGAN v2 and the emotion matrices are seeded random networks: the tiny "
            "base's audio is noise, and what it learns is judged on the semantic codes.",
            "quality: per language, validation code CE (stored weights) and the stop-code rate: the share of "
            "check_texts validation texts whose sampled generation (official IndexTTS2 decoding, prompt = another "
            "clip of the same voice) ends with the stop code before the length limit.",
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tagtune.tiny.v2.build", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", nargs="?", default=str(DEFAULT_OUT))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="seconds-long smoke build (tests)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1: reproducible)")
    p.add_argument("--codec-event-share", type=float, default=None,
                   help="share of the codec's fitted rows drawn from inside events (default 0: all rows alike)")
    p.add_argument("--codec-dim", type=int, default=None, help="the codec's codebook dimension (default 8)")
    a = p.parse_args(argv)
    settings = BuildSettingsV2.quick() if a.quick else BuildSettingsV2()
    if a.threads:
        settings = replace(settings, threads=a.threads)
    if a.codec_event_share is not None:
        if not 0.0 <= a.codec_event_share < 1.0:
            p.error(f"--codec-event-share must be in [0, 1), got {a.codec_event_share}")
        settings = replace(settings, codec_event_share=a.codec_event_share)
    if a.codec_dim is not None:
        settings = replace(settings, sizes=replace(settings.sizes, codec_codebook_dim=a.codec_dim))
    record = build_tiny_model_v2(a.out_dir, a.seed, settings)
    print(f"tiny v2 base written to {a.out_dir} in {record['timings_s']['total']:.0f} s "
          f"({record['folder_mb']:.2f} MB); python {platform.python_version()}, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
