"""The random-weight Qwen2-Audio builder: loads like the real checkpoint and is shaped like it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

from monitor.engine import families
from monitor.testing import tiny
from monitor.testing.tiny.common import build_tokenizer
from monitor.testing.tiny.qwen2_audio import FULL_LAYERS, SIZES, SLICE_LAYERS, count_parameters, make_config

QUESTION = "Is a baby or an infant crying in this recording?"


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    return processor, model


def test_checkpoint_loads_with_auto_processor_and_the_model_class(loaded):
    processor, model = loaded
    assert type(processor).__name__ == "Qwen2AudioProcessor"
    fe = processor.feature_extractor
    assert (fe.feature_size, fe.sampling_rate, fe.nb_max_frames) == (128, 16000, 3000)
    assert fe.nb_max_frames == 2 * model.config.audio_config.max_source_positions  # the 30-second encoder
    assert model.config.audio_token_index == processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")


def test_chat_template_formats_prompts_like_qwen2_audio_instruct(loaded):
    processor, _ = loaded
    messages = [{"role": "user", "content": [{"type": "audio", "audio_url": "a.wav"}, {"type": "text", "text": QUESTION}]}]
    assert processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")


def test_tokenizer_has_single_token_answers_and_whole_word_prompts(loaded):
    tok = loaded[0].tokenizer
    for answer in ("Yes", " Yes", "yes", " yes", "YES", "No", " No", "no", " no", "NO"):
        ids = tok(answer, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.decode(ids) == answer
    ids = tok(QUESTION, add_special_tokens=False)["input_ids"]
    assert len(ids) == 11  # one token per word, plus the question mark
    assert tok.decode(ids) == QUESTION
    for special in ("<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|endoftext|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1


def test_processor_expands_audio_and_the_model_runs_on_it(loaded):
    processor, model = loaded
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "audio", "audio": "x"}, {"type": "text", "text": QUESTION}]}],
        tokenize=False, add_generation_prompt=True)
    audio = np.random.default_rng(0).standard_normal(16000 * 8).astype(np.float32) * 0.1
    inputs = processor(text=text, audio=audio, sampling_rate=16000, return_tensors="pt")
    frames = int(inputs["feature_attention_mask"].sum())
    assert frames == 800
    audio_tokens = int((inputs["input_ids"] == model.config.audio_token_index).sum())
    assert audio_tokens == (((frames - 1) // 2 + 1) - 2) // 2 + 1 == 200  # 25 per second
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


def test_small_is_a_50m_model_with_qwen2_audio_proportions():
    tok = build_tokenizer()
    config = make_config("small", tok)
    text, audio = config.text_config, config.audio_config
    assert audio.max_source_positions == 1500 and audio.num_mel_bins == 128
    assert text.hidden_size // text.num_attention_heads == 128  # Qwen2-7B's head size
    assert text.num_key_value_heads == text.num_attention_heads  # no GQA, like Qwen2-Audio-7B
    assert 2.6 < text.intermediate_size / text.hidden_size < 2.8  # 11008 / 4096
    assert count_parameters("small") >= 50e6


def test_full_is_the_published_qwen2_audio_7b_architecture():
    assert SIZES["full"]["text"]["hidden_size"] == 4096
    assert 8.2e9 < count_parameters("full") < 8.6e9


def test_slice_is_the_7b_at_every_width_with_fewer_layers():
    """The CPU bench's real-width slice: the 7B's widths, heads, FFN and vocabulary, only its depth cut;
    built 32 deep it is the full model, and each layer adds the same parameters (what the projection assumes)."""
    tok = build_tokenizer()
    sliced, full = make_config("slice", tok), make_config("full", tok)
    for part in ("text_config", "audio_config"):
        a, b = getattr(sliced, part).to_dict(), getattr(full, part).to_dict()
        differ = {key for key in a.keys() | b.keys() if a.get(key) != b.get(key)}
        depth = {"num_hidden_layers", "layer_types"} if part == "text_config" else {"encoder_layers"}
        assert differ <= depth and differ & {"num_hidden_layers", "encoder_layers"}, (part, differ)
        assert set(a.get("layer_types") or ()) == set(b.get("layer_types") or ())  # the same kind of layer, fewer
    assert sliced.text_config.num_hidden_layers == sliced.audio_config.encoder_layers == SLICE_LAYERS < FULL_LAYERS
    assert make_config("slice", tok, layers=5).audio_config.encoder_layers == 5
    one, two = count_parameters("slice", layers=1), count_parameters("slice", layers=2)
    assert count_parameters("slice", layers=FULL_LAYERS) == count_parameters("full")
    assert count_parameters("slice", layers=4) - two == 2 * (two - one)
    with pytest.raises(ValueError, match="layers"):
        make_config("slice", tok, layers=0)


def test_command_line_builds_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "tiny"
    proc = subprocess.run([sys.executable, "-m", "monitor.testing.tiny_model", str(out), "--size", "tiny"],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "chat_template.jinja"):
        assert (out / name).is_file(), name
    from transformers import AutoProcessor

    assert AutoProcessor.from_pretrained(out).chat_template


@pytest.mark.parametrize("arch", list(tiny.builders()))
def test_every_family_names_a_tiny_builder_that_the_command_line_offers(arch, capsys):
    from monitor.testing.tiny_model import main

    builder = tiny.builders()[arch]
    assert builder.__name__ == f"monitor.testing.tiny.{families.named(arch).tiny}"
    assert "tiny" in builder.SIZES and callable(builder.build)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert arch in capsys.readouterr().out
