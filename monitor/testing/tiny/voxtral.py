"""A random-weight Voxtral (mistralai/Voxtral-Mini-3B-2507's architecture) that loads like the real one.

Voxtral's tokenizer is not a transformers tokenizer with a chat template: it is a mistral_common
"tekken" file (tekken.json) — a byte-level BPE vocabulary behind 1000 special tokens, and the
audio settings the instruct format counts audio tokens with. So this writes a tekken.json built
here: a BPE trained on the same small English corpus as the other tiny tokenizers (so "Yes",
"yes", "No", "no" are single tokens), the real file's special tokens at their real ranks
([INST]=3, [/INST]=4, [AUDIO]=24, [BEGIN_AUDIO]=25, [TRANSCRIBE]=34, ...), its pre-tokenizer
pattern and its audio section (16 kHz, 12.5 audio tokens per second, audio padded to 30 s
chunks). `AutoProcessor.from_pretrained(DIR)` then gives a `VoxtralProcessor` whose tokenizer
lays out `[BOS][INST][BEGIN_AUDIO][AUDIO]xN question[/INST]` exactly as the real one does.

The model is the real one scaled down: a Whisper-style encoder over 30 s (3000 mel frames,
1500 positions) whose outputs are stacked four at a time into the projector (so the encoder's
intermediate size is four times its width, as in the real 1280/5120), and a Llama text model.

    python -m monitor.testing.tiny_model OUT_DIR --arch voxtral [--size small]   (needs mistral_common)
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from monitor.testing.tiny.common import INIT, SAMPLE_RATE, corpus, whisper_features, write

# The pre-tokenizer pattern of Mistral's tekken files.
PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
           r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|"
           r"\s+(?!\S)|\s+")
NUM_SPECIAL = 1000  # the real file reserves 1000 ids for special tokens; text tokens start after them
# The special tokens Voxtral's instruct and transcription formats use, at their ranks in the real file;
# the file lists every rank (tekken indexes special tokens by position), the others as <SPECIAL_n>.
SPECIAL = {0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 5: "[AVAILABLE_TOOLS]",
           6: "[/AVAILABLE_TOOLS]", 7: "[TOOL_RESULTS]", 8: "[/TOOL_RESULTS]", 9: "[TOOL_CALLS]", 10: "[IMG]",
           11: "<pad>", 12: "[IMG_BREAK]", 13: "[IMG_END]", 14: "[PREFIX]", 15: "[MIDDLE]", 16: "[SUFFIX]",
           17: "[SYSTEM_PROMPT]", 18: "[/SYSTEM_PROMPT]", 19: "[TOOL_CONTENT]", 24: "[AUDIO]", 25: "[BEGIN_AUDIO]",
           32: "[ARGS]", 33: "[CALL_ID]", 34: "[TRANSCRIBE]"}
AUDIO_TOKEN_ID = 24
AUDIO_SECTION = {"sampling_rate": SAMPLE_RATE, "frame_rate": 12.5,
                 "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
                 "chunk_length_s": 30.0}

SIZES = TEXT = {
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16),
    # Voxtral-Mini's proportions scaled down: 128-dim heads, grouped-query attention, MLP 2.67x hidden.
    "small": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=6,
                  num_key_value_heads=2, head_dim=128),
}
AUDIO = {  # intermediate_size = 4 x hidden_size: the projector reads four encoder frames at a time
    "tiny": dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
    "small": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=6),
}


def _byte_decoder() -> dict[str, int]:
    """The byte-level BPE alphabet (one printable character per byte) back to bytes."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


def tekken(vocab_size: int = 1500) -> dict[str, Any]:
    """The content of a tiny tekken.json: a byte-level BPE trained here, the real special tokens and audio section.

    Tekken ranks the 256 single bytes first, then each merged token in the order its merge was
    learned — the order BPE applies merges in.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer=trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    to_byte = _byte_decoder()
    pieces = [bytes([b]) for b in range(256)]
    seen = set(pieces)
    for left, right in merges:
        piece = bytes(to_byte[c] for c in left + right)
        if piece not in seen:
            seen.add(piece)
            pieces.append(piece)
    vocab = []
    for rank, piece in enumerate(pieces):
        try:
            text = piece.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        vocab.append({"rank": rank, "token_bytes": base64.b64encode(piece).decode("ascii"), "token_str": text})
    return {
        "config": {"pattern": PATTERN, "num_vocab_tokens": len(vocab), "default_vocab_size": NUM_SPECIAL + len(vocab),
                   "default_num_special_tokens": NUM_SPECIAL, "version": "v11"},
        "vocab": vocab,
        "special_tokens": [{"rank": r, "token_str": SPECIAL.get(r, f"<SPECIAL_{r}>"), "is_control": True}
                           for r in range(NUM_SPECIAL)],
        "audio": AUDIO_SECTION,
    }


def make(size: str, out: Path) -> tuple[Any, Any]:
    """(model, processor) of a random-weight Voxtral; the tokenizer file is written to `out` (it is read from disk).

    The Whisper feature extractor is set as Voxtral's preprocessor config sets it: 128 bins, 30 s,
    no attention mask."""
    from transformers import GenerationConfig, MistralCommonBackend, VoxtralConfig, VoxtralForConditionalGeneration, \
        VoxtralProcessor

    data = tekken()
    path = out / "tekken.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    tokenizer = MistralCommonBackend(tokenizer_path=str(path))
    processor = VoxtralProcessor(feature_extractor=whisper_features(attention_mask=False), tokenizer=tokenizer)
    vocab = data["config"]["default_vocab_size"]
    config = VoxtralConfig(
        audio_config=dict(model_type="voxtral_encoder", **AUDIO[size], num_mel_bins=128, max_source_positions=1500,
                          initializer_range=INIT),
        text_config=dict(model_type="llama", **TEXT[size], vocab_size=vocab, max_position_embeddings=131072,
                         rms_norm_eps=1e-5, rope_theta=100_000_000.0, initializer_range=INIT,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=11),
        audio_token_id=AUDIO_TOKEN_ID, projector_hidden_act="gelu",
    )
    config.architectures = ["VoxtralForConditionalGeneration"]
    model = VoxtralForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=11, do_sample=False)
    return model, processor


def build(out_dir: str | Path, size: str = "tiny", seed: int = 0, dtype: str = "float32") -> Path:
    """Write a random-weight Voxtral (its tekken.json and its own generation config) to `out_dir`."""
    return write(out_dir, "voxtral", size, seed, make, eos=None)
