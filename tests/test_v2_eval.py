"""`tagtune eval` on an IndexTTS-2 export (the tiny v2 fixture, three training steps): teacher-forced reliance on
semantic codes within each event's span (480 samples per code), untagged NLL and the forgetting ratio, the code
detector on the semantic codec's codebook, and free-running generation of codes from the 34-position prefix.

The numbers are checked against the v2 forward run by hand on each clip alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from tagtune.cli import main
from v2_fixture import V2_CHECKPOINT, require_v2

SAMPLE_RATE = 24000
WORDS = ["HELLO", "WORLD", "THIS", "IS", "WELL", "THAT", "FUNNY", "REALLY"]
N_CLIPS = 12
RECIPE = {"seed": 2, "lora": {"rank": 4, "alpha": 8, "dropout": 0.0}, "optim": {"lr": 1e-2},
          "batch": {"batch_size": 2, "grad_accum": 1}, "schedule": {"max_steps": 3, "warmup_steps": 1},
          "model": {"dropout": 0.0}, "eval": {"every_steps": 3},
          "runtime": {"progress_bar": False, "report_to": "none"}}


def _corpus(folder: Path) -> Path:
    """Two built-in voices; every other pair of clips has a giggle after its first word, boundaries recorded."""
    from tagtune.synthetic.babble import babble
    from tagtune.synthetic.events import make_event
    from tagtune.synthetic.voices import VOICES

    rng = np.random.default_rng(5)
    folder.mkdir(parents=True, exist_ok=True)
    gap = np.zeros(int(0.05 * SAMPLE_RATE), dtype=np.float32)
    rows = []
    for k in range(N_CLIPS):
        speaker, tagged = "AB"[k % 2], (k // 2) % 2 == 0
        voice = VOICES["builtin-f1" if speaker == "A" else "builtin-m1"]
        first, second = WORDS[k % 8], WORDS[(3 * k + 1 + k // 8) % 8]
        parts = [gap, babble(first.lower(), voice, SAMPLE_RATE)[: int(0.5 * SAMPLE_RATE)], gap]
        row = {"audio": f"c{k}.wav", "text": f"{first} {second}.", "speaker": speaker, "id": f"c{k}"}
        if tagged:
            start = sum(len(p) for p in parts)
            parts += [make_event("giggle", rng, SAMPLE_RATE, 0.08, f0=voice.f0), gap]
            row["text"] = f"{first} <giggles> {second}."
            row["events"] = [{"tag": "<giggles>", "start_sample": start, "end_sample": len(np.concatenate(parts)) -
                              len(gap)}]
        parts.append(babble(second.lower(), voice, SAMPLE_RATE)[: int(0.4 * SAMPLE_RATE)])
        sf.write(folder / f"c{k}.wav", np.concatenate(parts + [gap]), SAMPLE_RATE, subtype="PCM_16")
        rows.append(row)
    listing = folder / "list.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return listing


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> dict:
    """Folders of the flow and the report `tagtune eval` wrote."""
    from tagtune.data.for_model import prepare_for_model
    from tagtune.export import export
    from tagtune.train import train
    from tagtune.train.config import TrainConfig

    require_v2()
    root = tmp_path_factory.mktemp("v2eval")
    data, run, model, out = root / "data", root / "run", root / "model", root / "report"
    prepare_for_model(V2_CHECKPOINT, str(_corpus(root / "corpus")), data, device="cpu", progress=False,
                      shard_size=8, val_fraction=0.34, seed=1)
    train(data, run, TrainConfig.from_dict(RECIPE))
    export(run, model)
    assert main(["--no-progress", "eval", "--model", str(model), "--base", str(V2_CHECKPOINT), "--data", str(data),
                 "--out", str(out), "--n-free", "4", "--device", "cpu"]) == 0
    return {"data": data, "model": model, "out": out, "report": json.loads((out / "report.json").read_text())}


def _val(data: Path) -> list[dict]:
    from tagtune.data.dataset import PreparedDatasetV2

    ds = PreparedDatasetV2(data, "val")
    return [ds[i] for i in range(len(ds))]


@torch.no_grad()
def _code_nll(gpt, item: dict, text_ids: torch.Tensor) -> torch.Tensor:
    """NLL of each code and the stop code of one clip alone, its prefix from its speaker and emotion clips."""
    conds, emovec = gpt.get_conditioning(item["spk_features"][None]), gpt.get_emovec(item["emo_features"][None])
    codes, lengths = item["codes"][None], torch.tensor([len(item["codes"])])
    out = gpt.logits(conds, emovec, text_ids[None], torch.tensor([len(text_ids)]), codes, lengths)
    return F.cross_entropy(out.mel_logits, out.mel_targets, reduction="none")[0, : codes.shape[1] + 1]


def test_untagged_nll_and_forgetting_are_the_v2_teacher_forced_numbers(evaluated):
    from tagtune.loaders import load_model

    untagged = [it for it in _val(evaluated["data"]) if not it["has_tag"]]
    forgetting = evaluated["report"]["details"]["forgetting"]
    assert forgetting["clips"] == len(untagged) > 0
    base, tuned = load_model(V2_CHECKPOINT).gpt, load_model(evaluated["model"]).gpt
    for name, gpt in (("base", base), ("tuned", tuned)):
        nll = torch.cat([_code_nll(gpt, it, it["text_ids"]) for it in untagged])
        assert forgetting["untagged_nll"][name] == pytest.approx(float(nll.mean()), rel=1e-5)
    ratio = forgetting["untagged_nll"]["tuned"] / forgetting["untagged_nll"]["base"]
    assert forgetting["untagged_nll_ratio"] == pytest.approx(ratio)


def test_reliance_is_scored_on_each_events_semantic_codes(evaluated):
    from tagtune.audio import code_span
    from tagtune.evaluate.reliance import without_tag
    from tagtune.loaders import load_model

    tagged = [it for it in _val(evaluated["data"]) if it["has_tag"]]
    tuned = load_model(evaluated["model"])
    space = tuned.tokenizer.tag_space_id
    assert space is None  # the tag piece holds the space before it: the tag alone is removed
    gaps = []
    for it in tagged:
        (event,) = it["events"]
        first, last = code_span(event["start_sample"], event["end_sample"], len(it["codes"]), 480)
        assert last - first >= 4  # a giggle spans many 20 ms codes
        position = it["text_ids"].tolist().index(224)
        with_tag = _code_nll(tuned.gpt, it, it["text_ids"])[first:last].sum()
        without = _code_nll(tuned.gpt, it, without_tag(it["text_ids"], position, space))[first:last].sum()
        gaps.append(float(without - with_tag))
    got = evaluated["report"]["details"]["reliance"]["tuned"]["<giggles>"]
    assert got["trials"] == len(tagged) > 0 and got["unit"] == "event"
    assert got["reliance_gap"] == pytest.approx(sum(gaps) / len(gaps), rel=1e-4, abs=1e-4)


def test_free_running_generates_semantic_codes_for_both_models(evaluated):
    details = evaluated["report"]["details"]
    free, detector = details["free"], details["detector"]
    assert detector["available"] and detector["train_windows"]["<giggles>"] > 0
    for name in ("tuned", "base"):
        assert free[name]["tagged_prompts"] == len([it for it in _val(evaluated["data"]) if it["has_tag"]])
        assert free[name]["mean_generated_codes"] > 0
    assert (evaluated["out"] / "report.md").is_file()


def test_transfer_is_refused_for_v2(evaluated, tmp_path, capsys):
    args = ["eval", "--model", str(evaluated["model"]), "--data", str(evaluated["data"]), "--out", str(tmp_path / "r")]
    assert main([*args, "--transfer", str(evaluated["data"])]) == 2
    assert "IndexTTS-2 model: the transfer evaluation is not available" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def _voices(evaluated, folder: Path) -> Path:
    folder.mkdir()
    shutil.copy(evaluated["data"].parent / "corpus" / "c0.wav", folder / "anna.wav")
    return folder


@torch.no_grad()
def test_judged_v2_speech_is_what_synthesis_says(evaluated, tmp_path):
    """The judges' IndexTTS-2 clip equals ``TTSV2.synthesize`` of the same text, voice and seed (int16 cast)."""
    from tagtune.evaluate.judges.speak import read_voices, speak_v2
    from tagtune.generation.v2 import official_v2
    from tagtune.loaders import load_model
    from tagtune.synthesis.tts_v2 import TTSV2

    (voice,) = read_voices(_voices(evaluated, tmp_path / "voices"))
    assert voice.cond_mel is None and voice.path is not None
    tts = TTSV2.load(evaluated["model"])
    cfg = official_v2(num_beams=1, position_mode="train", max_new_tokens=30)
    text = "HELLO <giggles> WORLD."
    (ids,) = tts.sentences(text)
    loaded = load_model(evaluated["model"])
    (clip,) = speak_v2(loaded, loaded.gpt, voice, [ids], cfg, seed=7)
    said = tts.synthesize(text, voice.path, generation=cfg, seed=7)
    assert clip.rate == tts.sample_rate == 22050 and clip.seconds_per_code == 0.02
    assert clip.codes.tolist() == said.codes[0].tolist()
    assert len(clip.audio) == len(said.audio) > 0
    pcm = np.clip(32767.0 * clip.audio, -32767, 32767).astype(np.int16)
    assert np.abs(pcm.astype(np.int32) - said.audio.astype(np.int32)).max() <= 1


def test_judges_hear_v2_speech_from_a_voice_folder(evaluated, tmp_path, capsys):
    from tiny_judges import save_tiny_judges

    judges = save_tiny_judges(tmp_path / "judges")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("HELLO <giggles> WORLD.\nTHIS IS FUNNY.\n", encoding="utf-8")
    out = tmp_path / "r"
    args = ["--no-progress", "eval", "--model", str(evaluated["model"]), "--base", str(V2_CHECKPOINT), "--data",
            str(evaluated["data"]), "--out", str(out), "--n-free", "0", "--seed", "2", "--judges", "events,words,voice",
            "--event-model", str(judges["events"]), "--asr-model", str(judges["words"]), "--prompts", str(prompts),
            "--calibration-clips", "2"]
    assert main([*args, "--speaker-model", str(judges["voice"])]) == 2  # no voice folder: prepared data has no audio
    assert "give the judges a folder of them (--voices)" in capsys.readouterr().err
    voices = _voices(evaluated, tmp_path / "voices")
    assert main([*args, "--speaker-model", "ecapa", "--voices", str(voices)]) == 2
    assert "IndexTTS-2 models have no such encoder; their own is 'campplus'" in capsys.readouterr().err
    assert main([*args, "--speaker-model", str(judges["voice"]), "--voices", str(voices)]) == 0
    j = json.loads((out / "report.json").read_text(encoding="utf-8"))["judges"]
    assert j["settings"]["clips"] == 3 and j["settings"]["voices"] == ["anna"]  # tagged + its twin + the plain line
    acc = j["events"]["judge_accuracy"]["per_tag"]["<giggles>"]
    assert acc["positives"] == acc["negatives"] == 2  # calibrated on corpus clips rendered by the v2 back end
    for name in ("tuned", "base"):
        assert j["events"][name]["tagged_clips"] == 1 and j["events"][name]["untagged_clips"] == 2
        assert j["events"][name]["per_tag"]["<giggles>"]["asked"] == 1
        assert j["words"]["wer"][name]["clips"] == 3 and j["words"]["wer"][name]["value"] >= 0.0
        sim = j["voice"]["similarity"][name]
        assert sim["clips"] == 3 and -1.0 <= sim["value"] <= 1.0
    out2 = tmp_path / "r2"
    own = [a if a != str(out) else str(out2) for a in args]
    assert main([*own, "--judges", "voice", "--speaker-model", "campplus", "--voices", str(voices)]) == 0
    j2 = json.loads((out2 / "report.json").read_text(encoding="utf-8"))["judges"]
    assert j2["voice"]["judge"] == "campplus" and -1.0 <= j2["voice"]["similarity"]["tuned"]["value"] <= 1.0
