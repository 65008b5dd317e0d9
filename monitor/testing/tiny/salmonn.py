"""A random-weight SALMONN in the released layout, loaded by the backend exactly as the real files are.

    OUT/checkpoint.pth   {"model": the released key names (tests/fixtures/salmonn/released_keys.txt), "optimizer", ...}
    OUT/beats.pt         {"cfg", "model"}, Microsoft's BEATs layout
    OUT/whisper/         a WhisperModel and its feature extractor (80 mel, 30 s)
    OUT/llm/             a LlamaForCausalLM (without LoRA: the checkpoint holds it) and a Llama-style tokenizer

Sizes: `tiny` for tests; `small` keeps the 7B's proportions at reduced width (128-wide LLM
heads, FFN 2.69x, 88 speech tokens, Whisper's 1500 frames) for CPU benchmarks.

    python -m monitor.testing.tiny_model OUT_DIR --arch salmonn [--size small]
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from monitor.testing.tiny.common import corpus

log = logging.getLogger(__name__)

SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "whisper": dict(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64),
        "beats": dict(embed_dim=96, encoder_embed_dim=64, encoder_layers=2, encoder_attention_heads=4,
                      encoder_ffn_embed_dim=128, conv_pos=16, conv_pos_groups=4),
        "qformer": dict(hidden=64, intermediate=128),
        "llm": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4),
    },
    "small": {
        "whisper": dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536),
        "beats": dict(embed_dim=512, encoder_embed_dim=384, encoder_layers=4, encoder_attention_heads=6,
                      encoder_ffn_embed_dim=1536, conv_pos=128, conv_pos_groups=16),
        "qformer": dict(hidden=256, intermediate=1024),
        "llm": dict(hidden_size=640, intermediate_size=1720, num_hidden_layers=10, num_attention_heads=5),
    },
}

BEATS_CFG = dict(  # every BEATsConfig field of the original, as its checkpoints carry them
    input_patch_size=16, embed_dim=512, conv_bias=False, encoder_layers=12, encoder_embed_dim=768,
    encoder_ffn_embed_dim=3072, encoder_attention_heads=12, activation_fn="gelu", layer_wise_gradient_decay_ratio=1.0,
    layer_norm_first=False, deep_norm=True, dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
    encoder_layerdrop=0.0, dropout_input=0.0, conv_pos=128, conv_pos_groups=16, relative_position_embedding=True,
    num_buckets=320, max_distance=800, gru_rel_pos=True, finetuned_model=False, predictor_dropout=0.1,
    predictor_class=527)
LORA_RANK = 8
EXTRA_WORDS = ["USER:", "ASSISTANT:", "<Speech>", "</Speech>", "USER: <Speech>", "</Speech> Is\nASSISTANT:"]


def _redraw(module: Any, generator: Any) -> None:
    """Every parameter random (no constant biases or unit norms), so a wrong mapping cannot pass by accident."""
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "weight_g" or (p.dim() == 1 and ("norm" in name.lower() and leaf == "weight")) or leaf == "grep_a":
                p.copy_(torch.rand(p.shape, generator=generator) + 0.5)
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p[0].numel()))
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)


def build_tokenizer(vocab_size: int = 4096) -> Any:
    """A Llama-style tokenizer (BPE, "▁" word marks, BOS added) trained here on the tiny model's corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False)
    tok.train_from_iterator(corpus() + EXTRA_WORDS * 20, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=4096)


def build(out_dir: str | Path, size: str = "tiny", seed: int = 0, dtype: str = "float32") -> Path:
    """Write checkpoint.pth, beats.pt, whisper/ and llm/ of a random SALMONN to `out_dir`."""
    import torch
    from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM, WhisperConfig,
                              WhisperFeatureExtractor, WhisperModel)

    from monitor.engine.salmonn.beats import BEATs, BEATsConfig
    from monitor.engine.salmonn.frontend import PREFIX, SpeechFrontEnd, released_key

    if size not in SIZES:
        raise ValueError(f"unknown SALMONN size {size!r}; choose one of {', '.join(SIZES)}")
    spec = SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    tokenizer = build_tokenizer()
    llm_config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=None, tie_word_embeddings=False,
                             initializer_range=0.2, **spec["llm"])
    llm = LlamaForCausalLM(llm_config).eval()
    llm.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                             do_sample=False)
    llm.save_pretrained(out / "llm")
    tokenizer.save_pretrained(out / "llm")

    heads = spec["whisper"]["encoder_attention_heads"]
    whisper_config = WhisperConfig(num_mel_bins=80, max_source_positions=1500, decoder_layers=1,
                                   decoder_attention_heads=heads, decoder_ffn_dim=spec["whisper"]["encoder_ffn_dim"],
                                   vocab_size=128, max_target_positions=32, pad_token_id=0, bos_token_id=1,
                                   eos_token_id=2, decoder_start_token_id=1, **spec["whisper"])
    WhisperModel(whisper_config).save_pretrained(out / "whisper")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out / "whisper")

    cfg = {**BEATS_CFG, **spec["beats"]}
    beats = BEATs(BEATsConfig.from_dict(cfg))
    _redraw(beats, generator)
    beats_state = beats.state_dict()
    table_key = "self_attn.relative_attention_bias.weight"
    table = beats_state[f"encoder.layers.0.{table_key}"]
    for i in range(1, cfg["encoder_layers"]):  # the original's state dict lists the shared table under every layer
        beats_state[f"encoder.layers.{i}.{table_key}"] = table
    torch.save({"cfg": cfg, "model": beats_state}, out / "beats.pt")

    q = spec["qformer"]
    frontend = SpeechFrontEnd(whisper_width=spec["whisper"]["d_model"], beats_width=cfg["encoder_embed_dim"],
                              hidden=q["hidden"], heads=max(1, q["hidden"] // 64), intermediate=q["intermediate"],
                              layers=2, llm_width=llm_config.hidden_size)
    _redraw(frontend, generator)
    with torch.no_grad():
        frontend.speech_query_tokens.normal_(0.0, 0.02, generator=generator)
    front = {released_key(k): v for k, v in frontend.state_dict().items()}

    model: dict[str, torch.Tensor] = {"speech_query_tokens": front.pop("speech_query_tokens")}
    head_dim = llm_config.hidden_size // llm_config.num_attention_heads
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    width = llm_config.hidden_size
    lora = "llama_model.base_model.model.model.layers.{i}.self_attn.{p}_proj.lora_{ab}.default.weight"
    for i in range(llm_config.num_hidden_layers):
        for p in ("q", "v"):
            model[lora.format(i=i, p=p, ab="A")] = torch.randn(LORA_RANK, width, generator=generator) / math.sqrt(width)
            model[lora.format(i=i, p=p, ab="B")] = torch.randn(width, LORA_RANK, generator=generator) * 0.1
        model[f"llama_model.base_model.model.model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    for k in ("ln_speech.weight", "ln_speech.bias"):
        model[k] = front.pop(k)
    for i in range(1, cfg["encoder_layers"]):  # the save filter's artefact: BEATs' frozen table, layers 1..N-1
        model[f"beats.encoder.layers.{i}.{table_key}"] = table.clone()
    for k in ("ln_audio.weight", "ln_audio.bias"):
        model[k] = front.pop(k)
    model[PREFIX + "embeddings.position_ids"] = torch.arange(512)[None]
    model.update(front)  # the Q-Former, then speech_llama_proj
    optimizer = {"state": {n: {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(t), "exp_avg_sq": torch.zeros_like(t)}
                           for n, t in enumerate(v for k, v in model.items() if v.is_floating_point())},
                 "param_groups": [{"lr": 3e-5, "weight_decay": 0.05, "params": list(range(len(model)))}]}
    torch.save({"model": model, "optimizer": optimizer, "config": {"model": {"lora_alpha": 32}}, "scaler": None,
                "epoch": 0}, out / "checkpoint.pth")
    log.info("wrote a %s random-weight SALMONN (LLM %.1fM parameters) to %s", size,
             sum(p.numel() for p in llm.parameters()) / 1e6, out)
    return out
