"""``tagtune selftest`` for an IndexTTS-2 parity fixture: recompute every expected tensor and compare.

The fixture folder holds ``checkpoint/`` (an official IndexTTS-2 folder with its auxiliary models in
``hf_cache/``), ``inputs/`` (reference wavs, ``texts.json``), ``expected.safetensors``, ``expected_text.json``
and a README. What to compute comes from the expected tensor names and the README's tables (which file each
reference prefix is, and each run's speaker, emotion prompt, text, alpha, emotion vector, repetition penalty and
KV cache), so a fixture of other sizes and runs works the same way. Each stage is fed the fixture's own inputs
of that stage, so one error does not cascade; ``<run>_pcm16`` is the exception: it runs the whole pipeline
from the wav files (``TTSV2`` in ``compat="official"``). Tolerances are the README's: 1e-4, mels and fbank
2e-3, BigVGAN alone 2e-4, integers exact, PCM ±4 LSB.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from tagtune.selftest import Result, compare

ATOL = 1e-4
MEL_ATOL = 2e-3
VOCODER_ATOL = 2e-4
PCM_LSB = 4
DEFAULT_MAX_TOKENS = 1500
DEFAULT_CFM_SEED = 1234


@dataclass(frozen=True)
class RunSpec:
    """One row of the README's Runs table."""

    speaker: str
    emotion: str
    text: int
    alpha: float
    emo_vector: list[float] | None
    repetition_penalty: float
    cache: bool


def _table(readme: str, first: str) -> list[dict[str, str]]:
    """The markdown table whose header's first cell is ``first``, as dicts keyed by header cell."""
    lines = readme.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first:
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(cells, (c.strip() for c in row.strip().strip("|").split("|")), strict=False)))
            return rows
    return []


def parse_runs(readme: str) -> dict[str, RunSpec]:
    runs = {}
    for row in _table(readme, "run"):
        try:
            vector = row.get("emo_vector", "—")
            runs[row["run"]] = RunSpec(
                row["spk"], row["emo prompt"], int(row["text"]), float(row["emo_alpha"]),
                json.loads(vector) if vector.startswith("[") else None, float(row["rep. penalty"]),
                row["KV cache"] == "on")
        except (KeyError, ValueError):
            continue
    return runs


class FixtureV2:
    """An IndexTTS-2 fixture folder and its model, loaded once."""

    def __init__(self, root: Path):
        from safetensors.torch import load_file

        from tagtune.loaders import load_model_v2

        self.root = Path(root)
        self.exp = load_file(str(self.root / "expected.safetensors"))
        self.model = load_model_v2(self.root / "checkpoint")
        texts = self.root / "inputs" / "texts.json"
        self.texts = [t["text"] for t in json.loads(texts.read_text(encoding="utf-8"))] if texts.exists() else []
        et = self.root / "expected_text.json"
        self.expected_text = json.loads(et.read_text(encoding="utf-8")) if et.exists() else None
        readme_path = self.root / "README.md"
        readme = readme_path.read_text(encoding="utf-8") if readme_path.exists() else ""
        self.runs = parse_runs(readme)
        self.speaker_files = {r["ref"]: r["file"] for r in _table(readme, "ref") if "file" in r}
        self.emotion_files = dict(re.findall(r"^- `(\w+)`: (\S+\.wav)", readme, flags=re.M))
        m = re.search(r"max_generate_length\W+(\d+)", readme)
        self.max_tokens = int(m.group(1)) if m else DEFAULT_MAX_TOKENS
        m = re.search(r"torch\.manual_seed\((\d+)\)` is called right before every `CFM", readme)
        self.cfm_seed = int(m.group(1)) if m else DEFAULT_CFM_SEED

    def has(self, *names: str) -> bool:
        return all(n in self.exp for n in names)

    def prefixes(self, suffix: str) -> list[str]:
        """Prefixes p with an expected tensor ``p + suffix`` (sorted)."""
        return sorted(k[: -len(suffix)] for k in self.exp if k.endswith(suffix))

    def input_file(self, prefix: str, emotion: bool) -> Path:
        """The wav of a reference prefix: as the README names it, else the one ``inputs/ref_<prefix>_*.wav``."""
        name = (self.emotion_files if emotion else self.speaker_files).get(prefix)
        if name is not None:
            return self.root / "inputs" / name
        found = sorted((self.root / "inputs").glob(f"ref_{prefix}_*.wav"))
        if len(found) != 1:
            raise ValueError(f"the README names no {'emotion' if emotion else 'speaker'} file for {prefix!r}")
        return found[0]


# ---------------------------------------------------------------------------------------------- stages


def check_text(fx: FixtureV2) -> list[Result]:
    from tagtune.text import TextTokenizer, tokenize_by_cjk_char

    tok = TextTokenizer(fx.model.model_dir / fx.model.config.dataset.bpe_model)
    out = []
    for i, text in enumerate(fx.texts):
        if f"text_ids_{i}" in fx.exp:
            ids = tok.convert_tokens_to_ids(tok.tokenize(text))
            out.append(compare(f"text_ids_{i}", torch.tensor([ids]), fx.exp[f"text_ids_{i}"]))
    et = fx.expected_text or {}
    if "pieces" in et:
        ok = tok.convert_ids_to_tokens(list(range(tok.vocab_size))) == et["pieces"]
        out.append(Result("bpe pieces", "PASS" if ok else "FAIL", f"{tok.vocab_size} pieces"))
    for rec in et.get("texts", []):
        label = rec.get("name", "?")
        checks = {"normalized": lambda r: tok.normalizer.normalize(r["text"]),
                  "cjk_split": lambda r: tokenize_by_cjk_char(r["normalized"]),
                  "pieces": lambda r: tok.tokenize(r["text"]),
                  "ids": lambda r: tok.convert_tokens_to_ids(tok.tokenize(r["text"])),
                  "unk_count": lambda r: tok.encode(r["text"]).count(tok.unk_token_id)}
        for key, fn in checks.items():
            if key in rec:
                got = fn(rec)
                out.append(Result(f"text[{label}].{key}", "PASS" if got == rec[key] else "FAIL",
                                  "exact" if got == rec[key] else repr(got)))
        for key in [k for k in rec if re.fullmatch(r"segments_\d+", k)]:
            import warnings

            with warnings.catch_warnings():  # tiny limits force the documented fixed-size cut and its warning
                warnings.simplefilter("ignore")
                got = tok.split_segments(rec["pieces"], int(key.split("_")[1]))
            out.append(Result(f"text[{label}].{key}", "PASS" if got == rec[key] else "FAIL",
                              "exact" if got == rec[key] else repr(got)))
    return out


def check_prompt_audio(fx: FixtureV2) -> list[Result]:
    from tagtune.audio_v2 import campplus_features, emotion_prompt, speaker_prompt

    out, e, m = [], fx.exp, fx.model
    for p in fx.prefixes("_audio_22k"):
        prompt = speaker_prompt(fx.input_file(p, emotion=False))
        out.append(compare(f"{p}_audio_22k", prompt.audio_22k, e[f"{p}_audio_22k"], ATOL))
        if fx.has(f"{p}_audio_16k"):
            out.append(compare(f"{p}_audio_16k", prompt.audio_16k, e[f"{p}_audio_16k"], ATOL))
        if fx.has(f"{p}_ref_mel"):
            out.append(compare(f"{p}_ref_mel", m.prompt_mel(e[f"{p}_audio_22k"]), e[f"{p}_ref_mel"], MEL_ATOL))
        if fx.has(f"{p}_fbank", f"{p}_audio_16k"):
            out.append(compare(f"{p}_fbank", campplus_features(e[f"{p}_audio_16k"])[0], e[f"{p}_fbank"], MEL_ATOL))
    for p in fx.prefixes("_emo_audio_16k"):
        got = emotion_prompt(fx.input_file(p, emotion=True))
        out.append(compare(f"{p}_emo_audio_16k", got, e[f"{p}_emo_audio_16k"], ATOL))
    return out


def check_features(fx: FixtureV2) -> list[Result]:
    from tagtune.models.v2.semantic_features import extract_inputs

    out, e, m = [], fx.exp, fx.model
    with torch.no_grad():
        for kind, audio, emb in (("", "_audio_16k", "_spk_cond_emb"), ("_emo", "_emo_audio_16k", "_emo_cond_emb")):
            for p in fx.prefixes(audio):
                feats_key, mask_key = f"{p}{kind}_input_features", f"{p}{kind}_attention_mask"
                if not fx.has(feats_key, mask_key):
                    continue
                feats, mask = extract_inputs(m.feature_extractor, e[f"{p}{audio}"])
                out += [compare(feats_key, feats, e[feats_key], ATOL), compare(mask_key, mask, e[mask_key])]
                if fx.has(f"{p}_w2v_hidden_state_k") and not kind:
                    got = m.semantic_features.hidden_state(e[feats_key], e[mask_key])
                    out.append(compare(f"{p}_w2v_hidden_state_k", got, e[f"{p}_w2v_hidden_state_k"], ATOL))
                if fx.has(f"{p}{emb}"):
                    got = m.semantic_features(e[feats_key], e[mask_key])
                    out.append(compare(f"{p}{emb}", got, e[f"{p}{emb}"], ATOL))
    return out


def check_codec_and_style(fx: FixtureV2) -> list[Result]:
    out, e, m = [], fx.exp, fx.model
    with torch.no_grad():
        for p in fx.prefixes("_spk_cond_emb"):
            if fx.has(f"{p}_S_ref_codes", f"{p}_S_ref"):
                codes, s_ref = m.semantic_codec.quantize(e[f"{p}_spk_cond_emb"])
                out += [compare(f"{p}_S_ref_codes", codes, e[f"{p}_S_ref_codes"]),
                        compare(f"{p}_S_ref", s_ref, e[f"{p}_S_ref"], ATOL)]
        for p in fx.prefixes("_fbank"):
            if fx.has(f"{p}_style"):
                out.append(compare(f"{p}_style", m.campplus(e[f"{p}_fbank"][None]), e[f"{p}_style"], ATOL))
        for p in fx.prefixes("_S_ref"):
            if fx.has(f"{p}_ref_mel", f"{p}_prompt_condition"):
                frames = torch.tensor([e[f"{p}_ref_mel"].shape[-1]])
                got = m.s2mel.content(e[f"{p}_S_ref"], frames)
                out.append(compare(f"{p}_prompt_condition", got, e[f"{p}_prompt_condition"], ATOL))
        for p in fx.prefixes("_ref_mel"):
            if fx.has(f"bigvgan_on_{p}_ref_mel"):
                got = m.vocoder(e[f"{p}_ref_mel"])
                out.append(compare(f"bigvgan_on_{p}_ref_mel", got, e[f"bigvgan_on_{p}_ref_mel"], VOCODER_ATOL))
    if fx.has("target_len_table"):
        from tagtune.audio_v2 import mel_frames_for_codes

        n = fx.exp["target_len_table"].shape[0]
        out.append(compare("target_len_table", mel_frames_for_codes(torch.arange(n)), fx.exp["target_len_table"]))
    return out


def check_conditioning(fx: FixtureV2) -> list[Result]:
    from tagtune.models.v2.gpt import feature_width_lengths as width

    out, e, gpt = [], fx.exp, fx.model.gpt
    with torch.no_grad():
        for p in fx.prefixes("_spk_cond_emb"):
            spk = e[f"{p}_spk_cond_emb"]
            if fx.has(f"{p}_spk_conformer_out"):
                got, _ = gpt.conditioning_encoder(spk, width(spk))
                out.append(compare(f"{p}_spk_conformer_out", got, e[f"{p}_spk_conformer_out"], ATOL))
            if fx.has(f"{p}_conds"):
                out.append(compare(f"{p}_conds", gpt.get_conditioning(spk, width(spk)), e[f"{p}_conds"], ATOL))
            if fx.has(f"{p}_spk_emovec_raw"):
                out.append(compare(f"{p}_spk_emovec_raw", gpt.get_emovec(spk, width(spk)), e[f"{p}_spk_emovec_raw"],
                                   ATOL))
        for p in fx.prefixes("_emo_cond_emb"):
            emo = e[f"{p}_emo_cond_emb"]
            if fx.has(f"{p}_emo_conformer_out"):
                got, _ = gpt.emo_conditioning_encoder(emo, width(emo))
                out.append(compare(f"{p}_emo_conformer_out", got, e[f"{p}_emo_conformer_out"], ATOL))
            if fx.has(f"{p}_emo_perceiver_out"):
                out.append(compare(f"{p}_emo_perceiver_out", gpt.get_emo_conditioning(emo, width(emo)),
                                   e[f"{p}_emo_perceiver_out"], ATOL))
            if fx.has(f"{p}_emovec_raw"):
                out.append(compare(f"{p}_emovec_raw", gpt.get_emovec(emo, width(emo)), e[f"{p}_emovec_raw"], ATOL))
        out += _check_batch(fx)
        out += _check_teacher_forcing(fx)
    return out


def _check_batch(fx: FixtureV2) -> list[Result]:
    """``batch_*``: the speaker features of every reference, zero-padded, with their true lengths."""
    e, gpt = fx.exp, fx.model.gpt
    if not fx.has("batch_cond_lengths"):
        return []
    members = [e[f"{p}_spk_cond_emb"][0] for p in fx.prefixes("_spk_cond_emb")]
    lengths = e["batch_cond_lengths"]
    if [x.shape[0] for x in members] != lengths.tolist():
        return [Result("batch_conds", "SKIP", "the batch rows are not the fixture's speaker references in order")]
    batch = torch.nn.utils.rnn.pad_sequence(members, batch_first=True)  # (B, T, 1024), zero padding
    out = []
    if fx.has("batch_conds"):
        out.append(compare("batch_conds", gpt.get_conditioning(batch, lengths), e["batch_conds"], ATOL))
    if fx.has("batch_emovec"):
        out.append(compare("batch_emovec", gpt.get_emovec(batch, lengths), e["batch_emovec"], ATOL))
    return out


def _check_teacher_forcing(fx: FixtureV2) -> list[Result]:
    e, gpt = fx.exp, fx.model.gpt
    names = ("tf_conds", "tf_emovec", "tf_text_ids", "tf_text_lengths", "tf_codes", "tf_code_lengths")
    if not fx.has(*names):
        return []
    args = [e[n] for n in names]
    logits, out = gpt.logits(*args), []
    if fx.has("tf_text_logits"):
        out.append(compare("tf_text_logits", logits.text_logits, e["tf_text_logits"], ATOL))
    if fx.has("tf_mel_logits"):
        out.append(compare("tf_mel_logits", logits.mel_logits, e["tf_mel_logits"], ATOL))
    if fx.has("tf_latent"):
        out.append(compare("tf_latent", gpt(*args), e["tf_latent"], ATOL))
    return out


def check_runs(fx: FixtureV2) -> list[Result]:
    """Per run: emotion vector, greedy codes, latents, s2mel stages and the vocoder, each from the fixture's
    inputs of that stage."""
    out = []
    for run in fx.prefixes("_codes_raw"):
        spec = fx.runs.get(run)
        if spec is None:
            out.append(Result(f"{run}_codes_raw", "SKIP", "the README's Runs table has no row for this run"))
            continue
        with torch.no_grad():
            out += _check_emovec(fx, run, spec) + _check_codes(fx, run, spec) + _check_s2mel(fx, run, spec)
    return out


def _check_emovec(fx: FixtureV2, run: str, spec: RunSpec) -> list[Result]:
    from tagtune.models.v2.gpt import (
        blend_emotion_vector,
        emotion_matrix_vector,
        emotion_rows,
        scale_emotion_weights,
    )
    from tagtune.models.v2.gpt import feature_width_lengths as width

    e, m = fx.exp, fx.model
    spk, emo = e[f"{spec.speaker}_spk_cond_emb"], e[f"{spec.emotion}_emo_cond_emb"]
    # with an emotion vector, alpha scales the weights and the prompt blend runs at alpha 1 (official infer)
    alpha = spec.alpha if spec.emo_vector is None else 1.0
    merged = m.gpt.merge_emovec(spk, emo, width(spk), width(emo), alpha)
    if spec.emo_vector is None:
        return [compare(f"{run}_emovec", merged, e[f"{run}_emovec"], ATOL)] if fx.has(f"{run}_emovec") else []
    out, cfg = [], m.config
    weights = torch.tensor(scale_emotion_weights(spec.emo_vector, spec.alpha), dtype=torch.float32)
    if fx.has(f"{run}_emo_weight_vector"):
        out.append(compare(f"{run}_emo_weight_vector", weights, e[f"{run}_emo_weight_vector"], 0.0))
    spk_matrix, emo_matrix = m.emotion_matrices
    rows = emotion_rows(e[f"{spec.speaker}_style"], spk_matrix, cfg.emo_num)
    mat = emotion_matrix_vector(weights, rows, emo_matrix, cfg.emo_num)
    for name, got, tol in ((f"{run}_spk_matrix_index", rows, None), (f"{run}_emovec_mat", mat, ATOL),
                           (f"{run}_emovec_merged", merged, ATOL)):
        if fx.has(name):
            out.append(compare(name, got, e[name], tol))
    if fx.has(f"{run}_emovec_mat", f"{run}_emovec_merged", f"{run}_emovec"):
        got = blend_emotion_vector(e[f"{run}_emovec_mat"], weights, e[f"{run}_emovec_merged"])
        out.append(compare(f"{run}_emovec", got, e[f"{run}_emovec"], ATOL))
    return out


def _check_codes(fx: FixtureV2, run: str, spec: RunSpec) -> list[Result]:
    from tagtune.generation import GenerationConfig
    from tagtune.generation.generate import code_lengths
    from tagtune.generation.v2 import generate_codes_v2, official_v2
    from tagtune.models.v2.gpt import feature_width_lengths as width

    e, gpt = fx.exp, fx.model.gpt
    spk, text = e[f"{spec.speaker}_spk_cond_emb"], e[f"text_ids_{spec.text}"]
    if not fx.has(f"{run}_emovec"):
        return [Result(f"{run}_codes_raw", "SKIP", f"{run}_emovec (its input) is not in the fixture")]
    emovec = e[f"{run}_emovec"]
    cfg = GenerationConfig.greedy(repetition_penalty=spec.repetition_penalty, max_new_tokens=fx.max_tokens,
                                  use_cache=spec.cache, position_mode="official" if spec.cache else "train")
    got = generate_codes_v2(gpt, spk, text, emovec, cfg, spk_lengths=width(spk))
    out = [compare(f"{run}_codes_raw", got.codes, e[f"{run}_codes_raw"])]
    if fx.has(f"{run}_conds"):
        out.append(compare(f"{run}_conds", got.conds, e[f"{run}_conds"], ATOL))
    raw = e[f"{run}_codes_raw"]
    n = code_lengths(raw, gpt.cfg.stop_mel_token)
    if fx.has(f"{run}_code_lens"):
        out.append(compare(f"{run}_code_lens", n, e[f"{run}_code_lens"]))
    if fx.has(f"{run}_codes"):
        out.append(compare(f"{run}_codes", raw[:, : int(n[0])], e[f"{run}_codes"]))
    seeded = [k for k in e if re.fullmatch(rf"{re.escape(run)}_codes_beam(\d+)_sample_seed(\d+)", k)]
    for key in seeded:
        beams, seed = map(int, re.fullmatch(rf"{re.escape(run)}_codes_beam(\d+)_sample_seed(\d+)", key).groups())
        torch.manual_seed(seed)
        sampled = generate_codes_v2(gpt, spk, text, emovec, official_v2(
            num_beams=beams, repetition_penalty=spec.repetition_penalty, max_new_tokens=fx.max_tokens),
            spk_lengths=width(spk))
        r = compare(key, sampled.codes, e[key], informational=True)
        out.append(Result(key, "PASS" if r.status == "PASS" else "INFO", r.detail + " (RNG-dependent)"))
    return out


def _check_s2mel(fx: FixtureV2, run: str, spec: RunSpec) -> list[Result]:
    from tagtune.audio_v2 import mel_frames_for_codes
    from tagtune.models.v2.s2mel import seeded_noise

    e, m, out = fx.exp, fx.model, []
    if not fx.has(f"{run}_codes", f"{run}_latent"):
        return out
    text, codes = e[f"text_ids_{spec.text}"], e[f"{run}_codes"]
    if fx.has(f"{run}_conds", f"{run}_emovec"):
        latent = m.gpt(e[f"{run}_conds"], e[f"{run}_emovec"], text, torch.tensor([text.shape[1]]), codes,
                       torch.tensor([codes.shape[1]]))
        out.append(compare(f"{run}_latent", latent, e[f"{run}_latent"], ATOL))
    s2mel, ref = m.s2mel, spec.speaker
    sampled = {}

    def full():  # the CFM output with the prompt frames, computed once for both checks
        if "mel" not in sampled:
            sampled["mel"] = _cfm_full(fx, run, ref)
        return sampled["mel"]

    stages = [
        ("gpt_layer_out", lambda: s2mel.gpt_layer(e[f"{run}_latent"]), ATOL),
        ("vq2emb", lambda: m.semantic_codec.vq2emb(codes), ATOL),
        ("S_infer", lambda: s2mel.semantic(e[f"{run}_vq2emb"], e[f"{run}_latent"]), ATOL),
        ("target_lengths", lambda: mel_frames_for_codes(e[f"{run}_code_lens"]), None),
        ("cond", lambda: s2mel.content(e[f"{run}_S_infer"], e[f"{run}_target_lengths"]), ATOL),
        ("cfm_noise", lambda: seeded_noise(e[f"{run}_cfm_noise"].shape[-1], fx.cfm_seed,
                                           e[f"{run}_cfm_noise"].shape[1]), 0.0),
        ("dit_out_step1", lambda: _first_step(fx, run, ref), ATOL),
        ("vc_target_full", lambda: full(), ATOL),
        ("vc_target", lambda: full()[..., e[f"{ref}_ref_mel"].shape[-1]:], ATOL),
        ("wav", lambda: m.vocoder(e[f"{run}_vc_target"])[:, 0], ATOL),
    ]
    for name, fn, tol in stages:
        key = f"{run}_{name}"
        if fx.has(key):
            try:
                out.append(compare(key, fn(), e[key], tol))
            except KeyError as missing:
                out.append(Result(key, "SKIP", f"its input {missing} is not in the fixture"))
    return out


def _mu_and_prompt(fx: FixtureV2, run: str, ref: str):
    e = fx.exp
    mu = torch.cat([e[f"{ref}_prompt_condition"], e[f"{run}_cond"]], dim=1)  # (1, P + T, C)
    return mu, e[f"{ref}_ref_mel"], e[f"{ref}_style"], e[f"{run}_cfm_noise"]


def _first_step(fx: FixtureV2, run: str, ref: str) -> torch.Tensor:
    mu, prompt, style, noise = _mu_and_prompt(fx, run, ref)
    prompt_x, x = torch.zeros_like(noise), noise.clone()
    prompt_x[..., : prompt.shape[-1]] = prompt
    x[..., : prompt.shape[-1]] = 0
    return fx.model.s2mel.cfm.guided_pair(x, prompt_x, torch.tensor([mu.shape[1]]), torch.tensor(0.0), style, mu)


def _cfm_full(fx: FixtureV2, run: str, ref: str) -> torch.Tensor:
    mu, prompt, style, noise = _mu_and_prompt(fx, run, ref)
    return fx.model.s2mel.cfm.inference(mu, torch.tensor([mu.shape[1]]), prompt, style, noise)


def check_end_to_end(fx: FixtureV2) -> list[Result]:
    """``<run>_pcm16``: the whole pipeline from the wav files (TTSV2, compat official, top_k 1, seeded CFM)."""
    from tagtune.generation.v2 import official_v2
    from tagtune.synthesis.tts_v2 import TTSV2
    from tagtune.text import TextTokenizer

    runs = [r for r in fx.prefixes("_pcm16") if r in fx.runs]
    if not runs:
        return []
    tts = TTSV2(fx.model, name=str(fx.root))
    tts.tokenizer = TextTokenizer(fx.model.model_dir / fx.model.config.dataset.bpe_model)  # tags read as text
    out = []
    for run in runs:
        spec, want = fx.runs[run], fx.exp[f"{run}_pcm16"]
        speaker = fx.input_file(spec.speaker, emotion=False)
        emotion = None if spec.emo_vector is not None else fx.input_file(spec.emotion, emotion=True)
        cfg = official_v2(top_k=1, num_beams=1, repetition_penalty=spec.repetition_penalty,
                          max_new_tokens=fx.max_tokens)
        got = tts.synthesize(fx.texts[spec.text], speaker, emotion=emotion, emo_alpha=spec.alpha,
                             emo_vector=spec.emo_vector, generation=cfg, seed=fx.cfm_seed, compat="official")
        pcm = torch.from_numpy(got.audio).long().reshape(1, -1)
        if pcm.shape != want.shape:
            out.append(Result(f"{run}_pcm16", "FAIL", f"shape {tuple(pcm.shape)} != {tuple(want.shape)}"))
            continue
        diff = (pcm - want.long()).abs()
        out.append(Result(f"{run}_pcm16", "PASS" if int(diff.max()) <= PCM_LSB else "FAIL",
                          f"max |diff| {int(diff.max())} LSB, {int((diff > 0).sum())} of {diff.numel()} samples "
                          f"differ (tol {PCM_LSB} LSB)"))
    return out


STAGES = [("text", check_text), ("prompt audio", check_prompt_audio), ("features", check_features),
          ("codec, style, vocoder", check_codec_and_style), ("conditioning", check_conditioning),
          ("runs", check_runs), ("end to end", check_end_to_end)]
