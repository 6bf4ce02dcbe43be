"""Speech to judge, made with the stack below the stages (``generation/``), as the synthesis stage makes it.

    Voice             a reference: its log-mel (conditioning and vocoder speaker) and, when it is a recording,
                      its audio (what the voice judge compares against)
    read_voices       the audio files of a folder, one voice each (named by file stem)
    corpus_voices     without a folder: one voice per speaker of the validation clips (their stored log-mel)
    speak             prompts -> clips, sampled in seeded batches, each vocoded on its own
    resynthesise      a corpus clip's own codes vocoded: the recording as the model's vocoder renders it
                      (the calibration clips of the events judge, and the voice reference of corpus voices)
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


@dataclass
class Voice:
    """A reference voice for the judged prompts."""

    name: str
    cond_mel: torch.Tensor  # (1, 100, T) log-mel
    recording: Speech | None = None  # the reference audio, when the voice came from a file


def read_voices(folder: str | Path, mel) -> list[Voice]:
    """One Voice per audio file in ``folder`` (sorted by name); unreadable files are named in the error."""
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
            cond_mel = mel(wav)  # (1, 100, T)
        voices.append(Voice(path.stem, cond_mel, Speech(wav[0].numpy().astype(np.float32))))
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
