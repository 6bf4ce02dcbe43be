"""The tiny IndexTTS-2 base model: built deterministically on a CPU, shipped in ``assets/tiny-base-v2``.

    settings.py   the official-format config (tiny sizes, the ``fixture:`` section) and the build's knobs
    frontend.py   w2v-BERT statistics and the semantic codec fitted to the corpus
    pretrain.py   GPT pre-training with the v2 training forward; the stop-code check
    files.py      seeded random s2mel / CAMPPlus / BigVGAN v2 / emotion matrices, folder writing
    build.py      the recipe: ``build_tiny_model_v2`` / ``python -m tagtune.tiny.v2.build``
"""
