"""Speech to judge, made with the stack below the stages (``generation/``), as the synthesis stage makes it.

    Voice             a reference: its log-mel (conditioning and vocoder speaker) and, when it is a recording,
                      its audio (what the voice judge compares against)
    read_voices       the audio files of a folder, one voice each (named by file stem)
    corpus_voices     without a folder: one voice per speaker of the validation clips (their stored log-mel)
    speak             prompts -> clips, sampled in seeded batches, each vocoded on its own
    resynthesise      a corpus clip's own codes vocoded: the recording as the model's vocoder renders it
                      (the calibration clips of the events judge, and the voice reference of corpus voices)
    speak_v2, resynthesise_v2
                      the same for IndexTTS-2 (``generation.v2``'s back end: s2mel and BigVGAN v2 at 22.05 kHz).
                      Its prompts are audio (w2v-BERT, the s2mel prompt mel, CAMPPlus), so its voices come from
                      a folder of recordings; corpus clips are rendered from their own speaker and emotion
                      features with the first voice's timbre.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from tagtune.audio import SAMPLE_RATE, AudioError, load_reference
from tagtune.evaluate.judges.base import Speech
from tagtune.evaluate.loading import EvaluationError

VOICE_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
MAX_VOICE_SECONDS = 15.0  # the conditioning gains nothing from longer references
BATCH = 8
# a clip may run to CODES_PER_TOKEN codes per text token plus CODES_MARGIN (~0.5 s per token, room for two
# events): generous for speech (~7 codes per English token, ~5 per Chinese character), short for a runaway
CODES_PER_TOKEN = 12
CODES_MARGIN = 50
CODES_PER_TOKEN_V2 = 26  # the same time at IndexTTS-2's 50 codes per second (1.x: 23.4)


@dataclass
class Voice:
    """A reference voice for the judged prompts."""

    name: str
    cond_mel: torch.Tensor | None  # (1, 100, T) log-mel (IndexTTS 1.x); None for IndexTTS-2
    recording: Speech | None = None  # the reference audio, when the voice came from a file
    path: Path | None = None  # that file (IndexTTS-2 reads its prompts from it)


def read_voices(folder: str | Path, mel=None) -> list[Voice]:
    """One Voice per audio file in ``folder`` (sorted by name); unreadable files are named in the error.
    ``mel``: the 1.x model's log-mel, for the conditioning (None for IndexTTS-2)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: no such folder of reference voices", params=("voices",))
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in VOICE_SUFFIXES)
    if not files:
        raise EvaluationError(f"{folder}: holds no audio file ({', '.join(VOICE_SUFFIXES)})", params=("voices",))
    voices = []
    for path in files:
        try:
            wav = load_reference(path, MAX_VOICE_SECONDS)[:, : int(MAX_VOICE_SECONDS * SAMPLE_RATE)]  # (1, N)
        except AudioError as e:
            raise EvaluationError(f"reference voice {e}", params=("voices",)) from None
        with torch.no_grad():
            cond_mel = mel(wav) if mel is not None else None  # (1, 100, T)
        voices.append(Voice(path.stem, cond_mel, Speech(wav[0].numpy().astype(np.float32)), path))
    return voices


def corpus_voices(items: list[dict], limit: int) -> list[tuple[Voice, dict]]:
    """Up to ``limit`` voices, the first validation clip of each speaker (the clip is kept for resynthesis)."""
    seen: dict[str, dict] = {}
    for it in items:
        seen.setdefault(str(it.get("speaker") or "speaker"), it)
    return [(Voice(name, it["cond_mel"][None] if it["cond_mel"].dim() == 2 else it["cond_mel"]), it)
            for name, it in list(seen.items())[:limit]]


def _conditioning(gpt, vocoder, cond_mel: torch.Tensor):
    device = next(gpt.parameters()).device
    cond_mel = cond_mel.to(device).float()
    conds = gpt.get_conditioning(cond_mel, torch.tensor([cond_mel.shape[-1]], device=device))  # (1, 32, D)
    speaker = vocoder.speaker_embedding(cond_mel.transpose(1, 2))  # (1, 1, E)
    return conds, speaker


def _vocode(vocoder, latent: torch.Tensor, speaker: torch.Tensor) -> np.ndarray:
    if not len(latent):
        return np.zeros(0, dtype=np.float32)
    return vocoder(latent[None], speaker=speaker)[0, 0].clamp(-1, 1).float().cpu().numpy()  # (N·hop,)


@torch.no_grad()
def speak(gpt, vocoder, voice: Voice, sentences: list[list[int]], generation, seed: int,
          batch_size: int = BATCH) -> list[Speech]:
    """One clip per sentence (text ids) in ``voice``; batch b samples from ``seed + b``."""
    from tagtune.generation import batched_latents, generate_sentences

    conds, speaker = _conditioning(gpt, vocoder, voice.cond_mel)
    codes: list[torch.Tensor] = []
    for b, s in enumerate(range(0, len(sentences), batch_size)):
        part = sentences[s : s + batch_size]
        limit = min(generation.max_new_tokens, gpt.cfg.max_mel_tokens,
                    CODES_PER_TOKEN * max(map(len, part)) + CODES_MARGIN)
        g = torch.Generator(device=conds.device).manual_seed(seed + b)
        found, _ = generate_sentences(gpt, part, replace(generation, max_new_tokens=limit), conds, g)
        codes += found
    latents = batched_latents(gpt, conds, sentences, codes, batch_size)
    return [Speech(_vocode(vocoder, lat, speaker), SAMPLE_RATE, c.cpu()) for lat, c in zip(latents, codes)]


@torch.no_grad()
def resynthesise(gpt, vocoder, items: list[dict]) -> list[Speech]:
    """Each clip's own codes through the latent pass and the vocoder, in its own conditioning voice."""
    out = []
    for it in items:
        cond_mel = it["cond_mel"][None] if it["cond_mel"].dim() == 2 else it["cond_mel"]
        conds, speaker = _conditioning(gpt, vocoder, cond_mel)
        device = conds.device
        text = it["text_ids"].long()[None].to(device)
        codes = it["codes"].long()[None].to(device)
        latent = gpt.latents(conds, text, codes)[0]  # (N, D)
        out.append(Speech(_vocode(vocoder, latent, speaker), SAMPLE_RATE, it["codes"].cpu()))
    return out


# ------------------------------------------------------------------------------------------------ IndexTTS-2

@dataclass
class _PromptV2:
    """A voice as IndexTTS-2 reads it: the s2mel speaker prompt and the emotion vector of the GPT."""

    speaker: object  # generation.v2.SpeakerPromptV2
    emovec: torch.Tensor  # (1, D)


def _prompt_v2(model, gpt, path: Path) -> _PromptV2:
    """The voice's file as synthesis reads it with no emotion setting: speaker prompt, and the same recording
    as the emotion prompt at alpha 1."""
    from tagtune.audio_v2 import S2MEL_SAMPLE_RATE, emotion_prompt, speaker_prompt
    from tagtune.generation.v2 import prompt_emovec, semantic_features, speaker_prompt_v2

    try:
        audio = speaker_prompt(path)
        emo = semantic_features(model, emotion_prompt(path))
    except AudioError as e:
        raise EvaluationError(f"reference voice {e}", params=("voices",)) from None
    speaker = speaker_prompt_v2(model, audio.audio_22k, audio.audio_16k, S2MEL_SAMPLE_RATE)
    return _PromptV2(speaker, prompt_emovec(gpt, speaker.spk_cond_emb, emo))


def _noise(model, generator: torch.Generator):
    from tagtune.generation.v2 import folder_device

    channels = model.config.s2mel.DiT.in_channels
    device = folder_device(model)
    return lambda frames: torch.randn(1, channels, frames, generator=generator).to(device)


def _speech_v2(model, gpt, prompt: _PromptV2, ids: list[int], codes: torch.Tensor, conds: torch.Tensor,
               generator: torch.Generator) -> Speech:
    """One clip's codes (N,) as IndexTTS-2 audio at 22.05 kHz (the codes kept, 20 ms each)."""
    from tagtune.audio_v2 import S2MEL_SAMPLE_RATE
    from tagtune.data.dataset import SAMPLES_PER_SEMANTIC_CODE
    from tagtune.generation.v2 import speech_from_codes

    per_code = SAMPLES_PER_SEMANTIC_CODE / SAMPLE_RATE
    if not len(codes):
        return Speech(np.zeros(0, dtype=np.float32), S2MEL_SAMPLE_RATE, codes.cpu(), per_code)
    noise = _noise(model, generator)
    wav = speech_from_codes(model, gpt, prompt.speaker, prompt.emovec, ids, codes[None], conds, noise)
    return Speech(wav[0].clamp(-1, 1).float().cpu().numpy(), S2MEL_SAMPLE_RATE, codes.cpu(), per_code)


@torch.no_grad()
def speak_v2(model, gpt, voice: Voice, sentences: list[list[int]], generation, seed: int,
             batch_size: int = BATCH) -> list[Speech]:
    """``speak`` for IndexTTS-2: ``gpt`` (the tuned or base v2 GPT) with the folder ``model``'s back end."""
    from tagtune.generation import code_lengths
    from tagtune.generation.batched import pad_rows
    from tagtune.generation.v2 import generate_codes_v2
    from tagtune.models.v2.gpt import feature_width_lengths

    if voice.path is None:
        raise EvaluationError("IndexTTS-2 speaks from reference recordings: give a folder of them (--voices)",
                              params=("voices",))
    prompt = _prompt_v2(model, gpt, voice.path)
    spk, stop = prompt.speaker.spk_cond_emb, gpt.cfg.stop_mel_token
    out: list[Speech] = []
    for b, s in enumerate(range(0, len(sentences), batch_size)):
        part = sentences[s : s + batch_size]
        limit = min(generation.max_new_tokens, gpt.cfg.max_mel_tokens,
                    CODES_PER_TOKEN_V2 * max(map(len, part)) + 2 * CODES_MARGIN)
        g = torch.Generator().manual_seed(seed + b)
        text = pad_rows(part, gpt.cfg.stop_text_token, spk.device)
        found = generate_codes_v2(gpt, spk, text, prompt.emovec, replace(generation, max_new_tokens=limit),
                                  spk_lengths=feature_width_lengths(spk), generator=g)
        for row, ids in zip(found.codes, part):
            codes = row[: int(code_lengths(row[None], stop)[0])]
            out.append(_speech_v2(model, gpt, prompt, ids, codes, found.conds[:1], g))
    return out


@torch.no_grad()
def resynthesise_v2(model, gpt, items: list[dict], voice: Voice, seed: int = 0) -> list[Speech]:
    """Each corpus clip's own codes through IndexTTS-2's back end: the GPT conditioned on the clip's own speaker
    and emotion features, s2mel prompted with ``voice``'s recording (the prepared data keeps no audio)."""
    from tagtune.generation.v2 import prompt_emovec
    from tagtune.models.v2.gpt import feature_width_lengths

    prompt = _prompt_v2(model, gpt, voice.path)
    device = prompt.emovec.device
    out = []
    for k, it in enumerate(items):
        spk, emo = it["spk_features"][None].to(device), it["emo_features"][None].to(device)  # (1, T, 1024)
        conds = gpt.get_conditioning(spk, feature_width_lengths(spk))  # (1, 32, D)
        own = _PromptV2(prompt.speaker, prompt_emovec(gpt, spk, emo))
        g = torch.Generator().manual_seed(seed + k)
        out.append(_speech_v2(model, gpt, own, it["text_ids"].tolist(), it["codes"].long().to(device), conds, g))
    return out
