"""Judge the models' speech on the prompt suite: events, words and voice, tuned and base side by side.

    JudgeSettings      which judges, which models (hub ids or folders), prompts, voices, sizes
    open_judges        prompts, voices and every judge model asked for, loaded before any work (fails fast)
    judge_models       calibrate the events judge, speak every prompt in every voice with every model, judge
                       and score it
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tagtune.evaluate.judges.base import JUDGE_NAMES, Speech
from tagtune.evaluate.judges.events import CODES, AudioSetEventJudge, CodeEventJudge, load_event_map
from tagtune.evaluate.judges.hub import DEFAULT_ASR_MODEL, DEFAULT_EVENT_MODEL, DEFAULT_SPEAKER_MODEL
from tagtune.evaluate.judges.metrics import (
    RESAMPLES,
    JudgedClip,
    Transcript,
    event_intervals,
    event_scores,
    similarity_scores,
    words_scores,
)
from tagtune.evaluate.judges.speak import (
    Voice,
    corpus_voices,
    read_voices,
    resynthesise,
    resynthesise_v2,
    speak,
    speak_v2,
)
from tagtune.evaluate.judges.suite import SuitePrompt, for_tags, read_prompts
from tagtune.evaluate.judges.text import CHINESE, ENGLISH, normalize
from tagtune.evaluate.judges.voice import CAMPPLUS, ECAPA, CampplusVoiceJudge, EcapaVoiceJudge, XVectorVoiceJudge
from tagtune.evaluate.judges.words import AsrWordsJudge
from tagtune.evaluate.loading import EvaluationError

log = logging.getLogger(__name__)
CORPUS_VOICES = 4  # voices taken from the validation speakers when no voice folder is given
CALIBRATION_CLIPS = 48  # corpus clips per tag (and untagged) that calibrate the events judge
UNIT = {ENGLISH: "word", CHINESE: "char"}  # WER for English, CER for Chinese


@dataclass
class JudgeSettings:
    """What ``tagtune eval --judges`` runs; model names are hub ids or local folders."""

    judges: tuple[str, ...] = JUDGE_NAMES
    event_model: str = DEFAULT_EVENT_MODEL  # or "codes": the detector trained on the corpus's event segments
    asr_model: str = DEFAULT_ASR_MODEL
    speaker_model: str = DEFAULT_SPEAKER_MODEL  # or "ecapa": the model's own speaker encoder
    event_map: str | Path | None = None  # a YAML tag -> AudioSet classes added to the shipped map
    prompts: list[Path] | None = None  # suite files (default: the shipped English and Chinese suites)
    voices: Path | None = None  # a folder of reference recordings (default: validation speakers)
    batch_size: int = 8
    resamples: int = RESAMPLES
    calibration_clips: int = CALIBRATION_CLIPS
    progress: bool = True
    generation: object = field(default=None)  # a GenerationConfig (default: official sampling, one beam)

    def __post_init__(self):
        self.judges = tuple(dict.fromkeys(self.judges))
        if not self.judges:
            raise EvaluationError(f"name at least one judge: {', '.join(JUDGE_NAMES)}", params=("judges",))
        if unknown := [j for j in self.judges if j not in JUDGE_NAMES]:
            raise EvaluationError(f"unknown judge {unknown[0]!r}; choose from {', '.join(JUDGE_NAMES)}",
                                  params=("judges",))
        if self.batch_size < 1:
            raise EvaluationError("the judges' batch size must be >= 1", params=("judge_batch",))
        if self.calibration_clips < 2:
            raise EvaluationError("the events judge needs at least 2 calibration clips per class",
                                  params=("calibration_clips",))


def _tagged_items(items: list[dict], tag_ids: dict[str, int], limit: int) -> tuple[dict[str, list[dict]], list[dict]]:
    by_tag = {t: [it for it in items if i in set(map(int, it["text_ids"]))][:limit] for t, i in tag_ids.items()}
    ids = set(tag_ids.values())
    untagged = [it for it in items if not ids & set(map(int, it["text_ids"]))][:limit]
    return by_tag, untagged


@dataclass
class Panel:
    """The judges of an evaluation, opened before any work so that a missing model or bad input fails fast."""

    settings: JudgeSettings
    loaded: object  # the tuned LoadedModel: its tokenizer, vocoder and mel
    prompts: list[SuitePrompt]
    left_out: int  # suite prompts whose tags the model does not know
    voices: list[Voice]  # from the voice folder; empty: the validation speakers are used
    judges: dict  # "events" / "words" / "voice" -> judge (the AudioSet events judge not yet calibrated)


def _is_v2(loaded) -> bool:
    from tagtune.loaders import LoadedModelV2

    return isinstance(loaded, LoadedModelV2)


def _own_voice_judge(name: str, loaded):
    """The model's own speaker encoder as the voice judge: ECAPA on 1.x, CAMPPlus on IndexTTS-2."""
    v2 = _is_v2(loaded)
    if name == (ECAPA if v2 else CAMPPLUS):
        family, own = ("IndexTTS-2", CAMPPLUS) if v2 else ("IndexTTS 1.x", ECAPA)
        raise EvaluationError(f"--speaker-model {name}: {family} models have no such encoder; their own is "
                              f"'{own}'", params=("speaker_model",))
    return CampplusVoiceJudge(loaded.campplus) if v2 else EcapaVoiceJudge(loaded.vocoder, loaded.mel)


def open_judges(settings: JudgeSettings, tagset, loaded) -> Panel:
    """Read the prompts and voices and load every judge model asked for (``loaded``: the tuned LoadedModel, or
    LoadedModelV2 for IndexTTS-2, whose voices must come from a folder of recordings)."""
    v2 = _is_v2(loaded)
    if v2 and settings.voices is None:
        raise EvaluationError("IndexTTS-2 speaks from reference recordings, which prepared data does not keep: "
                              "give the judges a folder of them (--voices)", params=("voices",))
    prompts, left_out = for_tags(read_prompts(settings.prompts), tagset)
    voices = read_voices(settings.voices, None if v2 else loaded.mel) if settings.voices is not None else []
    opts = {"batch_size": settings.batch_size, "progress": settings.progress}
    device = str(next(loaded.vocoder.parameters()).device)
    judges: dict = {}
    if "events" in settings.judges and settings.event_model != CODES:  # the code-level one is trained later
        judges["events"] = AudioSetEventJudge.load(settings.event_model, list(tagset.tags),
                                                   load_event_map(settings.event_map), device=device, **opts)
    if "words" in settings.judges:
        judges["words"] = AsrWordsJudge.load(settings.asr_model, device=device, **opts)
    if "voice" in settings.judges:
        own = settings.speaker_model in (ECAPA, CAMPPLUS)
        judges["voice"] = (_own_voice_judge(settings.speaker_model, loaded) if own
                           else XVectorVoiceJudge.load(settings.speaker_model, device=device, **opts))
    return Panel(settings, loaded, prompts, left_out, voices, judges)


def _events_judge(panel: Panel, gpt, corpus: list[dict], tag_ids: dict[str, int], detector, seed: int):
    """(events judge, its accuracy): the code-level detector, or the AudioSet judge calibrated on corpus clips
    that ``gpt`` resynthesises (clips with each tag vs untagged clips)."""
    if panel.settings.event_model == CODES:
        if detector is None:
            raise EvaluationError("the code-level events judge needs a corpus with event boundaries",
                                  params=("event_model",))
        judge = CodeEventJudge(*detector)
        return judge, judge.accuracy()
    judge, loaded = panel.judges["events"], panel.loaded
    if _is_v2(loaded):
        render = lambda its: resynthesise_v2(loaded, gpt, its, panel.voices[0], seed)  # noqa: E731
    else:
        render = lambda its: resynthesise(gpt, loaded.vocoder, its)  # noqa: E731
    by_tag, untagged = _tagged_items(corpus, tag_ids, panel.settings.calibration_clips)
    positives = {t: render(its) for t, its in by_tag.items() if t in judge.tags}
    return judge, judge.calibrate(positives, render(untagged), seed)


@dataclass
class _Spoken:
    """The clips of one model in one voice, with what each asked for."""

    prompt: SuitePrompt
    tagged: bool  # spoken with its tags (False: an untagged control or a tag-free twin)
    speech: Speech


def _clip_list(prompts: list[SuitePrompt], tokenizer, max_tokens: int) -> list[tuple[SuitePrompt, bool, list[int]]]:
    out = []
    for p in prompts:
        variants = [(True, p.text), (False, p.plain)] if p.tags else [(False, p.text)]
        for tagged, text in variants:
            ids = tokenizer.encode(text)[:max_tokens]
            if ids:
                out.append((p, tagged, ids))
    return out


def _judge_voice(judges: dict, spoken: list[_Spoken], voice: Voice, reference: Speech | None) -> dict:
    """Raw verdicts for one model in one voice: judged clips, transcripts per language, similarities."""
    out: dict = {}
    if "events" in judges:
        heard = set(judges["events"].tags)  # a tag the judge cannot hear is not asked of it
        found = judges["events"].events([s.speech for s in spoken])
        out["events"] = [JudgedClip([e for e in s.prompt.expected(s.speech.seconds) if e.tag in heard]
                                    if s.tagged else [], f, s.speech.seconds).match() for s, f in zip(spoken, found)]
    if "words" in judges:
        out["words"] = {}
        for lang in (ENGLISH, CHINESE):
            mine = [s for s in spoken if s.prompt.language == lang]
            if mine:
                heard = judges["words"].transcribe([s.speech for s in mine], lang)
                out["words"][lang] = [Transcript(normalize(s.prompt.plain, lang), normalize(h, lang), s.tagged)
                                      for s, h in zip(mine, heard)]
    if "voice" in judges and reference is not None:
        sims = judges["voice"].similarity([s.speech for s in spoken], [reference] * len(spoken))
        out["voice"] = list(zip(sims, [s.tagged for s in spoken]))
    return out


def _scores(raw: list[dict], tags: list[str], resamples: int, seed: int) -> dict:
    """Scores of the verdicts of several voices pooled."""
    out: dict = {}
    clips = [c for r in raw for c in r.get("events", [])]
    if any("events" in r for r in raw):
        out["events"] = event_scores(clips, tags)
        for tag, ci in event_intervals(clips, tags, resamples, seed).items():
            out["events"]["per_tag"][tag]["ci95"] = ci
    for lang, key in ((ENGLISH, "wer"), (CHINESE, "cer")):
        items = [t for r in raw for t in r.get("words", {}).get(lang, [])]
        if any("words" in r for r in raw):
            out[key] = words_scores(items, UNIT[lang], resamples, seed)
    pairs = [p for r in raw for p in r.get("voice", [])]
    if any("voice" in r for r in raw):
        out["similarity"] = similarity_scores([v for v, _ in pairs], [t for _, t in pairs], resamples, seed)
    return out


def judge_models(panel: Panel, models: list, val: list[dict], train: list[dict], seed: int = 0,
                 detector=None) -> dict:
    """The report's ``judges`` section: the suite spoken by each of ``models`` (EvalModels: tuned, and base when
    given) in each voice, judged and scored. ``val`` / ``train`` are the prepared splits; ``detector`` the
    code-level detector and its held-out report, for ``event_model="codes"``."""
    from tagtune.generation import GenerationConfig
    from tagtune.generation.v2 import official_v2

    settings, loaded, gpt = panel.settings, panel.loaded, models[0].gpt
    if panel.voices:
        voices = [(v, v.recording) for v in panel.voices]
    else:
        picked = corpus_voices(val, CORPUS_VOICES)
        refs = (resynthesise(gpt, loaded.vocoder, [it for _, it in picked]) if "voice" in settings.judges
                else [None] * len(picked))
        voices = [(v, r) for (v, _), r in zip(picked, refs)]
    judges = dict(panel.judges)
    if "events" in settings.judges:
        judges["events"], judges["events_accuracy"] = _events_judge(panel, gpt, train + val, models[0].tag_ids,
                                                                    detector, seed)
    # official sampling with one beam (the official default runs three: the judged speech is sampled as a user
    # samples it, at a third of the cost); training positions, as tagtune synthesis uses by default
    generation = settings.generation or (official_v2(num_beams=1, position_mode="train") if _is_v2(loaded) else
                                         GenerationConfig(num_beams=1, position_mode="train"))
    clips = _clip_list(panel.prompts, loaded.tokenizer, gpt.cfg.max_text_tokens)
    raw: dict[str, dict[str, dict]] = {}
    for m in models:
        for k, (voice, reference) in enumerate(voices):
            log.info("judges: %s speaks %d prompts in voice %s", m.name, len(clips), voice.name)
            ids = [ids for _, _, ids in clips]
            speech = (speak_v2(loaded, m.gpt, voice, ids, generation, seed + 1000 * k, settings.batch_size)
                      if _is_v2(loaded) else
                      speak(m.gpt, loaded.vocoder, voice, ids, generation, seed + 1000 * k, settings.batch_size))
            spoken = [_Spoken(p, tagged, s) for (p, tagged, _), s in zip(clips, speech)]
            raw.setdefault(m.name, {})[voice.name] = _judge_voice(judges, spoken, voice, reference)
    return _section(raw, judges, settings, panel.prompts, panel.left_out, voices, len(clips), seed)


def _section(raw, judges, settings, prompts, left_out, voices, n_clips, seed) -> dict:
    tags = list(judges["events"].tags) if "events" in judges else []
    pooled = {m: _scores(list(by_voice.values()), tags, settings.resamples, seed) for m, by_voice in raw.items()}
    per_voice = {v.name: {m: _scores([raw[m][v.name]], tags, 0, seed) for m in raw} for v, _ in voices}
    out: dict = {"settings": {
        "judges": list(settings.judges), "prompts": len(prompts), "prompts_left_out": left_out, "clips": n_clips,
        "tagged_prompts": sum(bool(p.tags) for p in prompts), "voices": [v.name for v, _ in voices],
        "voice_source": str(settings.voices) if settings.voices else "validation speakers (resynthesised)",
        "resamples": settings.resamples}}
    if "events" in judges:
        out["events"] = {"judge": judges["events"].name, "tags_judged": list(judges["events"].tags),
                         "judge_accuracy": judges["events_accuracy"],
                         **{m: pooled[m]["events"] for m in pooled}}
    if "words" in judges:
        out["words"] = {"judge": judges["words"].name,
                        "wer": {m: pooled[m]["wer"] for m in pooled}, "cer": {m: pooled[m]["cer"] for m in pooled}}
    if "voice" in judges:
        out["voice"] = {"judge": judges["voice"].name, "similarity": {m: pooled[m].get("similarity") for m in pooled}}
    out["per_voice"] = per_voice
    return out
