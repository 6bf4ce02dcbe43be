"""Build the tiny IndexTTS base model in the official folder format, deterministically, on a CPU.

    python -m tagtune.tiny.build [OUT_DIR] [--seed 0] [--minutes 9] [--quick]

Steps: untagged English + Mandarin synthetic corpus (pre-training voices only) -> sentencepiece
``bpe.model`` -> DVAE (random encoder, k-means codebook, fitted decoder) -> GPT pre-training -> BigVGAN
fit -> files. Every stage is seeded and bounded by step counts, so a seed gives the same weights;
``BUILD.json`` records settings, the voices of each role, losses, per-language quality (validation mel CE,
stop-code rate), timings and the SHA-256 of every file.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from tagtune.audio import MelSpectrogram
from tagtune.text.normalize import TextNormalizer
from tagtune.text.tokenizer import TextTokenizer
from tagtune.tiny import files
from tagtune.tiny.bpe import USER_SYMBOLS, check_layout, official_text, train_bpe
from tagtune.tiny.corpus import Clip, load_clips, make_corpus, split_by_speaker
from tagtune.tiny.dvae_fit import build_dvae, reconstruction_l1
from tagtune.tiny.pretrain import Example, PretrainSettings, evaluate, pretrain, same_speaker
from tagtune.tiny.quality import language_quality
from tagtune.tiny.settings import BuildSettings, tiny_config
from tagtune.tiny.vocoder_stage import build_vocoder

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "assets" / "tiny-base"
SEED_OFFSETS = {"corpus": 0, "split": 1, "dvae": 2, "gpt": 3, "vocoder": 4}  # one stream per stage


@dataclass
class Timer:
    """Wall-clock and CPU seconds per stage (CPU time of this process and its children, e.g. espeak-ng)."""

    seconds: dict = field(default_factory=dict)
    cpu_seconds: dict = field(default_factory=dict)

    @staticmethod
    def _cpu() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    @contextmanager
    def stage(self, name: str, log=print):
        start, cpu = time.perf_counter(), self._cpu()
        log(f"[tiny build] {name} ...")
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        self.cpu_seconds[name] = round(self._cpu() - cpu, 2)
        log(f"[tiny build] {name} done in {self.seconds[name]:.1f} s (cpu {self.cpu_seconds[name]:.1f} s)")


@contextmanager
def torch_threads(n: int):
    """Run with ``n`` intra-op threads, restoring the previous count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_tokenizer(clips: list[Clip], train_idx: list[int], vocab_size: int) -> tuple[bytes, TextTokenizer]:
    """Train ``bpe.model`` on the training text written the official way; returns it and a tokenizer.

    A character that only validation text has (a small corpus may lack a letter) is added as one extra line
    of single characters, so it gets a piece of its own without the pieces learning from validation text;
    CJK characters need no such line, they are user-defined symbols.
    """
    normalizer = TextNormalizer()
    lines = [official_text(c.text, normalizer) for c in clips]
    train_lines = [lines[i] for i in train_idx]
    missing = sorted(set("".join(lines)) - set("".join(train_lines)) - set(USER_SYMBOLS) - {" "})
    model = train_bpe(train_lines + ([" ".join(missing)] if missing else []), vocab_size)
    check_layout(model)
    return model, TextTokenizer(model, normalizer=normalizer)


def make_examples(clips: list[Clip], tok: TextTokenizer, dvae) -> list[Example]:
    """Text ids and DVAE codes of every clip; raises if a transcript needs the ``<unk>`` piece."""
    out = []
    with torch.no_grad():
        for c in clips:
            ids = tok.encode(c.text)
            if tok.unk_token_id in ids:
                raise ValueError(f"the tokenizer does not cover {c.text!r}: {tok.tokenize(c.text)}")
            codes = dvae.get_codebook_indices(c.mel[None])[0]
            out.append(Example(torch.tensor(ids, dtype=torch.long), codes, len(c.wav), c.speaker))
    return out


def fitting(examples: list[Example], indices: list[int], cfg) -> list[int]:
    """The ``indices`` whose text and codes fit the GPT's position tables (a rare long clip would not)."""
    return [i for i in indices if len(examples[i].text_ids) <= cfg.gpt.max_text_tokens
            and len(examples[i].codes) <= cfg.gpt.max_mel_tokens]


def build_tiny_model(out_dir: str | Path = DEFAULT_OUT, seed: int = 0, minutes: float | None = None,
                     settings: BuildSettings | None = None, log=print) -> dict:
    """Build the tiny base into ``out_dir`` (official layout + BUILD.json); returns the BUILD.json record.

    ``minutes`` scales the GPT and vocoder step counts (nominal CPU minutes of training; still
    deterministic, since steps, not time, are fixed). ``settings`` overrides the recipe (e.g.
    ``BuildSettings.quick()`` for tests); its seed is replaced by ``seed``.
    """
    s = replace(settings or BuildSettings(), seed=seed)
    if minutes is not None:
        s = s.scaled(minutes)
    timer = Timer()
    seeds = {k: seed * 100 + v for k, v in SEED_OFFSETS.items()}
    with torch_threads(s.threads), tempfile.TemporaryDirectory(prefix="tagtune-tiny-") as tmp:
        with timer.stage("corpus", log):
            corpus = make_corpus(Path(tmp) / "corpus", s.n_clips, seeds["corpus"], s.engine, s.chinese_fraction)
            clips = load_clips(Path(tmp) / "corpus", MelSpectrogram(precise=False))
            train_idx, val_idx = split_by_speaker(clips, s.val_fraction, seeds["split"])
        with timer.stage("tokenizer", log):
            bpe, tok = make_tokenizer(clips, train_idx, s.vocab_size)
            cfg = tiny_config(tok.vocab_size, s.sizes)
        with timer.stage("dvae", log):
            mels = [c.mel for c in clips]
            dvae, dvae_stats = build_dvae(cfg.vqvae, [mels[i] for i in train_idx], seeds["dvae"],
                                          s.dvae_decoder_steps)
            dvae_stats["val_reconstruction_l1"] = round(reconstruction_l1(dvae, [mels[i] for i in val_idx]), 4)
            examples = make_examples(clips, tok, dvae)
            n_before = len(train_idx) + len(val_idx)
            train_idx, val_idx = fitting(examples, train_idx, cfg), fitting(examples, val_idx, cfg)
            corpus["too_long_dropped"] = n_before - len(train_idx) - len(val_idx)
        with timer.stage("gpt", log):
            ps = PretrainSettings(steps=s.gpt_steps, batch_size=s.gpt_batch, lr=s.gpt_lr, seed=seeds["gpt"])
            gpt, gpt_history = pretrain(cfg.gpt, examples, mels, train_idx, val_idx, ps, log)
            files.round_trip(gpt, files.STORAGE_DTYPES["gpt"])  # measure and use what will be shipped
            gpt_history["stored_val"] = evaluate(gpt, examples, val_idx, mels,
                                                 same_speaker(examples, train_idx + val_idx))
            quality, gpt_history["generation_check"] = language_quality(gpt, examples, clips, train_idx, val_idx,
                                                                        s.check_texts, seeds["gpt"])
        with timer.stage("vocoder", log):
            vocoder, voc_stats = build_vocoder(cfg.bigvgan, gpt, examples, clips, train_idx, val_idx, s,
                                               seeds["vocoder"], log)
    with timer.stage("write", log):
        paths = files.write_folder(Path(out_dir), cfg, bpe, gpt, dvae, vocoder)
    command = "python -m tagtune.tiny.build" + f" --seed {seed}" + (f" --minutes {minutes}" if minutes else "")
    record = files.build_record(s, command, seeds, corpus, timer, paths, cfg,
                                {"dvae": dvae_stats, "gpt": gpt_history, "vocoder": voc_stats}, quality)
    files.write_build_json(Path(out_dir), record)
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tagtune.tiny.build", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", nargs="?", default=str(DEFAULT_OUT))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=None, help="nominal CPU minutes of training (scales steps)")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke build (tests)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1: reproducible)")
    a = p.parse_args(argv)
    settings = BuildSettings.quick() if a.quick else BuildSettings()
    if a.threads:
        settings = replace(settings, threads=a.threads)
    record = build_tiny_model(a.out_dir, a.seed, a.minutes, settings)
    print(f"tiny base written to {a.out_dir} in {record['timings_s']['total']:.0f} s "
          f"({record['folder_mb']:.2f} MB); python {platform.python_version()}, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
