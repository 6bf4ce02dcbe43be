"""The tiny IndexTTS base model: built deterministically on a CPU in minutes, shipped in ``assets/tiny-base``.

    settings.py        the official-format config of the tiny model and the build recipe's knobs
    corpus.py          untagged English + Mandarin corpus of the pre-training voices (roles checked) ->
                       waveforms, mels, train/validation split per speaker and language
    bpe.py             sentencepiece unigram ``bpe.model`` with the official piece layout, every generator
                       CJK character a symbol
    kmeans.py          seeded k-means; the silence code pinned to 52
    dvae_fit.py        DVAE: random encoder, k-means codebook, fitted decoder
    pretrain.py        GPT pre-training with the official training forward
    vocoder_train.py   BigVGAN fit (identity late stages, multi-resolution mel L1)
    vocoder_stage.py   GPT generation check, GPT latents -> vocoder fit
    quality.py         per-language base quality: validation mel CE, stop-code rate
    files.py           folder writing, storage dtypes, BUILD.json
    build.py           the recipe: ``build_tiny_model`` / ``python -m tagtune.tiny.build``
"""

from tagtune.tiny.settings import BuildSettings, TinySizes, tiny_config

__all__ = ["BuildSettings", "TinySizes", "tiny_config", "build_tiny_model", "TINY_BASE_DIR"]


def __getattr__(name: str):
    # build.py imports the synthetic corpus and generation stacks: load it only when asked for
    if name in ("build_tiny_model", "TINY_BASE_DIR"):
        from tagtune.tiny import build

        return build.build_tiny_model if name == "build_tiny_model" else build.DEFAULT_OUT
    raise AttributeError(name)
