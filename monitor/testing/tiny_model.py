"""Random-weight Qwen2-Audio checkpoints that load through the same code path as the real one.

No weights can be downloaded in CI, yet loading, prompt layout, batching, caching and speed
must be tested on the real architecture. So this writes a complete checkpoint folder — model,
processor (Whisper feature extractor + tokenizer + the Instruct chat template) and generation
config — built offline:

- the tokenizer is a byte-level BPE with Qwen2's pre-tokenizer rule, trained here on a small
  English corpus, so "Yes", " Yes", "yes", "No", ... are real tokens and the shipped prompts
  split into words the way they would with the real tokenizer;
- the audio encoder takes the real 30-second input (3000 mel frames, 1500 positions).

    python -m monitor.testing.tiny_model OUT_DIR --size tiny|served|small|full
    python -m monitor.testing.tiny_model OUT_DIR --arch salmonn --size tiny|small   (see tiny_salmonn)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000

# The chat template of Qwen/Qwen2-Audio-7B-Instruct: prompts formatted exactly as for the real model.
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]

# Qwen2's pre-tokenizer split rule (words with an optional leading space, digits one by one, ...).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_WORDS = """
a about above across after again against air alarm alert all almost alone along already also always am an
and angry animal another answer any anyone anything appliance are area around as ask asleep at audio away
baby back background bang bark barking bathroom be beep beeping bed bedroom been before behind being bell
below beside between bird birds blender body boiling both break breaking breath breathing bump but buzzing
by call calling calls can car carbon cat cell child children chime choking clap clapping clear clearly
close closed closing cough coughing could crash crashing crawling cry crying cup cupboard dark day dead
describe describing detector did dishes distress do does dog door doorbell down drawer drill drip dripping
drop dropped during each electric elderly emergency empty engine english enough even event ever every
everyone exactly explosion fall fallen falling faucet fear fire first floor footsteps for fridge from front
gasp gate glass going gun gunshot had hammer hard has have he hear heard hearing help her here high him his
hit house how human hurt i if in infant inside into intruder is it its just keep kettle key keys kitchen
knock knocking language laugh laughing laughter left like listen listening living loud low machine make man
many may me microwave minute minutes monoxide more most motor music my name near neighbour new next night
no noise noises none not nothing now object of off often oh on once one only open opening or other our out
outside over pain panic party person pet phone piano please pot power rain recording repeat right ring
ringing room run running said say saying scream screaming see shatter shattering shout shouting shower
silence silent siren sleeping slam slamming small smoke snore snoring so some someone something sound
sounds speak speaker speaking speech stairs start still stop street strong such summarize talk talking tap
television tell than that the their them then there these they thing this those through thud thunder time
to toilet too traffic transcribe tv two under unusual up us vacuum very voice voices vomiting wake walking
want was washing water we weather were what when where which while who whistle why will wind window with
without woman words write writing yell yelling yes you your
answer assistant cistern contain contains does filling followed groan heavy high moan only pitched repeating
shrieking spoken system user
""".split()

_SENTENCES = [
    "Is a baby or an infant crying in this recording?",
    "Is someone falling down or has a person fallen to the floor?",
    "Is glass breaking or shattering?",
    "Is a smoke alarm or a fire alarm beeping?",
    "Is a dog barking?",
    "Is someone knocking on the door or is the doorbell ringing?",
    "Is someone screaming, shouting or calling for help?",
    "Is someone coughing or choking?",
    "Is water running or dripping?",
    "Is there music playing?",
    "Is a person speaking?",
    "What is being said? Write down the words exactly.",
    "Describe the sounds in this recording.",
    "Answer with yes or no.",
    "You are a helpful assistant.",
    "Does this recording contain a dog barking? Answer yes or no.",
    "Does this recording contain the sound of a person falling down: a heavy thud or crash followed by a cry?",
    "Does this recording contain the loud, repeating, high-pitched beeping of a smoke alarm?",
    "Transcribe the speech in this recording. Write only the words that are spoken.",
]


def _corpus() -> list[str]:
    """Lines to train the BPE on: every word in every casing, with and without a leading space."""
    lines = list(_SENTENCES) * 20
    for w in _WORDS:
        lines.append(f"{w} {w.capitalize()} {w.upper()} {w}. {w.capitalize()}, {w}?")
        lines.append(f"{w.capitalize()} {w}")  # sentence-initial: no leading space
        lines.append(f" {w} {w}")
    for ans in ("Yes", "No", "yes", "no", "YES", "NO"):  # the answers the engine reads: keep them single tokens
        lines.extend([f"{ans} {ans}. {ans}, {ans}!"] * 50)
    return lines


def build_tokenizer(vocab_size: int = 4096, extra_special: tuple[str, ...] = (), **named: str) -> Any:
    """A byte-level BPE tokenizer with Qwen2's special tokens, wrapped for transformers.

    `extra_special` adds special tokens (another family's markers); `named` names tokens as the
    family's processor expects them (e.g. image_token="<|IMAGE|>"), overriding Qwen2-Audio's.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, special_tokens=SPECIAL_TOKENS + list(extra_special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    names = {"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
             **named}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        additional_special_tokens=SPECIAL_TOKENS[1:] + list(extra_special), model_max_length=32768, **names,
    )


# Sizes: `tiny` for unit tests (runs in milliseconds), `served` as tiny but with 32-dim attention
# heads (vLLM's CPU attention backend takes head sizes 32, 64, 80, ... only: a 16-dim model starts
# but dies on its first request), `small` for CPU benchmarks (Qwen2-Audio's proportions: 128-dim
# attention heads, MLP 2.69x hidden, no GQA, 30-second encoder), `full` is the published
# Qwen2-Audio-7B architecture (for a GPU; ~8.4B parameters).
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "audio": dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64),
        "text": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2),
    },
    "served": {
        "audio": dict(d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128),
        "text": dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2),
    },
    "small": {
        "audio": dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536),
        "text": dict(hidden_size=640, intermediate_size=1720, num_hidden_layers=10, num_attention_heads=5,
                     num_key_value_heads=5),
    },
    "full": {
        "audio": dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120),
        "text": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=156032, max_position_embeddings=8192, rms_norm_eps=1e-5),
    },
}


def make_config(size: str, tokenizer: Any) -> Any:
    """The Qwen2AudioConfig of a size, wired to the tokenizer's special-token ids."""
    from transformers import Qwen2AudioConfig

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    spec = SIZES[size]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(model_type="qwen2", vocab_size=len(tokenizer), max_position_embeddings=8192,
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                tie_word_embeddings=False)
    text.update(spec["text"])
    text["vocab_size"] = max(text["vocab_size"], len(tokenizer))
    audio = dict(model_type="qwen2_audio_encoder", num_mel_bins=128, max_source_positions=1500)
    audio.update(spec["audio"])
    # Wider initial weights than a trained model's 0.02 so that random answers are not all ~50/50:
    # tests compare scores that actually differ between questions and windows.
    init = 0.02 if size == "full" else 0.2
    config = Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=ids["<|AUDIO|>"])
    config.text_config.initializer_range = init
    config.audio_config.initializer_range = init
    config.architectures = ["Qwen2AudioForConditionalGeneration"]
    return config


def count_parameters(size: str) -> int:
    """Parameters of a size's model, counted without allocating its weights."""
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    config = make_config(size, build_tokenizer())
    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())


def make_processor(tokenizer: Any | None = None) -> Any:
    """A Qwen2AudioProcessor: Whisper features (128 mel bins, 30 s), the tokenizer, the Instruct chat template."""
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    features = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=SAMPLE_RATE, hop_length=160, chunk_length=30, n_fft=400,
        padding_value=0.0, return_attention_mask=True,
    )
    return Qwen2AudioProcessor(feature_extractor=features, tokenizer=tokenizer or build_tokenizer(),
                               chat_template=CHAT_TEMPLATE)


def make_model(size: str, processor: Any, seed: int = 0, dtype: str = "float32", device: str = "cpu") -> Any:
    """A random-weight Qwen2AudioForConditionalGeneration of a size, built directly on `device`."""
    import torch
    from transformers import GenerationConfig, Qwen2AudioForConditionalGeneration

    tokenizer = processor.tokenizer
    config = make_config(size, tokenizer)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # initialise in the target dtype: a 7B model never exists in fp32
    try:
        with torch.device(device):
            model = Qwen2AudioForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id, do_sample=False,
    )
    return model


def build(out_dir: str | Path, size: str = "tiny", seed: int = 0, dtype: str = "float32") -> Path:
    """Write a random-weight Qwen2-Audio checkpoint (model, processor, tokenizer) to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = make_processor()
    model = make_model(size, processor, seed=seed, dtype=dtype)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    log.info("wrote a %s random-weight Qwen2-Audio (%.1fM parameters) to %s",
             size, sum(p.numel() for p in model.parameters()) / 1e6, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitor.testing.tiny_model", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the checkpoint to (created)")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--arch", default="qwen2_audio",
                        help="qwen2_audio; salmonn (the released SALMONN layout: checkpoint.pth, beats.pt, whisper/, "
                        "llm/; see tiny_salmonn); or another family (monitor.testing.tiny_families: qwen2_5_omni, "
                        "qwen3_omni, af3, voxtral, gemma3n; sizes tiny and small)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.arch == "salmonn":
        from monitor.testing import tiny_salmonn

        if args.size not in tiny_salmonn.SIZES or args.dtype != "float32":
            parser.error(f"--arch salmonn takes --size {' or '.join(tiny_salmonn.SIZES)} and float32")
        tiny_salmonn.build(args.out_dir, args.size, seed=args.seed)
        return 0
    if args.arch != "qwen2_audio":
        from monitor.testing.tiny_families import build_arch

        build_arch(args.out_dir, args.arch, size=args.size, seed=args.seed)
        return 0
    build(args.out_dir, args.size, seed=args.seed, dtype=args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
