"""``tagtune selftest``: recompute every tensor of a parity fixture and compare.

A fixture folder holds ``checkpoint/`` (an official-format model), ``inputs/`` (``ref.wav``, optionally
``ref_<name>.wav`` at other rates/channels, ``texts.json``), ``expected.safetensors`` (tensors the official
release computed) and optionally ``expected_text.json``. What to compute is read from the expected tensor
names, so any fixture of this layout works (other sizes, seeds, v1.0-style configs). Each stage takes the
fixture's own inputs for that stage (e.g. the expected ``cond_mel``), so one error does not cascade.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tagtune.audio import SAMPLE_RATE
from tagtune.generation.postprocess import SILENT_TOKEN

FLOAT_ATOL = 1e-4
MEL_ATOL = 2e-3
LOSS_RTOL = 1e-5
DEFAULT_MAX_TOKENS = 600


@dataclass
class Result:
    name: str
    status: str  # PASS | FAIL | INFO | SKIP
    detail: str


def compare(name: str, got: torch.Tensor, want: torch.Tensor, atol: float | None = None,
            rtol: float | None = None, informational: bool = False) -> Result:
    """Integer tensors must be equal; float tensors within ``atol`` (or ``rtol`` of the value)."""
    bad = "INFO" if informational else "FAIL"
    if tuple(got.shape) != tuple(want.shape):
        return Result(name, bad, f"shape {tuple(got.shape)} != expected {tuple(want.shape)}")
    if not want.is_floating_point():
        n = int((got.long() != want.long()).sum())
        return Result(name, "PASS" if n == 0 else bad, f"exact ({n} of {want.numel()} differ)")
    err = (got.double() - want.double()).abs().max().item() if want.numel() else 0.0
    tol = atol if atol is not None else rtol * max(want.abs().max().item(), 1e-12)
    kind = f"atol {atol:g}" if atol is not None else f"rtol {rtol:g}"
    return Result(name, "PASS" if err <= tol else bad, f"max abs err {err:.2e} ({kind})")


class Fixture:
    """The fixture folder and its model, loaded once."""

    def __init__(self, root: Path):
        from safetensors.torch import load_file

        from tagtune.loaders import load_model

        self.root = Path(root)
        self.check_layout(self.root)
        self.exp = load_file(str(self.root / "expected.safetensors"))
        self.model = load_model(self.root / "checkpoint")
        texts = self.root / "inputs" / "texts.json"
        self.texts = [t["text"] for t in json.loads(texts.read_text())] if texts.exists() else []
        et = self.root / "expected_text.json"
        self.expected_text = json.loads(et.read_text()) if et.exists() else None
        readme = self.root / "README.md"
        m = re.search(r"max_generate_length=(\d+)", readme.read_text()) if readme.exists() else None
        self.max_tokens = int(m.group(1)) if m else DEFAULT_MAX_TOKENS

    @staticmethod
    def check_layout(root: Path) -> None:
        for need in ("checkpoint", "inputs", "expected.safetensors"):
            if not (root / need).exists():
                from tagtune.errors import UserError

                raise UserError(f"{root}: not a fixture folder (missing {need})")

    def has(self, *names: str) -> bool:
        return all(n in self.exp for n in names)


# ---------------------------------------------------------------------------------------------- stages


def check_audio(fx: Fixture) -> list[Result]:
    from tagtune.audio import load_audio, load_reference, resample, to_mono

    out = []
    mel = fx.model.mel
    if fx.has("cond_mel"):
        out.append(compare("cond_mel", mel(load_reference(fx.root / "inputs" / "ref.wav")), fx.exp["cond_mel"],
                           MEL_ATOL))
    for key in sorted(fx.exp):
        if m := re.fullmatch(r"cond_mel_from_(\w+)", key):
            wav = fx.root / "inputs" / f"ref_{m.group(1)}.wav"
            out.append(compare(key, mel(load_reference(wav)), fx.exp[key], MEL_ATOL))
        if m := re.fullmatch(r"ref_(\w+)_mono_resampled", key):
            wav, sr = load_audio(fx.root / "inputs" / f"ref_{m.group(1)}.wav")
            out.append(compare(key, resample(to_mono(wav), sr, SAMPLE_RATE), fx.exp[key], FLOAT_ATOL))
    return out


def check_text(fx: Fixture) -> list[Result]:
    from tagtune.text import TextTokenizer

    bpe = fx.model.model_dir / fx.model.config.dataset.bpe_model
    raw = TextTokenizer(bpe, normalizer=None)
    out = []
    for i, text in enumerate(fx.texts):
        if f"text_ids_{i}" in fx.exp:
            out.append(compare(f"text_ids_{i}", torch.tensor([raw.encode(text)]), fx.exp[f"text_ids_{i}"]))
    norm = TextTokenizer(bpe)
    wetext = getattr(norm.normalizer, "uses_wetext", False)
    for i, text in enumerate(fx.texts):
        key = f"text_ids_norm_{i}"
        if key in fx.exp:
            r = compare(key, torch.tensor([norm.encode(text)]), fx.exp[key])
            if r.status == "FAIL" and not wetext:
                r = Result(key, "SKIP", r.detail + "; the wetext normaliser is not installed (pip install wetext)")
            out.append(r)
    if fx.expected_text:
        out += _check_text_records(fx.expected_text, norm, wetext)
    return out


def _check_text_records(et: dict, tok, wetext: bool) -> list[Result]:
    out = []
    for i, rec in enumerate(et.get("texts", [])):
        label = rec.get("name", i)
        if "normalized" in rec and wetext:
            got = tok.normalizer.normalize(rec["text"]) if len(rec["text"].strip()) > 1 else rec["text"]
            ok = got == rec["normalized"]
            out.append(Result(f"text[{label}].normalized", "PASS" if ok else "FAIL", "exact" if ok else repr(got)))
        for key in [k for k in rec if k.startswith("sentences_")]:
            n = int(key.split("_")[1])
            with warnings.catch_warnings():  # tiny limits force the documented hard-cut warning
                warnings.simplefilter("ignore")
                got = tok.split_sentences(rec["pieces_norm"], n)
            ok = got == rec[key]
            out.append(Result(f"text[{label}].{key}", "PASS" if ok else "FAIL", "exact" if ok else f"{got}"))
    return out


def check_models(fx: Fixture) -> list[Result]:
    out = []
    e, gpt = fx.exp, fx.model.gpt
    if not fx.has("cond_mel"):
        return out
    T = torch.tensor([e["cond_mel"].shape[-1]])
    with torch.no_grad():
        if fx.has("dvae_codes"):
            out.append(compare("dvae_codes", fx.model.dvae.get_codebook_indices(e["cond_mel"]), e["dvae_codes"]))
        if fx.has("conformer_out"):
            x, _ = gpt.conditioning_encoder(e["cond_mel"].transpose(1, 2), T)
            out.append(compare("conformer_out", x, e["conformer_out"], FLOAT_ATOL))
        if fx.has("conds"):
            out.append(compare("conds", gpt.get_conditioning(e["cond_mel"], T), e["conds"], FLOAT_ATOL))
        out += _check_training_forward(fx)
        if fx.has("latent_text_ids", "latent_codes", "latents"):
            n = e["latent_codes"].shape[1]
            lat = gpt(e["cond_mel"], e["latent_text_ids"], torch.tensor([e["latent_text_ids"].shape[1]]),
                      e["latent_codes"], torch.tensor([n * gpt.cfg.mel_length_compression]), T, return_latent=True)
            out.append(compare("latents", lat, e["latents"], FLOAT_ATOL))
        voc = fx.model.vocoder
        if fx.has("spk_emb"):
            out.append(compare("spk_emb", voc.speaker_embedding(e["cond_mel"].transpose(1, 2)), e["spk_emb"],
                               FLOAT_ATOL))
        if fx.has("latents", "wav"):
            out.append(compare("wav", voc(e["latents"], e["cond_mel"].transpose(1, 2)), e["wav"], FLOAT_ATOL))
    return out


def _check_training_forward(fx: Fixture) -> list[Result]:
    e = fx.exp
    names = ("batch_cond_mel", "batch_cond_mel_lengths", "batch_text_ids", "batch_text_lengths", "batch_codes",
             "batch_wav_lengths")
    if not fx.has(*names):
        return []
    lt, lm, logits = fx.model.gpt(e["batch_cond_mel"], e["batch_text_ids"], e["batch_text_lengths"],
                                  e["batch_codes"], e["batch_wav_lengths"], e["batch_cond_mel_lengths"])
    out = []
    for name, got in (("loss_text", lt), ("loss_mel", lm)):
        if name in e:
            out.append(compare(name, got, e[name], rtol=LOSS_RTOL))
    if "mel_logits" in e:
        out.append(compare("mel_logits", logits, e["mel_logits"], FLOAT_ATOL))
    return out


GEN_NAME = re.compile(r"codes_greedy(?P<batch>_batch)?(?:_rep(?P<rep>\d+))?_?(?P<cache>nocache|cache)?")


def check_generation(fx: Fixture) -> list[Result]:
    from tagtune.generation import GenerationConfig, generate_codes

    e, out = fx.exp, []
    if not fx.has("cond_mel"):
        return out
    T = torch.tensor([e["cond_mel"].shape[-1]])
    for key in sorted(k for k in e if k.startswith("codes_greedy")):
        m = GEN_NAME.fullmatch(key)
        ids_key = "gen_batch_text_ids" if m and m.group("batch") else "gen_text_ids"
        if not m or ids_key not in e:
            out.append(Result(key, "SKIP", "name not understood by this selftest"))
            continue
        cache = m.group("cache") != "nocache"
        cfg = GenerationConfig.greedy(repetition_penalty=float(m.group("rep") or 1.0), max_new_tokens=fx.max_tokens,
                                      use_cache=cache, position_mode="official" if cache else "train")
        with torch.no_grad():
            codes, _ = generate_codes(fx.model.gpt, e[ids_key].int(), cfg, cond_mel=e["cond_mel"], cond_mel_lengths=T)
        out.append(compare(key, codes, e[key]))
    for key in sorted(k for k in e if re.fullmatch(r"codes_beam(\d+)_sample_seed(\d+)", k)):
        beams, seed = map(int, re.fullmatch(r"codes_beam(\d+)_sample_seed(\d+)", key).groups())
        torch.manual_seed(seed)
        with torch.no_grad():
            codes, _ = generate_codes(fx.model.gpt, e["gen_text_ids"].int(), GenerationConfig(
                num_beams=beams, max_new_tokens=fx.max_tokens), cond_mel=e["cond_mel"], cond_mel_lengths=T)
        r = compare(key, codes, e[key], informational=True)
        out.append(Result(key, "PASS" if r.status == "PASS" else "INFO", r.detail + " (RNG-dependent)"))
    return out


def check_postprocess(fx: Fixture) -> list[Result]:
    from tagtune.generation import remove_long_silence

    e, stop, out = fx.exp, fx.model.config.gpt.stop_mel_token, []
    for prefix, rows in (("rls", None), ("rls1", slice(0, 1))):
        if fx.has("rls_codes_in", f"{prefix}_codes_out", f"{prefix}_lens_out"):
            src = e["rls_codes_in"] if rows is None else e["rls_codes_in"][rows]
            codes, lens = remove_long_silence(src, SILENT_TOKEN, 30, stop_token=stop)
            out.append(compare(f"{prefix}_codes_out", codes, e[f"{prefix}_codes_out"]))
            out.append(compare(f"{prefix}_lens_out", lens, e[f"{prefix}_lens_out"]))
    return out


def check_end_to_end(fx: Fixture) -> list[Result]:
    """The official ``infer(ref.wav, texts[0])`` with greedy decoding, stage by stage from the raw inputs."""
    from tagtune.audio import load_reference
    from tagtune.generation import GenerationConfig, generate_codes, latents_for_vocoder, remove_long_silence
    from tagtune.text import TextTokenizer

    e = fx.exp
    if not (fx.has("e2e_codes") or fx.has("e2e_pcm16")) or not fx.texts:
        return []
    m, gpt = fx.model, fx.model.gpt
    tok = TextTokenizer(m.model_dir / m.config.dataset.bpe_model)
    ids = torch.tensor([tok.encode(fx.texts[0])], dtype=torch.int32)
    with torch.no_grad():
        cond = m.mel(load_reference(fx.root / "inputs" / "ref.wav"))
        conds = gpt.get_conditioning(cond, torch.tensor([cond.shape[-1]]))
        greedy = GenerationConfig.greedy(repetition_penalty=1.0, max_new_tokens=fx.max_tokens)  # as the fixture ran
        codes, _ = generate_codes(gpt, ids, greedy, conds=conds)
        codes, lens = remove_long_silence(codes, SILENT_TOKEN, 30, stop_token=m.config.gpt.stop_mel_token)
        out = [compare("e2e_codes", codes, e["e2e_codes"])] if "e2e_codes" in e else []
        lat = latents_for_vocoder(gpt, conds, ids, codes, lens)
        wav = m.vocoder(lat, cond.transpose(1, 2))
        pcm = torch.clamp(32767 * wav, -32767, 32767).to(torch.int16).reshape(1, -1)
    if "e2e_pcm16" in e:
        diff = (pcm.long() - e["e2e_pcm16"].long()).abs() if pcm.shape == e["e2e_pcm16"].shape else None
        if diff is None:
            out.append(Result("e2e_pcm16", "FAIL", f"shape {tuple(pcm.shape)} != {tuple(e['e2e_pcm16'].shape)}"))
        else:  # fp32 noise of ~1e-5 can move a sample across an integer boundary: allow 1 LSB
            n = int((diff > 1).sum())
            out.append(Result("e2e_pcm16", "PASS" if n == 0 else "FAIL",
                              f"max |diff| {int(diff.max())} LSB, {int((diff > 0).sum())} samples off by 1 "
                              "(tol 1 LSB)"))
    return out


STAGES: list[tuple[str, Callable[[Fixture], list[Result]]]] = [
    ("audio", check_audio), ("text", check_text), ("models", check_models), ("generation", check_generation),
    ("post-processing", check_postprocess), ("end to end", check_end_to_end),
]


def _open_fixture(root: Path):
    """The fixture and its stages: IndexTTS-2 fixtures (see ``selftest_v2``) are told by their config."""
    from tagtune.checkpoint import model_family

    if (root / "checkpoint").is_dir() and model_family(root / "checkpoint") == "v2":
        from tagtune import selftest_v2

        Fixture.check_layout(root)
        return selftest_v2.FixtureV2(root), selftest_v2.STAGES
    return Fixture(root), STAGES


def run_selftest(fixture_dir: str | Path, verbose: bool = False) -> int:
    """Print one line per tensor; 0 when nothing failed."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    fx, stages = _open_fixture(Path(fixture_dir))
    results: list[Result] = []
    for stage, fn in stages:
        try:
            results += fn(fx)
        except Exception as exc:  # a crash in one stage is reported as its failure; the others still run
            if verbose:
                raise
            results.append(Result(stage, "FAIL", f"{type(exc).__name__}: {exc}"))
    width = max((len(r.name) for r in results), default=10)
    for r in results:
        print(f"{r.status:4}  {r.name:<{width}}  {r.detail}")
    counts = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "INFO", "SKIP")}
    print(f"selftest {fx.root}: {counts['PASS']} passed, {counts['FAIL']} failed"
          + (f", {counts['SKIP']} skipped" if counts["SKIP"] else "")
          + (f", {counts['INFO']} informational" if counts["INFO"] else "")
          + f" in {time.perf_counter() - t0:.1f} s")
    return 1 if counts["FAIL"] else 0
