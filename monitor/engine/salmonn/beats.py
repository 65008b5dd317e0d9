"""BEATs, the audio-event encoder SALMONN hears non-speech sounds with, written for inference.

No package that installs next to torch 2.13 provides BEATs, so it is restated here from the
published architecture, and loads Microsoft's checkpoints (`{"cfg": ..., "model": state_dict}`)
strictly, under their own key names. What it must get right, because the weights were trained
with it (each checked against the original code's outputs, tests/fixtures/salmonn/beats_tiny_io.pt):

- 16x16 patches over the (time, mel) fbank, tokens time-major (8 frequency patches per 160 ms);
- post-LN transformer with DeepNorm residuals, `LN(residual * alpha + f(x))`, alpha from the
  configured layer count; the encoder's LayerNorm comes before the layers, none after;
- a convolutional position embedding whose weight norm is taken per kernel tap (dim 2);
- one relative-position bias table shared by all layers, bucketed T5-style, scaled per layer
  and per query by a GRU-like gate computed from that layer's un-scaled query projection;
- the original's padding-mask arithmetic, which pools masks by grouping consecutive entries
  rather than by true frame positions.

Dropout, layer drop and gradient scaling do nothing at inference and are left out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from monitor.engine.salmonn.fbank import beats_fbank
from monitor.engine.salmonn.strict import load_strict

log = logging.getLogger(__name__)

SHARED_BIAS = "self_attn.relative_attention_bias.weight"


@dataclass
class BEATsConfig:
    """The checkpoint's `cfg`; defaults are the original's, unknown keys are kept aside."""

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    deep_norm: bool = False
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = False
    num_buckets: int = 320
    max_distance: int = 1280
    gru_rel_pos: bool = False
    finetuned_model: bool = False
    predictor_class: int = 527

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> BEATsConfig:
        known = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in cfg.items() if k in known})
        if config.activation_fn != "gelu":
            raise ValueError(f"BEATs activation {config.activation_fn!r} is not supported (only gelu)")
        return config


def relative_buckets(relative: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5-style bidirectional buckets of key - query offsets, computed in float32 as the original does."""
    half = num_buckets // 2
    buckets = (relative > 0).to(torch.long) * half
    distance = relative.abs()
    exact = half // 2
    far = exact + (torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
                   * (half - exact)).to(torch.long)
    far = torch.clamp(far, max=half - 1)
    return buckets + torch.where(distance < exact, distance, far)


@lru_cache(maxsize=16)
def _bucket_grid(length: int, num_buckets: int, max_distance: int, device: str) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.long)
    return relative_buckets(position[None, :] - position[:, None], num_buckets, max_distance).to(device)


def shrink_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    """The original's mask pooling: drop `len % length` trailing entries, group the rest, all() per group."""
    extra = mask.shape[1] % length
    if extra:
        mask = mask[:, :-extra]
    return mask.view(mask.shape[0], length, -1).all(-1)


class WeightNormConv1d(nn.Module):
    """Conv1d whose weight is g * v / |v|, the norm taken per kernel tap (torch weight_norm, dim=2)."""

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.groups = groups
        self.padding = kernel // 2
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        out = F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)
        return out[..., :-1] if self.kernel % 2 == 0 else out  # "same" length for an even kernel


class Attention(nn.Module):
    """Self-attention with the gated relative-position bias."""

    def __init__(self, cfg: BEATsConfig, owns_table: bool):
        super().__init__()
        dim, heads = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        self.heads = heads
        self.head_dim = dim // heads
        self.scaling = self.head_dim ** -0.5
        if cfg.relative_position_embedding and owns_table:
            self.relative_attention_bias = nn.Embedding(cfg.num_buckets, heads)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.gated = cfg.gru_rel_pos
        if self.gated:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None, padding: torch.Tensor | None) -> torch.Tensor:
        """x (B, T, C); bias (H, T, T) un-gated, or None; padding (B, T) True at padded keys."""
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(x)), self._split(self.v_proj(x))
        mask = None
        if bias is not None:
            mask = bias.unsqueeze(0)
            if self.gated:  # per head and query, from the query projection before scaling
                batch, heads, length, _ = q.shape
                gates = torch.sigmoid(self.grep_linear(q).view(batch, heads, length, 2, 4).sum(-1))
                gate_a, gate_b = gates.chunk(2, dim=-1)
                mask = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * mask
        if padding is not None:
            blocked = torch.zeros(padding.shape, dtype=q.dtype, device=q.device).masked_fill(padding, float("-inf"))
            blocked = blocked[:, None, None, :]
            mask = blocked if mask is None else mask + blocked
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)
        return self.out_proj(out.transpose(1, 2).reshape(x.shape))


class Layer(nn.Module):
    """One encoder layer (post-LN, optionally DeepNorm-scaled residuals)."""

    def __init__(self, cfg: BEATsConfig, owns_table: bool):
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.self_attn = Attention(cfg, owns_table)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.pre_norm = cfg.layer_norm_first
        self.alpha = math.pow(2 * cfg.encoder_layers, 0.25) if cfg.deep_norm else 1.0

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(self.fc1(x).float()).to(x.dtype)  # the original's GELU runs in float32
        return self.fc2(hidden)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None, padding: torch.Tensor | None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.self_attn(self.self_attn_layer_norm(x), bias, padding)
            return x + self._ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x * self.alpha + self.self_attn(x, bias, padding))
        return self.final_layer_norm(x * self.alpha + self._ffn(x))


class Encoder(nn.Module):
    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        self.cfg = cfg
        self.pos_conv = nn.ModuleList([WeightNormConv1d(cfg.encoder_embed_dim, cfg.conv_pos, cfg.conv_pos_groups)])
        self.layers = nn.ModuleList([Layer(cfg, owns_table=i == 0) for i in range(cfg.encoder_layers)])
        self.layer_norm = nn.LayerNorm(cfg.encoder_embed_dim)

    def relative_bias(self, length: int) -> torch.Tensor | None:
        """(H, T, T): the shared table looked up at bucket(key - query); gated later, per layer."""
        if not self.cfg.relative_position_embedding:
            return None
        table = self.layers[0].self_attn.relative_attention_bias.weight
        grid = _bucket_grid(length, self.cfg.num_buckets, self.cfg.max_distance, str(table.device))
        return table[grid].permute(2, 0, 1)

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None,
                trace: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if padding is not None:
            x = x.masked_fill(padding.unsqueeze(-1), 0.0)
        x = x + F.gelu(self.pos_conv[0](x.transpose(1, 2))).transpose(1, 2)
        if not self.cfg.layer_norm_first:
            x = self.layer_norm(x)
        bias = self.relative_bias(x.shape[1])
        if bias is not None:
            bias = bias.to(x.dtype)
        for i, layer in enumerate(self.layers):
            if trace is not None and i == 0:
                trace["encoder_layer0_in"] = x
            x = layer(x, bias, padding)
            if trace is not None and i == 0:
                trace["encoder_layer0_out"] = x
        if self.cfg.layer_norm_first:
            x = self.layer_norm(x)
        return x


class BEATs(nn.Module):
    """The BEATs encoder: normalised fbank (or waveform) -> (B, tokens, encoder_embed_dim)."""

    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        self.cfg = cfg
        patch = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=patch, stride=patch, bias=cfg.conv_bias)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.post_extract_proj = (nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim)
                                  if cfg.embed_dim != cfg.encoder_embed_dim else None)
        self.encoder = Encoder(cfg)
        if cfg.finetuned_model:  # the AudioSet classifier of fine-tuned checkpoints: loaded, never run
            self.predictor = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class)

    @property
    def width(self) -> int:
        return self.cfg.encoder_embed_dim

    def features(self, fbank: torch.Tensor, padding_mask: torch.Tensor | None = None,
                 trace: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised fbank (B, frames, 128) and its frame padding mask -> (tokens (B, N, C), token mask)."""
        param = self.patch_embedding.weight
        x = self.patch_embedding(fbank.to(param.dtype).unsqueeze(1))  # (B, D, T/16, 128/16)
        x = x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)  # time-major tokens
        x = self.layer_norm(x)
        if trace is not None:
            trace["patch_tokens_ln"] = x
        if padding_mask is not None:
            padding_mask = shrink_mask(padding_mask, x.shape[1])
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.encoder(x, padding_mask, trace), padding_mask

    def extract_features(self, waveform: torch.Tensor, padding_mask: torch.Tensor | None = None,
                         trace: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Waveform (B, N) in [-1, 1] and its sample padding mask -> (tokens, token mask), as SALMONN calls it."""
        fbank = beats_fbank(waveform)
        if padding_mask is not None:
            padding_mask = shrink_mask(padding_mask, fbank.shape[1])
            if trace is not None:
                trace["frame_padding_mask"] = padding_mask
        return self.features(fbank, padding_mask, trace)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any]) -> BEATs:
        """Build from `{"cfg", "model"}` and load every weight strictly; ValueError names what does not fit."""
        if not isinstance(checkpoint, Mapping) or "cfg" not in checkpoint or "model" not in checkpoint:
            raise ValueError("not a BEATs checkpoint (expected a dict with 'cfg' and 'model')")
        cfg = BEATsConfig.from_dict(checkpoint["cfg"])
        with torch.device("meta"):
            model = cls(cfg)
        model.load_strict(checkpoint["model"])
        return model.eval()

    def load_strict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load `state` (original key names) into this module, every key used and every weight given.

        The original shares one bias table across layers, and its state dict repeats it under each
        layer's name; loading it, the last copy wins, so the last one is taken here too. A pos_conv
        saved by a newer torch (parametrizations.weight.original0/1) is read as weight_g/weight_v.
        """
        state = dict(state)
        for old, new in (("parametrizations.weight.original0", "weight_g"), ("parametrizations.weight.original1", "weight_v")):
            key = f"encoder.pos_conv.0.{old}"
            if key in state:
                state[f"encoder.pos_conv.0.{new}"] = state.pop(key)
        copies = sorted((k for k in state if k.startswith("encoder.layers.") and k.endswith(SHARED_BIAS)),
                        key=lambda k: int(k.split(".")[2]))
        if copies and self.cfg.relative_position_embedding:
            tables = [state.pop(k) for k in copies]
            if any(not torch.equal(tables[0], t) for t in tables[1:]):
                log.warning("BEATs checkpoint holds different copies of the shared relative-position table; "
                            "using the last one, as the original code does")
            state[f"encoder.layers.0.{SHARED_BIAS}"] = tables[-1]
        load_strict(self, state)
