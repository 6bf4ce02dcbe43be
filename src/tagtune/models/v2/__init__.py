"""IndexTTS2 networks (nn.Modules only; files are read by ``tagtune.checkpoint``).

    gpt.py                UnifiedVoiceV2: speaker + emotion conditioning, speed rows, the shared GPT-2 trunk
    semantic_features.py  w2v-BERT 2.0 cut to the layer used, normalised (``get_emb``)
    codec.py              MaskGCT RepCodec: features -> semantic codes (``quantize``), codes -> ``vq2emb``
    s2mel.py              gpt_layer, length regulator and the flow-matching sampler (CFM) of s2mel
    dit.py                the CFM's estimator: DiT with RoPE, AdaLN, U-ViT skips and a WaveNet head
    campplus.py           CAMPPlus: Kaldi fbank -> 192-d style
    bigvgan_v2.py         BigVGAN v2 22 kHz: mel -> waveform, clamped
"""
