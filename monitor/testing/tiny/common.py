"""What the tiny builders share: a tokenizer trained here, a chat template maker, sizes, and the writing.

The tokenizer is a byte-level BPE with Qwen2's pre-tokenizer rule, trained here on a small
English corpus (`corpus`), so "Yes", " Yes", "yes", "No", ... are real tokens and the shipped
prompts split into words the way they would with the real tokenizer. Each family's builder
(a module of this package) adds its own special tokens and a chat template shaped like the real
one, in particular where it puts the audio; `write` saves what it made as the checkpoint folder
the engine loads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000

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


def corpus() -> list[str]:
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
    tok.train_from_iterator(corpus(), trainer=trainer)
    names = {"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
             **named}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        additional_special_tokens=SPECIAL_TOKENS[1:] + list(extra_special), model_max_length=32768, **names,
    )


def chat_template(default_system: str | None, media: dict[str, str]) -> str:
    """A ChatML template (Qwen's turns) that writes each media item as `media[type]`, where it stands.

    The user's content is written in order, so the audio stands before the question text as the
    engine asks it; `default_system` is the system turn the template adds when none is given.
    """
    system = ("{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + default_system
              + "<|im_end|>\n{% endif %}") if default_system else ""
    branches = "".join(f"{{% {'if' if i == 0 else 'elif'} content['type'] == '{kind}' or '{kind}' in content %}}{marker}"
                       for i, (kind, marker) in enumerate(media.items()))
    return ("{% for message in messages %}" + system + "<|im_start|>{{ message['role'] }}\n"
            "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
            "{% for content in message['content'] %}" + branches
            + "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}"
            "{% endif %}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# Text-model proportions per size: `tiny` for tests, `small` for CPU benchmarks (128-dim heads).
TEXT = {
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "small": dict(hidden_size=640, intermediate_size=1720, num_hidden_layers=10, num_attention_heads=5,
                  num_key_value_heads=5),
}
AUDIO = {
    "tiny": dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64),
    "small": dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536),
}
VISION = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2)  # present in the class, never used here
INIT = 0.2  # wider than a trained model's 0.02, so that random answers differ between questions


def head_dim(size: str) -> int:
    return TEXT[size]["hidden_size"] // TEXT[size]["num_attention_heads"]


def mrope(size: str) -> dict[str, Any]:
    """Rotary parameters with the 3-D (temporal, height, width) sections scaled to the head size."""
    half = head_dim(size) // 2
    t = half // 4
    h = (half - t) // 2
    return {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [t, h, half - t - h]}


def whisper_features(attention_mask: bool = True) -> Any:
    """128-bin Whisper features over 30 s (Voxtral's preprocessor config asks for no attention mask)."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=128, sampling_rate=SAMPLE_RATE, hop_length=160, chunk_length=30,
                                   n_fft=400, padding_value=0.0, return_attention_mask=attention_mask)


DEFAULT_EOS = ("<|im_end|>", "<|endoftext|>")


def generation(tokenizer: Any, eos: tuple[str, ...] = DEFAULT_EOS) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in eos],
                            pad_token_id=tokenizer.pad_token_id, do_sample=False)


def write(out_dir: str | Path, name: str, size: str, seed: int, make: Callable[[str, Path], tuple[Any, Any]],
          eos: tuple[str, ...] | None = DEFAULT_EOS, save_processor: Callable[[Any, Path], None] | None = None) -> Path:
    """Write the random-weight checkpoint `make(size, out)` builds (model, processor, tokenizer) to `out_dir`.

    `eos`: the end-of-turn tokens of its generation config (None: `make` set the model's own);
    `save_processor`: how its processor's files are laid out (default: the processor's own save).
    """
    import torch

    if size not in TEXT:  # every builder here has the sizes of TEXT
        raise ValueError(f"size {size!r} is not built for {name}; choose one of {', '.join(TEXT)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model, processor = make(size, out)
    if eos is not None:
        model.generation_config = generation(processor.tokenizer, eos)
    model.eval()
    model.save_pretrained(out)
    if save_processor is not None:
        save_processor(processor, out)
    else:
        processor.save_pretrained(out)
    log.info("wrote a %s random-weight %s (%.1fM parameters) to %s",
             size, name, sum(p.numel() for p in model.parameters()) / 1e6, out)
    return out
