"""Continuous batching: requests that join and leave a DecodePool at different steps decode exactly as alone."""

from __future__ import annotations

import torch

from tagtune.generation import GenerationConfig, generate_codes, prepare_prompt
from tagtune.generation.batched import pad_rows
from tagtune.generation.pool import DecodePool
from tagtune.generation.stepwise import new_search
from tagtune.synthesis.tts import TTS

TEXTS = ["Hello, World! This is IndexTTS speaking.", "Well, that is funny.", "It costs ten dollars, this is it."]
STEPS = 60


def test_rows_joining_and_leaving_decode_as_alone(shipped_base, reference_wav):
    tts = TTS.load(shipped_base, precision="fp32")
    conds, c = tts.reference(reference_wav).conds, tts.gpt.cfg
    cfgs = [GenerationConfig.greedy(max_new_tokens=STEPS, position_mode="train"),
            GenerationConfig(max_new_tokens=STEPS, position_mode="train"),  # 3-beam sampling: beams are rows
            GenerationConfig(num_beams=1, max_new_tokens=STEPS, position_mode="official")]
    texts = [pad_rows(tts.sentences(t), c.stop_text_token, "cpu") for t in TEXTS]
    alone = [generate_codes(tts.gpt, t, cfg, conds=conds, generator=torch.Generator().manual_seed(i))[0]
             for i, (t, cfg) in enumerate(zip(texts, cfgs))]

    pool, state = DecodePool(tts.gpt), {}
    join_at = {0: 0, 1: 7, 2: 19}  # request i joins before pool step join_at[i]
    for step in range(4 * STEPS):
        for i, at in join_at.items():
            if at == step:
                prompt = prepare_prompt(tts.gpt, conds, texts[i])
                prompt = prompt.repeat_rows(cfgs[i].num_beams) if cfgs[i].num_beams > 1 else prompt
                member, logits = pool.join(prompt, cfgs[i].position_mode, STEPS)
                search = new_search(prompt.history, cfgs[i], c.stop_mel_token, 1, torch.Generator().manual_seed(i))
                state[i] = [member, search, logits, None]
        if not state:
            break
        for i, (member, search, logits, _) in list(state.items()):
            tokens, rows = search.advance(logits)
            if search.done:
                pool.leave(member)
                alone[i] = (alone[i], search.result())
                del state[i]
                continue
            if rows is not None:
                pool.reorder(member, rows)
            state[i][3] = tokens
        if state:
            out = pool.step({id(s[0]): s[3] for s in state.values()})
            for s in state.values():
                s[2] = out[id(s[0])]
    assert pool.rows == 0 and not state
    for i, (expected, got) in enumerate(alone):
        assert torch.equal(got, expected), TEXTS[i]
