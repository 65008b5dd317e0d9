"""SALMONN's glue from the two audio encoders to the LLM: 88 speech embeddings per clip.

Whisper hears speech, BEATs hears sound events; SALMONN normalises each (`ln_speech`,
`ln_audio`), pairs BEATs token i with Whisper frame i by index (BEATs zero-padded to Whisper's
1500 frames; the pairing is approximate by design and must be kept, the model was trained on
it), and concatenates them on channels. A window-level Q-Former then reads each 17-frame
window (0.34 s) with one learnt query: 88 windows for any clip up to 30 s, the last 4 frames
dropped. `speech_llama_proj` maps each window's query output to the LLM's width.

The Q-Former is transformers' `Blip2QFormerModel` (query path only: 2 post-LN BERT layers with
cross-attention in each, exact GELU, LayerNorm eps 1e-12); the checkpoint's BERT-style names are
mapped onto it here. Matched against the original code's outputs in
tests/fixtures/salmonn/salmonn_frontend_tiny.pt.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from monitor.engine.salmonn.strict import load_strict

log = logging.getLogger(__name__)

WHISPER_FRAMES = 1500  # Whisper's encoder output for its 30-second input
SECONDS_PER_WINDOW = 0.333333  # SALMONN's configs: window = stride = round(1500 * 0.333333 / 30) = 17 frames
WINDOW = round(WHISPER_FRAMES * SECONDS_PER_WINDOW / 30.0)
SPEECH_TOKENS = (WHISPER_FRAMES - WINDOW) // WINDOW + 1  # 88
BERT_HEAD_DIM = 64  # bert-base: 768 wide, 12 heads; the checkpoint does not store the head count
PREFIX = "speech_Qformer.bert."
# Persistent buffers that survive SALMONN's save filter: accepted, never used.
IGNORED = ("speech_Qformer.bert.embeddings.position_ids",)


def qformer_key(name: str) -> str | None:
    """The `Blip2QFormerModel` parameter name of a checkpoint key under speech_Qformer.bert., or None."""
    if not name.startswith(PREFIX):
        return None
    rest = name[len(PREFIX):]
    if rest.startswith("embeddings.LayerNorm."):
        return "layernorm." + rest[len("embeddings.LayerNorm."):]
    if rest.startswith("encoder.layer."):
        return re.sub(r"\.(attention|crossattention)\.self\.", r".\1.attention.", rest)
    return None


def module_key(name: str) -> str | None:
    """Where a checkpoint key goes in `SpeechFrontEnd`, or None if it is not a front-end weight."""
    if name in ("speech_query_tokens",) or name.startswith(("ln_speech.", "ln_audio.", "speech_llama_proj.")):
        return name
    mapped = qformer_key(name)
    return None if mapped is None else "qformer." + mapped


def released_key(name: str) -> str:
    """The checkpoint's name of a `SpeechFrontEnd` parameter (the inverse of `module_key`)."""
    if not name.startswith("qformer."):
        return name
    rest = name[len("qformer."):]
    if rest.startswith("layernorm."):
        return PREFIX + "embeddings.LayerNorm." + rest[len("layernorm."):]
    return PREFIX + re.sub(r"\.(attention|crossattention)\.attention\.", r".\1.self.", rest)


def is_frontend_key(name: str) -> bool:
    return name in IGNORED or module_key(name) is not None


class SpeechFrontEnd(nn.Module):
    """ln_speech, ln_audio, the window Q-Former and the projection, under SALMONN's parameter names."""

    def __init__(self, whisper_width: int, beats_width: int, hidden: int, heads: int, intermediate: int,
                 layers: int, llm_width: int):
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        self.ln_speech = nn.LayerNorm(whisper_width, eps=1e-5)
        self.ln_audio = nn.LayerNorm(beats_width, eps=1e-5)
        self.speech_query_tokens = nn.Parameter(torch.zeros(1, 1, hidden))
        config = Blip2QFormerConfig(
            hidden_size=hidden, num_attention_heads=heads, intermediate_size=intermediate, num_hidden_layers=layers,
            cross_attention_frequency=1, encoder_hidden_size=whisper_width + beats_width, layer_norm_eps=1e-12,
            hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            use_qformer_text_input=False)
        config._attn_implementation = "sdpa"
        self.qformer = Blip2QFormerModel(config)
        self.speech_llama_proj = nn.Linear(hidden, llm_width)

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor], heads: int | None = None) -> SpeechFrontEnd:
        """Sizes read from the checkpoint's shapes, then every weight loaded strictly (ValueError otherwise).

        `heads` defaults to BERT's 64-wide heads (12 for the released 768-wide Q-Former).
        """
        try:
            hidden = state["speech_query_tokens"].shape[-1]
            layers = 1 + max(int(k.split(".")[4]) for k in state if k.startswith(PREFIX + "encoder.layer."))
            sizes = dict(
                whisper_width=state["ln_speech.weight"].shape[0], beats_width=state["ln_audio.weight"].shape[0],
                hidden=hidden, heads=heads or max(1, hidden // BERT_HEAD_DIM),
                intermediate=state[PREFIX + "encoder.layer.0.intermediate_query.dense.weight"].shape[0],
                layers=layers, llm_width=state["speech_llama_proj.weight"].shape[0])
        except (KeyError, ValueError) as exc:
            raise ValueError(f"no SALMONN speech front end in it (missing {exc})") from None
        with torch.device("meta"):
            model = cls(**sizes)
        model.load_strict(state)
        return model.eval()

    def load_strict(self, state: Mapping[str, torch.Tensor]) -> None:
        mapped: dict[str, torch.Tensor] = {}
        unexpected = []
        for name, tensor in state.items():
            if name in IGNORED:
                continue
            target = module_key(name)
            if target is None:
                unexpected.append(name)
            else:
                mapped[target] = tensor
        load_strict(self, mapped, "front-end weight", unexpected)

    # ------------------------------------------------------------------ forward

    def fuse(self, whisper: torch.Tensor, beats: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, T, Cw) and B clips' BEATs tokens (T_i, Cb) -> (B, T, Cw + Cb).

        Each part is normalised first, then BEATs is zero-padded (or cut) to Whisper's frames, clip
        by clip: the padding is exactly zero, not the LayerNorm's bias, as in the original.
        """
        dtype = self.ln_speech.weight.dtype
        speech = self.ln_speech(whisper.to(dtype))
        length = max([speech.shape[1]] + [b.shape[0] for b in beats])
        speech = nn.functional.pad(speech, (0, 0, 0, length - speech.shape[1]))
        audio = torch.stack([nn.functional.pad(self.ln_audio(b.to(dtype)), (0, 0, 0, length - b.shape[0]))
                             for b in beats])
        return torch.cat([speech, audio], dim=-1)

    def qformer_states(self, fused: torch.Tensor) -> torch.Tensor:
        """The Q-Former's output for every 17-frame window, (B * windows, 1, hidden), batch-major."""
        batch, frames, channels = fused.shape
        count = (frames - WINDOW) // WINDOW + 1
        windows = fused[:, :count * WINDOW].reshape(batch * count, WINDOW, channels)
        query = self.speech_query_tokens.expand(windows.shape[0], -1, -1)
        return self.qformer(query_embeds=query, encoder_hidden_states=windows).last_hidden_state

    def forward(self, whisper: torch.Tensor, beats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Encoder outputs -> speech embeddings (B, 88, llm width), ready to sit between the prompt's halves."""
        batch = whisper.shape[0]
        states = self.qformer_states(self.fuse(whisper, beats))
        return self.speech_llama_proj(states).view(batch, -1, self.speech_llama_proj.out_features)
