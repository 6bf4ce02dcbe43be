"""s2mel of IndexTTS2: semantic embeddings + GPT latents -> 80-band mel, by conditional flow matching.

    gpt_layer          GPT latents (B, N, gpt_dim) -> (B, N, 1024), added to the codec's vq2emb of the codes
    length_regulator   (B, N, 1024) -> (B, frames, channels): Linear, nearest interpolation to the target
                       frame count, 4 x (conv3, GroupNorm(1), Mish), conv1, zeroed past each length
    cfm                Euler integration of the DiT velocity over t in linspace(0, 1, steps + 1), with
                       classifier-free guidance (v = (1 + r) v_cond - r v_uncond, the unconditional pass with
                       zero prompt mel, style and content) and the prompt frames of x held at zero

``S2Mel`` holds the three parts under the names of ``s2mel.pth``'s ``net`` dict (``cfm``, ``length_regulator``,
``gpt_layer``), so its state dict is that file's three dicts with the part name as prefix.
The noise is an argument: the official code draws it with ``torch.manual_seed(seed); torch.randn(1, 80, T)``
right before sampling, which :func:`seeded_noise` reproduces without touching the global generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tagtune.config import ConfigError, LengthRegulatorConfig, S2MelConfig
from tagtune.models.v2.dit import DiT, length_mask

GPT_LAYER_IN_DIM = 1280  # the official gpt_layer input: the GPT width, hard-coded (config: fixture.gpt_layer_in_dim)
GPT_LAYER_WIDTHS = (256, 128)  # the hidden widths of gpt_layer; its output is the codec's hidden size
CFM_STEPS = 25
CFG_RATE = 0.7


def check_supported(cfg: S2MelConfig) -> None:
    """Refuse s2mel options IndexTTS2 does not use (ConfigError naming them); the rest are built as given."""
    lr, dit, wn = cfg.length_regulator, cfg.DiT, cfg.wavenet
    unsupported = [name for name, bad in [
        ("dit_type != 'DiT'", cfg.dit_type != "DiT"),
        ("length_regulator.is_discrete", lr.is_discrete), ("length_regulator.vector_quantize", lr.vector_quantize),
        ("length_regulator.n_codebooks != 1", lr.n_codebooks != 1), ("length_regulator.f0_condition", lr.f0_condition),
        ("length_regulator.sampling_ratios empty", not lr.sampling_ratios),
        ("DiT.style_condition false", not dit.style_condition), ("DiT.is_causal", dit.is_causal),
        ("DiT.final_layer_type != 'wavenet'", dit.final_layer_type != "wavenet"),
        ("DiT.time_as_token", dit.time_as_token), ("DiT.style_as_token", dit.style_as_token),
        ("DiT.zero_prompt_speech_token", dit.zero_prompt_speech_token), ("DiT.f0_condition", dit.f0_condition),
        ("DiT.add_resblock_in_transformer", dit.add_resblock_in_transformer),
        ("wavenet.style_condition != DiT.style_condition", wn.style_condition != dit.style_condition),
        ("wavenet.kernel_size even", wn.kernel_size % 2 == 0),
        ("DiT head width odd (rotary embeddings)", (dit.hidden_dim // dit.num_heads) % 2 == 1),
        ("length_regulator.channels != DiT.content_dim", lr.channels != dit.content_dim),
    ] if bad]
    if unsupported:
        raise ConfigError(f"s2mel: not an IndexTTS2 configuration this implementation supports: {unsupported}")


class InterpolateRegulator(nn.Module):
    """Continuous length regulator: (B, N, in_channels) + target lengths -> (B, max(ylens), channels)."""

    def __init__(self, cfg: LengthRegulatorConfig):
        super().__init__()
        C = cfg.channels
        layers: list[nn.Module] = []
        for _ in cfg.sampling_ratios:
            layers += [nn.Conv1d(C, C, 3, 1, 1), nn.GroupNorm(1, C), nn.Mish()]
        self.model = nn.Sequential(*layers, nn.Conv1d(C, C, 1))
        self.embedding = nn.Embedding(cfg.content_codebook_size, C)  # discrete content only; unused
        self.mask_token = nn.Parameter(torch.zeros(1, C))  # unused at inference
        self.content_in_proj = nn.Linear(cfg.in_channels, C)

    def forward(self, x: torch.Tensor, ylens: torch.Tensor) -> torch.Tensor:
        x = self.content_in_proj(x).transpose(1, 2)  # (B, C, N)
        frames = int(ylens.max())
        x = F.interpolate(x, size=frames, mode="nearest")  # (B, C, frames)
        out = self.model(x).transpose(1, 2)  # (B, frames, C)
        return out * length_mask(ylens, frames)[..., None]


class CFM(nn.Module):
    """Conditional flow matching sampler around the DiT ``estimator``."""

    def __init__(self, cfg: S2MelConfig):
        super().__init__()
        self.in_channels = cfg.DiT.in_channels
        self.estimator = DiT(cfg.DiT, cfg.wavenet, cfg.style_encoder.dim)

    def guided_pair(self, x, prompt_x, x_lens, t, style, mu) -> torch.Tensor:
        """The estimator on the batch [conditional; unconditional] (zero prompt, style and content): (2B, 80, T)."""
        zeros = torch.zeros_like
        lens = x_lens if x_lens.numel() == 1 else torch.cat([x_lens, x_lens])  # one length broadcasts, as official
        return self.estimator(torch.cat([x, x]), torch.cat([prompt_x, zeros(prompt_x)]), lens,
                              t.reshape(1).expand(2 * x.shape[0]), torch.cat([style, zeros(style)]),
                              torch.cat([mu, zeros(mu)]))

    def inference(self, mu: torch.Tensor, x_lens: torch.Tensor, prompt: torch.Tensor, style: torch.Tensor,
                  noise: torch.Tensor, n_timesteps: int = CFM_STEPS, cfg_rate: float = CFG_RATE) -> torch.Tensor:
        """Mel (B, 80, T) from content mu (B, T, C), the prompt mel (B, 80, P), style (B, S), noise (B, 80, T).

        The first P frames of the result are zero (they belong to the prompt).
        """
        t_span = torch.linspace(0, 1, n_timesteps + 1, device=mu.device)
        P = prompt.shape[-1]
        prompt_x = torch.zeros_like(noise)
        prompt_x[..., :P] = prompt
        x = noise.clone()
        x[..., :P] = 0
        t = t_span[0]
        for step in range(1, len(t_span)):
            dt = t_span[step] - t_span[step - 1]
            if cfg_rate > 0:
                cond, uncond = self.guided_pair(x, prompt_x, x_lens, t, style, mu).chunk(2, dim=0)
                velocity = (1.0 + cfg_rate) * cond - cfg_rate * uncond
            else:
                velocity = self.estimator(x, prompt_x, x_lens, t.reshape(1).expand(x.shape[0]), style, mu)
            x = x + dt * velocity
            t = t + dt  # accumulated, as the official loop does (not t_span[step])
            x[:, :, :P] = 0
        return x


class S2Mel(nn.Module):
    """The three parts of ``s2mel.pth`` and the two calls IndexTTS2 makes of them."""

    def __init__(self, cfg: S2MelConfig, gpt_layer_in_dim: int = GPT_LAYER_IN_DIM):
        super().__init__()
        check_supported(cfg)
        self.cfg = cfg
        widths = (gpt_layer_in_dim, *GPT_LAYER_WIDTHS, cfg.length_regulator.in_channels)
        self.gpt_layer = nn.Sequential(*(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.length_regulator = InterpolateRegulator(cfg.length_regulator)
        self.cfm = CFM(cfg)

    def remove_weight_norm(self) -> None:
        self.cfm.estimator.remove_weight_norm()

    def content(self, semantic: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Length-regulated content (B, max(frames), C) of semantic embeddings (B, N, 1024)."""
        return self.length_regulator(semantic, frames)

    def semantic(self, vq_emb: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """``S_infer``: the codec embedding of the generated codes plus the projected GPT latents (B, N, 1024)."""
        return vq_emb + self.gpt_layer(latent)

    def generate(self, prompt_condition: torch.Tensor, condition: torch.Tensor, ref_mel: torch.Tensor,
                 style: torch.Tensor, noise: torch.Tensor, n_timesteps: int = CFM_STEPS,
                 cfg_rate: float = CFG_RATE) -> torch.Tensor:
        """The generated mel (B, 80, T_gen) after the prompt's frames; noise covers prompt + generated frames."""
        mu = torch.cat([prompt_condition, condition], dim=1)  # (B, P + T_gen, C)
        x_lens = torch.tensor([mu.shape[1]], device=mu.device)
        mel = self.cfm.inference(mu, x_lens, ref_mel, style, noise, n_timesteps, cfg_rate)
        return mel[:, :, ref_mel.shape[-1]:]


def seeded_noise(frames: int, seed: int, channels: int = 80, dtype=torch.float32) -> torch.Tensor:
    """(1, channels, frames) standard normal noise, equal to ``torch.manual_seed(seed); torch.randn(...)`` on CPU."""
    return torch.randn(1, channels, frames, generator=torch.Generator().manual_seed(seed), dtype=dtype)
