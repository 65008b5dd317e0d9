"""A random-weight Gemma 3n (google/gemma-3n-E4B-it's architecture) with a tokenizer trained here.

What makes it a Gemma 3n and not a renamed Qwen, and what the engine must get right on it:

- the tokenizer is Gemma's kind (a BPE on "▁"-spaced text with byte fallback, `GemmaTokenizer`),
  trained on the same small corpus as Qwen2-Audio's, with Gemma's turn and media tokens. Like
  the real vocabulary, the text tokens come first, then the vision tokens (from <end_of_image>),
  then the audio tokens (from <end_of_audio>): the model embeds ids past the text vocabulary with
  its vision or audio embedder, so the token ids must fall in those ranges;
- the chat template is shaped like the real one (<bos>, <start_of_turn>user / model, the audio
  item written as <audio_soft_token> where it stands, the text trimmed), and the processor
  expands that token into 188 audio soft tokens whatever the clip's length;
- the language model has sliding-window layers with a window much shorter than a prompt (the
  real one's is 512 tokens; here 32), layers that reuse an earlier layer's keys and values,
  AltUp, per-layer inputs, sparse activations in its first layer and a final logit soft-cap
  (the real 30 would barely touch this small model's logits; here 3, so it changes answers);
- it is built without the vision tower (a timm network), as its family loads it
  (`monitor.engine.families.gemma3n`).

    python -m monitor.testing.tiny_model OUT_DIR --arch gemma3n [--size small]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from monitor.engine.families.gemma3n import FAMILY
from monitor.testing.tiny.common import INIT, SAMPLE_RATE, corpus, write

# Shaped like the chat template of google/gemma-3n-E4B-it: a system turn is folded into the first
# user turn, the assistant is "model", media items are written where they stand, text is trimmed.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'audio' -%}{{ '<audio_soft_token>' }}"
    "{%- elif item['type'] == 'image' -%}{{ '<image_soft_token>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}{{ raise_exception('Invalid content type') }}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
           "<start_of_audio>"]
MEDIA_VOCAB = 8  # ids per media range (the real model has 128 vision and 128 audio ids)
NAMED = dict(image_token="<image_soft_token>", boi_token="<start_of_image>", eoi_token="<end_of_image>",
             audio_token="<audio_soft_token>", boa_token="<start_of_audio>", eoa_token="<end_of_audio>")

SIZES: dict[str, dict[str, Any]] = {
    # 4 layers: sliding, full, then two that reuse the keys and values of the last of each kind.
    "tiny": dict(text=dict(hidden_size=64, intermediate_size=172, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, hidden_size_per_layer_input=16, laurel_rank=8,
                           layer_types=["sliding_attention", "full_attention"] * 2,
                           num_kv_shared_layers=2, sliding_window=32, final_logit_softcapping=3.0),
                 audio=dict(hidden_size=32, conf_num_attention_heads=2, conf_num_hidden_layers=2,
                            sscp_conv_channel_size=[16, 8])),
    # The real model's proportions at a CPU size: 128-dim heads, 4 sliding layers to each full one, the
    # last third reusing keys and values, the real 512-token window and soft-cap.
    "small": dict(text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=10, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=128, hidden_size_per_layer_input=64, laurel_rank=32,
                            layer_types=(["sliding_attention"] * 4 + ["full_attention"]) * 2,
                            num_kv_shared_layers=5, sliding_window=512, final_logit_softcapping=30.0),
                  audio=dict(hidden_size=384, conf_num_attention_heads=6, conf_num_hidden_layers=4,
                             sscp_conv_channel_size=[64, 32])),
}


def build_tokenizer(vocab_size: int = 4096) -> Any:
    """A GemmaTokenizer trained here: text ids, then the vision range, then the audio range."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    # For training only: merges stay inside a "▁word" and inside a run of newlines, as SentencePiece's do.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\n+"), "isolated"),
                                                 pre_tokenizers.Split("▁", "merged_with_next")])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]  # byte fallback: any character can be written
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=SPECIAL + byte_tokens,
                                  show_progress=False)
    tok.train_from_iterator(corpus() + ["\n\n", "\n"], trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    text = len(vocab)
    media = {"<end_of_image>": text, "<image_soft_token>": text + 1}
    media.update({f"<image_unused_{i}>": text + i for i in range(2, MEDIA_VOCAB)})
    media.update({"<end_of_audio>": text + MEDIA_VOCAB, "<audio_soft_token>": text + MEDIA_VOCAB + 1})
    media.update({f"<audio_unused_{i}>": text + MEDIA_VOCAB + i for i in range(2, MEDIA_VOCAB)})
    vocab.update(media)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, extra_special_tokens=dict(NAMED), model_max_length=32768)
    tokenizer.add_special_tokens({"additional_special_tokens": [
        AddedToken(t, special=True, normalized=False) for t in ["<start_of_turn>", "<end_of_turn>", *media]]})
    return tokenizer


def build_processor(tokenizer: Any) -> Any:
    """Gemma3nProcessor: its audio feature extractor, a PIL image processor (no torchvision), the template."""
    from transformers import Gemma3nAudioFeatureExtractor, Gemma3nProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    return Gemma3nProcessor(feature_extractor=Gemma3nAudioFeatureExtractor(sampling_rate=SAMPLE_RATE),
                            image_processor=SiglipImageProcessorPil(), tokenizer=tokenizer,
                            chat_template=CHAT_TEMPLATE, audio_seq_length=188)


def make(size: str, init: float = INIT) -> tuple[Any, Any]:
    """(model, processor) of a random-weight Gemma 3n of a size, built without its vision tower."""
    import torch
    from transformers import Gemma3nConfig, Gemma3nForConditionalGeneration, Gemma3nVisionConfig

    from monitor.engine.local.audio_only import audio_only_class

    tokenizer = build_tokenizer()
    ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in NAMED.items()}
    text_vocab = ids["eoi_token"]  # the first vision id
    spec = SIZES[size]
    layers = spec["text"]["num_hidden_layers"]
    text = dict(**spec["text"], vocab_size=text_vocab + 2 * MEDIA_VOCAB, vocab_size_per_layer_input=text_vocab,
                activation_sparsity_pattern=[0.95] + [0.0] * (layers - 1), initializer_range=init,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.convert_tokens_to_ids("<end_of_turn>"))
    audio = dict(**spec["audio"], vocab_size=MEDIA_VOCAB, vocab_offset=text_vocab + MEDIA_VOCAB, input_feat_size=128,
                 initializer_range=init)
    vision = Gemma3nVisionConfig(hidden_size=32, vocab_size=MEDIA_VOCAB, vocab_offset=text_vocab, initializer_range=init)
    config = Gemma3nConfig(text_config=text, audio_config=audio, vision_config=vision, audio_soft_tokens_per_image=188,
                           boi_token_id=ids["boi_token"], eoi_token_id=ids["eoi_token"],
                           image_token_id=ids["image_token"], boa_token_id=ids["boa_token"],
                           eoa_token_id=ids["eoa_token"], audio_token_id=ids["audio_token"], initializer_range=init)
    config.architectures = ["Gemma3nForConditionalGeneration"]
    model = audio_only_class(Gemma3nForConditionalGeneration, FAMILY.without_vision)(config)
    with torch.no_grad():  # AltUp's output scale starts at zero, which would switch the per-layer inputs off
        for layer in model.model.language_model.layers:
            layer.altup.correct_output_scale.normal_(1.0, init)
    return model, build_processor(tokenizer)


def build(out_dir: str | Path, size: str = "tiny", seed: int = 0, dtype: str = "float32") -> Path:
    """Write a random-weight Gemma 3n (without its vision tower's weights) to `out_dir`."""
    return write(out_dir, "gemma3n", size, seed, lambda size, out: make(size), eos=("<end_of_turn>", "<eos>"))
