"""Mel-code generation for UnifiedVoice, outside the nn.Module (official v1.5.0 + HF 4.36 semantics).

    decoder.py      the v1.5.0 prompt (strip 0/1 ids, [conds ‖ text], left padding + key mask), then one
                    code per step: KV cache or full recompute, "official"/"train" mel positions
    sampling.py     repetition penalty, temperature, top-k, top-p; greedy search and multinomial sampling
    beam.py         beam search and beam-search multinomial sampling (the official default)
    generate.py     GenerationConfig and generate_codes
    postprocess.py  remove_long_silence and the latent pass for the vocoder
    batched.py      several sentences at once: generation, latent pass, one joined vocoder call
    v2.py           IndexTTS2: the 34-position prefix into the same loop, official v2 decoding defaults
    stepwise.py     the same searches one step at a time, with the codes already final after each step
    pool.py         continuous batching: rows of many requests in one KV cache, joining and leaving
    guidance.py     tag guidance: each step scored from the text and its tag-free twin, leaning toward the tags
                    (optionally starting from the base model's distribution: ``Anchor``)
"""

from tagtune.generation.batched import batched_latents, generate_sentences, length_groups, vocode_joined
from tagtune.generation.decoder import MelDecoder, Prompt, mel_position, prepare_prompt
from tagtune.generation.generate import GenerationConfig, code_lengths, generate_codes
from tagtune.generation.postprocess import latents_for_vocoder, remove_long_silence
from tagtune.generation.v2 import V2Codes, generate_codes_v2, official_v2

__all__ = [
    "GenerationConfig",
    "MelDecoder",
    "batched_latents",
    "generate_sentences",
    "length_groups",
    "vocode_joined",
    "Prompt",
    "code_lengths",
    "generate_codes",
    "latents_for_vocoder",
    "mel_position",
    "prepare_prompt",
    "remove_long_silence",
    "V2Codes",
    "generate_codes_v2",
    "official_v2",
]
