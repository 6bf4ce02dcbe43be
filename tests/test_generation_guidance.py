"""Tag guidance (generation/guidance.py) on the shipped base: the guided scores are the formula applied to the
two branches, rows without a tag decode as without guidance, beams and the KV cache keep their rules."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from base_fixtures import load_plain_gpt
from tagtune.generation import GenerationConfig, MelDecoder, generate_codes, prepare_prompt
from tagtune.generation.guidance import (
    Anchor,
    Guide,
    GuidedDecoder,
    anchored_start,
    check_anchor_share,
    check_tag_guidance,
    guided_scores,
)

MAX_NEW = 30


@pytest.fixture(scope="module")
def model(shipped_base):
    return load_plain_gpt(shipped_base)


def texts(base_inputs):
    """A text and a "tag-free twin" with one id fewer (any id stands in for a tag here)."""
    tagged = base_inputs["gen_text_ids"].long()  # (1, L)
    free = torch.cat([tagged[:, :2], tagged[:, 3:]], dim=1)  # (1, L - 1)
    return tagged, free


@torch.no_grad()
def branch_logits(model, conds, ids, tokens):
    """Next-code logits of one text after feeding ``tokens`` one at a time (a plain MelDecoder)."""
    dec = MelDecoder(model, prepare_prompt(model, conds, ids), use_cache=True, position_mode="train",
                     max_new_tokens=MAX_NEW)
    logits = [dec.start()]
    for t in tokens:
        logits.append(dec.step(torch.tensor([t])))
    return logits


def test_guided_steps_apply_the_formula_to_both_branches(model, base_inputs):
    tagged, free = texts(base_inputs)
    conds = base_inputs["conds"]
    tokens = [5, 17, 3]
    want_t, want_f = branch_logits(model, conds, tagged, tokens), branch_logits(model, conds, free, tokens)
    both = torch.cat([tagged, torch.nn.functional.pad(free, (0, 1), value=model.cfg.stop_text_token)])
    inner = MelDecoder(model, prepare_prompt(model, conds, both), use_cache=True, position_mode="train",
                       max_new_tokens=MAX_NEW)
    guided = GuidedDecoder(inner, Guide(2.5, torch.tensor([False])))
    got = [guided.start()] + [guided.step(torch.tensor([t])) for t in tokens]
    for g, t, f in zip(got, want_t, want_f, strict=True):
        lt, lf = t.log_softmax(-1), f.log_softmax(-1)
        torch.testing.assert_close(g, lf + 2.5 * (lt - lf), rtol=0, atol=1e-4)
        assert not torch.allclose(g, lt, atol=1e-3)  # the branches differ: guidance moved the scores


def test_guidance_leans_toward_the_tagged_branch(model, base_inputs):
    """Sampled with guidance, the codes are more likely under the tagged text relative to the tag-free one."""
    tagged, free = texts(base_inputs)
    conds = base_inputs["conds"]
    rows = 16
    ids, free_ids = tagged.expand(rows, -1), free.expand(rows, -1)

    def lean(scale):
        cfg = GenerationConfig(num_beams=1, repetition_penalty=1.0, max_new_tokens=MAX_NEW, position_mode="train",
                               tag_guidance=scale)
        codes, lengths = generate_codes(model, ids, cfg, conds=conds, free_ids=free_ids,
                                        generator=torch.Generator().manual_seed(0))
        total, count = 0.0, 0
        for row, n in zip(codes, lengths, strict=True):
            seq = row[: int(n)].tolist()
            lt, lf = branch_logits(model, conds, tagged, seq), branch_logits(model, conds, free, seq)
            for k, c in enumerate(seq):
                total += float(lt[k].log_softmax(-1)[0, c] - lf[k].log_softmax(-1)[0, c])
                count += 1
        return total / count

    assert lean(4.0) > lean(1.0) + 0.05


@pytest.mark.parametrize("beams", [1, 3])
def test_rows_without_a_tag_decode_as_without_guidance(model, base_inputs, beams):
    tagged, free = texts(base_inputs)
    batch = base_inputs["gen_batch_text_ids"]  # two texts; the first is ``tagged``
    ids = batch
    free_ids = torch.cat([torch.nn.functional.pad(free, (0, batch.shape[1] - free.shape[1]),
                                                  value=model.cfg.stop_text_token), batch[1:]])
    cfg = dict(do_sample=False, num_beams=beams, max_new_tokens=MAX_NEW)  # the official penalty 10 kept
    plain, plain_lengths = generate_codes(model, ids, GenerationConfig(**cfg), conds=base_inputs["conds"])
    guided, lengths = generate_codes(model, ids, GenerationConfig(tag_guidance=3.0, **cfg),
                                     conds=base_inputs["conds"], free_ids=free_ids)
    n = int(lengths[1])
    assert n == int(plain_lengths[1]) and guided[1, :n].tolist() == plain[1, :n].tolist()  # row 1: no tag
    assert guided[0].tolist() != plain[0].tolist()  # row 0 is guided


def test_all_tag_free_texts_and_scale_one_are_plain_decoding(model, base_inputs):
    ids = base_inputs["gen_batch_text_ids"]
    cfg = GenerationConfig.greedy(max_new_tokens=MAX_NEW)
    plain, _ = generate_codes(model, ids, cfg, conds=base_inputs["conds"])
    same, _ = generate_codes(model, ids, GenerationConfig.greedy(max_new_tokens=MAX_NEW, tag_guidance=2.0),
                             conds=base_inputs["conds"], free_ids=ids)
    tagged, free = texts(base_inputs)
    off, _ = generate_codes(model, tagged, cfg, conds=base_inputs["conds"], free_ids=free)
    alone, _ = generate_codes(model, tagged, cfg, conds=base_inputs["conds"])
    assert same.tolist() == plain.tolist() and off.tolist() == alone.tolist()


def test_beam_sampling_with_guidance_is_reproducible_and_valid(model, base_inputs):
    tagged, free = texts(base_inputs)
    cfg = GenerationConfig(num_beams=3, max_new_tokens=MAX_NEW, tag_guidance=2.0)
    runs = [generate_codes(model, tagged, cfg, conds=base_inputs["conds"], free_ids=free,
                           generator=torch.Generator().manual_seed(s)) for s in (4, 4)]
    assert runs[0][0].tolist() == runs[1][0].tolist()
    codes, lengths = runs[0]
    n = int(lengths[0])
    assert ((codes[0, :n] >= 0) & (codes[0, :n] < model.cfg.start_mel_token)).all()


def test_guidance_needs_the_tag_free_texts_and_a_scale_in_range(model, base_inputs):
    tagged, _ = texts(base_inputs)
    with pytest.raises(ValueError, match="free_ids"):
        generate_codes(model, tagged, GenerationConfig(tag_guidance=2.0, max_new_tokens=MAX_NEW),
                       conds=base_inputs["conds"])
    for bad in (0.5, float("nan"), 11.0):
        with pytest.raises(ValueError, match="tag_guidance must be in"):
            GenerationConfig(tag_guidance=bad)
    assert check_tag_guidance(1) == 1.0


def test_guided_scores_keep_plain_rows_as_logits():
    tagged, free = torch.randn(2, 7), torch.randn(2, 7)
    out = guided_scores(tagged, free, 3.0, torch.tensor([True, False]))
    assert torch.equal(out[0], tagged[0])
    lt, lf = tagged[1].log_softmax(-1), free[1].log_softmax(-1)
    torch.testing.assert_close(out[1], lf + 3.0 * (lt - lf))


# ------------------------------------------------------------------------------------ anchored to the base

@pytest.fixture(scope="module")
def other_base(model):
    """A stand-in for the base a tuned model came from: the same shape, every block's MLP moved."""
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        for block in other.gpt.h:
            block.mlp.c_proj.weight.mul_(1.5)
    return other


def test_anchored_steps_start_from_the_base_on_the_tag_free_text(model, other_base, base_inputs):
    tagged, free = texts(base_inputs)
    conds = base_inputs["conds"]
    base_conds = 0.8 * conds  # the base's own prompt for the same reference
    tokens = [5, 17, 3]
    want_t, want_f = branch_logits(model, conds, tagged, tokens), branch_logits(model, conds, free, tokens)
    want_b = branch_logits(other_base, base_conds, free, tokens)
    both = torch.cat([tagged, torch.nn.functional.pad(free, (0, 1), value=model.cfg.stop_text_token)])

    def decoder(m, c, ids):
        return MelDecoder(m, prepare_prompt(m, c, ids), use_cache=True, position_mode="train", max_new_tokens=MAX_NEW)

    guided = GuidedDecoder(decoder(model, conds, both), Guide(1.0, torch.tensor([False])),
                           decoder(other_base, base_conds, free))
    got = [guided.start()] + [guided.step(torch.tensor([t])) for t in tokens]
    for g, t, f, b in zip(got, want_t, want_f, want_b, strict=True):
        lt, lf, lb = t.log_softmax(-1), f.log_softmax(-1), b.log_softmax(-1)
        torch.testing.assert_close(g, lb + (lt - lf), rtol=0, atol=1e-4)
        assert not torch.allclose(g, lt, atol=1e-3)  # scale 1 is not plain decoding once anchored


@pytest.mark.parametrize("beams", [1, 3])
def test_anchored_rows_without_a_tag_decode_as_the_base(model, other_base, base_inputs, beams):
    tagged, free = texts(base_inputs)
    batch = base_inputs["gen_batch_text_ids"]  # two texts; the first is ``tagged``
    free_ids = torch.cat([torch.nn.functional.pad(free, (0, batch.shape[1] - free.shape[1]),
                                                  value=model.cfg.stop_text_token), batch[1:]])
    conds, base_conds = base_inputs["conds"], 0.8 * base_inputs["conds"]
    cfg = GenerationConfig(do_sample=False, num_beams=beams, max_new_tokens=MAX_NEW, tag_guidance=2.0)
    anchored, lengths = generate_codes(model, batch, cfg, conds=conds, free_ids=free_ids,
                                       anchor=Anchor(other_base, base_conds))
    base, base_lengths = generate_codes(other_base, batch[1:], GenerationConfig.greedy(num_beams=beams,
                                                                                       max_new_tokens=MAX_NEW),
                                        conds=base_conds)
    tuned, _ = generate_codes(model, batch[1:], GenerationConfig.greedy(num_beams=beams, max_new_tokens=MAX_NEW),
                              conds=conds)
    n = int(lengths[1])
    assert n == int(base_lengths[0]) and anchored[1, :n].tolist() == base[0, :n].tolist()
    assert base[0].tolist() != tuned[0].tolist()  # the two models differ, so the row followed the base
    only_free, _ = generate_codes(model, batch[1:], cfg, conds=conds, free_ids=batch[1:],
                                  anchor=Anchor(other_base, base_conds))
    assert only_free[0].tolist() == base[0].tolist()  # no tagged row at all: the base decodes alone


def test_the_anchor_share_moves_the_start_toward_the_tuned_twin():
    tagged, free, base = torch.randn(3, 7), torch.randn(3, 7), torch.randn(3, 7)
    plain = torch.tensor([True, False, False])
    lt, lf, lb = (x.log_softmax(-1) for x in (tagged, free, base))
    torch.testing.assert_close(anchored_start(base, lf, 0.0), lb)
    torch.testing.assert_close(anchored_start(base, lf, 1.0), lf)
    half = anchored_start(base, lf, 0.5)
    torch.testing.assert_close(half, (0.5 * lb + 0.5 * lf).log_softmax(-1))
    torch.testing.assert_close(half.exp().sum(-1), torch.ones(3))  # a distribution again
    out = guided_scores(tagged, free, 3.0, plain, base, share=0.5)
    assert torch.equal(out[0], base[0])  # a row without a tag keeps the base's logits, whatever the share
    torch.testing.assert_close(out[1:], half[1:] + 3.0 * (lt[1:] - lf[1:]))
    assert torch.equal(guided_scores(tagged, free, 3.0, plain, base), guided_scores(tagged, free, 3.0, plain, base,
                                                                                     share=0.0))


def test_the_anchor_share_is_checked():
    assert check_anchor_share("0.25") == 0.25
    for bad in (-0.1, 1.5, float("nan"), "half", None):
        with pytest.raises(ValueError, match=r"anchor_share must be in \[0, 1\]"):
            check_anchor_share(bad)
    with pytest.raises(ValueError, match="anchor_share"):
        GenerationConfig(anchor_share=2.0)


@pytest.mark.parametrize("beams", [1, 3])
def test_share_one_guides_tagged_rows_from_the_twin_and_plain_rows_from_the_base(model, other_base, base_inputs,
                                                                                 beams):
    tagged, free = texts(base_inputs)
    batch = base_inputs["gen_batch_text_ids"]  # two texts; the first is ``tagged``, the second has no tag
    free_ids = torch.cat([torch.nn.functional.pad(free, (0, batch.shape[1] - free.shape[1]),
                                                  value=model.cfg.stop_text_token), batch[1:]])
    conds, base_conds = base_inputs["conds"], 0.8 * base_inputs["conds"]
    cfg = GenerationConfig(do_sample=False, num_beams=beams, max_new_tokens=MAX_NEW, tag_guidance=2.0)
    twin, twin_lengths = generate_codes(model, batch, cfg, conds=conds, free_ids=free_ids)
    runs = {share: generate_codes(model, batch, replace(cfg, anchor_share=share), conds=conds, free_ids=free_ids,
                                  anchor=Anchor(other_base, base_conds)) for share in (0.0, 1.0)}
    n = int(twin_lengths[0])
    codes, lengths = runs[1.0]
    assert int(lengths[0]) == n and codes[0, :n].tolist() == twin[0, :n].tolist()  # the tagged row: the twin's
    assert runs[0.0][0][0].tolist() != codes[0].tolist()  # from the base alone it decodes otherwise
    base, base_lengths = generate_codes(other_base, batch[1:], GenerationConfig.greedy(num_beams=beams,
                                                                                       max_new_tokens=MAX_NEW),
                                        conds=base_conds)
    m = int(base_lengths[0])
    for run, run_lengths in runs.values():  # the row without a tag decodes as the base at any share
        assert int(run_lengths[1]) == m and run[1, :m].tolist() == base[0, :m].tolist()


def test_the_model_as_its_own_anchor_is_tag_guidance(model, base_inputs):
    tagged, free = texts(base_inputs)
    conds = base_inputs["conds"]
    cfg = GenerationConfig(num_beams=3, max_new_tokens=MAX_NEW, tag_guidance=2.0)
    runs = [generate_codes(model, tagged, cfg, conds=conds, free_ids=free, anchor=anchor,
                           generator=torch.Generator().manual_seed(2)) for anchor in (None, Anchor(model, conds))]
    assert runs[0][0].tolist() == runs[1][0].tolist()


# ------------------------------------------------------------------------------------------ in synthesis

@pytest.fixture(scope="module")
def tagged_tts(shipped_base, tmp_path_factory):
    from tagtune.synthesis.tts import TTS
    from tagtune.tags.add import add_tags

    out = tmp_path_factory.mktemp("guided") / "model"
    add_tags(shipped_base, ["<laughs>"], out)
    return TTS.load(out, precision="fp32", max_sentence_tokens=12, batch_size=2)


def test_tokenizer_drops_each_tag_and_its_bare_space(tagged_tts):
    tok = tagged_tts.tokenizer
    ids = tok.encode("well <laughs> that is funny")
    free = tok.without_tags(ids)
    assert tok.tag_ids["<laughs>"] in ids and tok.tag_ids["<laughs>"] not in free
    assert len(free) == len(ids) - 1 - (tok.tag_space_id is not None)
    assert tok.without_tags(free) == free


GUIDED = dict(num_beams=1, max_new_tokens=60)


def test_synthesis_guides_tagged_sentences_and_leaves_the_others(tagged_tts, reference_wav):
    tagged, plain_text = "Well <laughs> that is funny.", "Well, that is funny."
    runs = {(text, g): tagged_tts.synthesize(text, reference_wav, seed=3,
                                             generation=GenerationConfig(tag_guidance=g, **GUIDED))
            for text in (tagged, plain_text) for g in (1.0, 4.0)}
    assert [c.tolist() for c in runs[tagged, 4.0].codes] != [c.tolist() for c in runs[tagged, 1.0].codes]
    assert (runs[plain_text, 4.0].audio == runs[plain_text, 1.0].audio).all()


def test_guided_stream_joins_to_guided_synthesis(tagged_tts, reference_wav):
    import numpy as np

    from tagtune.synthesis.stream import STREAM_TOLERANCE_LSB

    text = "Well <laughs> that is funny, it costs ten dollars. Hello there, how are you today?"
    cfg = GenerationConfig(tag_guidance=3.0, **GUIDED)
    assert len(tagged_tts.sentences(text)) >= 2
    one = tagged_tts.synthesize(text, reference_wav, generation=cfg, seed=5)
    joined = np.concatenate(list(tagged_tts.stream(text, reference_wav, generation=cfg, seed=5)))
    assert joined.shape == one.audio.shape
    assert np.abs(joined.astype(int) - one.audio.astype(int)).max() <= STREAM_TOLERANCE_LSB


def test_the_official_decoding_refuses_tag_guidance(tagged_tts, reference_wav):
    from tagtune.errors import UserError

    with pytest.raises(UserError, match="not part of the official decoding"):
        tagged_tts.synthesize("Well <laughs> fine.", reference_wav, compat="official",
                              generation=GenerationConfig(tag_guidance=2.0, **GUIDED))


# ------------------------------------------------------------------------------- anchored, in synthesis

@pytest.fixture(scope="module")
def anchored_pair(tagged_tts):
    """A "tuned" model (the tagged model with every block's MLP moved) and the same one anchored to the
    unmoved model, standing in for the base it came from."""
    import copy

    from tagtune.synthesis.tts import TTS

    moved = copy.deepcopy(tagged_tts.gpt)
    with torch.no_grad():
        for block in moved.gpt.h:
            block.mlp.c_proj.weight.mul_(1.5)
    parts = (tagged_tts.vocoder, tagged_tts.tokenizer, None)
    options = dict(precision="fp32", max_sentence_tokens=12, batch_size=2)
    return TTS(moved, *parts, **options), TTS(moved, *parts, anchor=tagged_tts.gpt, **options)


def test_anchored_synthesis_speaks_untagged_text_as_the_base(tagged_tts, anchored_pair, reference_wav):
    from tagtune.synthesis.tts import TTS

    alone, anchored = anchored_pair
    text, cfg = "Well, that is funny.", GenerationConfig(**GUIDED)
    runs = [tts.synthesize(text, reference_wav, seed=3, generation=cfg) for tts in (tagged_tts, alone, anchored)]
    base, tuned, got = ([c.tolist() for c in r.codes] for r in runs)
    assert got == base and tuned != base
    tagged = anchored.synthesize("Well <laughs> that is funny.", reference_wav, seed=3, generation=cfg)
    assert [c.tolist() for c in tagged.codes] != base
    # a reference cache made without the anchor (shared with another model): the anchor's latents made on use
    shared = TTS(alone.gpt, alone.vocoder, alone.tokenizer, None, precision="fp32", max_sentence_tokens=12,
                 batch_size=2, anchor=tagged_tts.gpt, references=tagged_tts.references)
    again = shared.synthesize("Well <laughs> that is funny.", reference_wav, seed=3, generation=cfg)
    assert [c.tolist() for c in again.codes] == [c.tolist() for c in tagged.codes]


def test_anchored_stream_joins_to_anchored_synthesis(anchored_pair, reference_wav):
    import numpy as np

    from tagtune.synthesis.stream import STREAM_TOLERANCE_LSB

    _, anchored = anchored_pair
    text = "Well <laughs> that is funny, it costs ten dollars. Hello there, how are you today?"
    cfg = GenerationConfig(tag_guidance=1.5, **GUIDED)
    one = anchored.synthesize(text, reference_wav, generation=cfg, seed=5)
    joined = np.concatenate(list(anchored.stream(text, reference_wav, generation=cfg, seed=5)))
    assert joined.shape == one.audio.shape
    assert np.abs(joined.astype(int) - one.audio.astype(int)).max() <= STREAM_TOLERANCE_LSB


def test_an_anchor_share_without_an_anchor_is_refused(tagged_tts, anchored_pair, reference_wav):
    from tagtune.errors import UserError

    share = GenerationConfig.greedy(max_new_tokens=MAX_NEW, tag_guidance=2.0, anchor_share=0.5)
    with pytest.raises(UserError, match="give --base-anchor BASE or drop --anchor-share"):
        tagged_tts.synthesize("Well <laughs> fine.", reference_wav, generation=share)
    _, anchored = anchored_pair
    assert len(anchored.synthesize("Well <laughs> fine.", reference_wav, generation=share).audio) > 0


def test_anchoring_refuses_the_official_decoding_and_a_foreign_base(anchored_pair, reference_wav, shipped_base,
                                                                    tmp_path):
    from tagtune.errors import UserError
    from tagtune.synthesis.tts import TTS
    from tagtune.tags.add import add_tags

    _, anchored = anchored_pair
    with pytest.raises(UserError, match="anchored to the base is not part of the official decoding"):
        anchored.synthesize("Well <laughs> fine.", reference_wav, compat="official",
                            generation=GenerationConfig(**GUIDED))
    two = tmp_path / "two-tags"
    add_tags(shipped_base, ["<laughs>", "<sighs>"], two)
    with pytest.raises(UserError, match="not the base this model was trained from"):
        TTS.load(two, base_anchor=two, precision="fp32")
    assert TTS.load(two, base_anchor=shipped_base, precision="fp32").anchor is not None
