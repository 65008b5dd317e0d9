"""`model.backend: salmonn` on a tiny random SALMONN written in the released layout.

The builder writes checkpoint.pth (released key names, optimizer state beside), beats.pt,
whisper/ and llm/; the backend loads them through the code that loads the real files. Its
answers are checked against references written here, independently of the engine.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from monitor.engine.api import Question, Request
from monitor.engine.backends import load_backend
from monitor.engine.errors import ModelLoadError
from monitor.engine.local.engine import Engine
from monitor.engine.settings import ModelSettings
from monitor.testing.signals import make_window, noise, tone

FIXTURES = Path(__file__).parent / "fixtures" / "salmonn"
QUESTIONS = [
    "Is a dog barking?",
    "Is a baby or an infant crying in this recording?",
    "Help?",
    "Is someone falling down or has a person fallen to the floor? Answer yes or no.",
]


@pytest.fixture(scope="module")
def salmonn_dir(tiny_salmonn_dir) -> Path:
    return tiny_salmonn_dir


def settings_for(folder: Path, **changes) -> ModelSettings:
    parts = dict(checkpoint=folder / "checkpoint.pth", beats=folder / "beats.pt", whisper=folder / "whisper",
                 llm=folder / "llm")
    parts.update(changes)
    return ModelSettings(backend="salmonn", device="cpu", salmonn=parts)


@pytest.fixture(scope="module")
def engine(salmonn_dir) -> Engine:
    backend = load_backend(settings_for(salmonn_dir))
    assert isinstance(backend, Engine) and backend.family.name == "salmonn"  # the local engine, SALMONN its family
    return backend


def released_patterns() -> list[tuple[re.Pattern, str]]:
    out = []
    for line in (FIXTURES / "released_keys.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        pattern, kind = line.split("\t")[:2]
        out.append((re.compile("^" + re.escape(pattern).replace(r"\{i\}", r"(\d+)") + "$"), kind))
    return out


def test_the_tiny_checkpoint_uses_exactly_the_released_key_names(salmonn_dir, engine):
    saved = torch.load(salmonn_dir / "checkpoint.pth", weights_only=True)
    assert {"model", "optimizer"} <= saved.keys()
    patterns = released_patterns()
    seen: dict[str, set[int]] = {}
    for key in saved["model"]:
        matches = [(p, m) for p, _ in patterns if (m := p.match(key))]
        assert len(matches) == 1, key
        pattern, match = matches[0]
        seen.setdefault(pattern.pattern, set()).update(int(g) for g in match.groups())
    assert len(seen) == len(patterns), "every released pattern is present"
    llm_layers = engine.model.config.num_hidden_layers
    beats_layers = engine.processor.audio.beats.cfg.encoder_layers
    for pattern, indices in seen.items():
        if "llama_model" in pattern:
            assert indices == set(range(llm_layers)), pattern
        elif "beats" in pattern:
            assert indices == set(range(1, beats_layers)), pattern  # the table copies of layers 1..N-1


WINDOWS = {"0.5s noise": noise(0.5, seed=1), "3.7s tone": tone(3.7, 523.0), "30s noise+tone":
           noise(30.0, 0.1, seed=3) + tone(30.0, 200.0, 0.2)}


def reference_scores(engine: Engine, audio: np.ndarray, prompt: str) -> tuple[float, float]:
    """SALMONN's prompt built by hand: BOS, "USER: <Speech>", 88 speech embeddings, the rest; one full forward."""
    tokenizer, llm = engine.tokenizer, engine.model
    audio = np.concatenate([audio, np.zeros(max(0, 16000 - len(audio)), np.float32)])  # SALMONN pads to 1 s
    left = tokenizer("USER: <Speech>", add_special_tokens=False, return_tensors="pt")["input_ids"]
    right = tokenizer(f"</Speech> {prompt}\nASSISTANT:", add_special_tokens=False, return_tensors="pt")["input_ids"]
    bos = torch.tensor([[tokenizer.bos_token_id]])
    embed = llm.get_input_embeddings()
    with torch.no_grad():
        speech = engine.processor.audio([audio])
        logits = llm(inputs_embeds=torch.cat([embed(bos), embed(left), speech, embed(right)], 1)).logits[0, -1].double()
    probs = torch.softmax(logits, -1)
    words = {i: tokenizer.convert_tokens_to_string([t]).strip().lower() for t, i in tokenizer.get_vocab().items()}
    p_yes = float(sum(probs[i] for i, w in words.items() if w == "yes"))
    p_no = float(sum(probs[i] for i, w in words.items() if w == "no"))
    return p_yes / (p_yes + p_no), p_yes + p_no


@pytest.mark.parametrize("name", list(WINDOWS))
def test_packed_scores_equal_the_plain_forward_of_each_question(engine, name):
    got = engine.score(WINDOWS[name], QUESTIONS)
    for prompt in QUESTIONS:
        want_score, want_mass = reference_scores(engine, WINDOWS[name], prompt)
        assert abs(got[prompt][0] - want_score) < 1e-4, (name, prompt)
        assert abs(got[prompt][1] - want_mass) < 1e-4, (name, prompt)
    values = [s for s, _ in got.values()]
    assert max(values) - min(values) > 0.02, "scores barely differ: this comparison would prove little"


def test_every_clip_from_half_a_second_to_30_gives_88_speech_tokens_that_depend_on_the_audio(engine):
    clips = [engine.fit(noise(s, 0.1, seed=int(s * 10))) for s in (0.5, 1.0, 7.3, 30.0)]
    with torch.no_grad():
        speech = engine.processor.audio(clips)
        alone = engine.processor.audio(clips[2:3])
    assert speech.shape == (4, 88, engine.model.config.hidden_size)
    assert float((speech[2] - alone[0]).abs().max()) < 1e-5, "a clip's tokens do not depend on the batch"
    assert float((speech[0] - speech[1]).abs().max()) > 1e-3


def test_a_batch_of_rooms_equals_one_window_at_a_time(engine):
    windows = [make_window(noise(2.0, 0.1, seed=5), seq=1), make_window(tone(4.0, 300.0), seq=2),
               make_window(noise(1.0, 0.3, seed=6), seq=3)]
    requests = [Request(w, tuple(Question(f"q{i}", p) for i, p in enumerate(QUESTIONS[:3])), source=f"room{n}")
                for n, w in enumerate(windows)]
    batched = engine.answer(requests)
    alone = [engine.answer([r])[0] for r in requests]
    for b, a in zip(batched, alone, strict=True):
        assert b.error is None and a.error is None
        for key in b.scores:
            assert abs(b.scores[key].score - a.scores[key].score) < 1e-4
            assert b.scores[key].baseline == a.scores[key].baseline  # calibrated once, on silence


def test_text_answers_are_greedy_and_equal_alone_and_batched(engine):
    a, b = noise(2.0, 0.2, seed=7), tone(1.5, 440.0)
    batched = engine.answer_texts([(a, "What is being said?", 6), (b, "Describe the sounds in this recording.", 4)])
    # greedy by hand, for the first question: the argmax token appended until the budget
    tokenizer, llm = engine.tokenizer, engine.model
    tokens: list[int] = []
    with torch.no_grad():
        inputs = engine._plain_inputs(engine.fit(a), "What is being said?")["inputs_embeds"]
        for _ in range(6):
            token = int(llm(inputs_embeds=inputs).logits[0, -1].argmax())
            tokens.append(token)
            if token == tokenizer.eos_token_id:
                break
            inputs = torch.cat([inputs, llm.get_input_embeddings()(torch.tensor([[token]]))], 1)
    assert batched[0] == tokenizer.decode(tokens, skip_special_tokens=True).strip()
    assert batched[1] == engine.answer_text(b, "Describe the sounds in this recording.", 4)
    assert batched[0]


def test_lora_is_merged_equal_to_the_unmerged_lora_forward(salmonn_dir, engine):
    """The base LLM with LoRA applied at run time (x W^T + alpha/r x A^T B^T), against the merged weights."""
    from transformers import LlamaForCausalLM

    from monitor.engine.salmonn.checkpoint import LORA

    base = LlamaForCausalLM.from_pretrained(salmonn_dir / "llm").eval()
    state = torch.load(salmonn_dir / "checkpoint.pth", weights_only=True)["model"]
    adapters: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if m := LORA.match(key):
            adapters.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = value
    alpha = engine.settings.salmonn.lora_alpha
    for (i, p), pair in adapters.items():
        linear = getattr(base.model.layers[i].self_attn, f"{p}_proj")
        scale = alpha / pair["A"].shape[0]
        linear.register_forward_hook(lambda mod, args, out, a=pair["A"], b=pair["B"], s=scale:
                                     out + s * (args[0] @ a.T) @ b.T)
    ids = torch.tensor([engine.tokenizer("Is a dog barking? Answer yes or no.")["input_ids"]])
    with torch.no_grad():
        unmerged = base(ids).logits
        merged = engine.model(ids).logits
        plain = LlamaForCausalLM.from_pretrained(salmonn_dir / "llm").eval()(ids).logits
    assert float((merged - unmerged).abs().max()) < 1e-5
    assert float((merged - plain).abs().max()) > 1e-2, "the LoRA must change the answer for this test to mean anything"


def test_lora_alpha_is_a_setting(salmonn_dir, engine):
    other = load_backend(settings_for(salmonn_dir).model_copy(
        update={"salmonn": settings_for(salmonn_dir).salmonn.model_copy(update={"lora_alpha": 28.0})}))
    weight = other.model.model.layers[0].self_attn.q_proj.weight
    assert float((weight - engine.model.model.layers[0].self_attn.q_proj.weight).abs().max()) > 1e-4


def _resave(source: Path, target: Path, change) -> Path:
    saved = torch.load(source, weights_only=True)
    change(saved["model"])
    torch.save(saved, target)
    return target


@pytest.mark.parametrize("change, expected", [
    (lambda m: m.pop("speech_Qformer.bert.encoder.layer.0.crossattention.self.key.bias"),
     r"model.salmonn.checkpoint .*1 missing front-end weight\(s\), e.g. qformer.encoder.layer.0.crossattention"),
    (lambda m: m.update({"speech_encoder.conv1.weight": torch.zeros(1)}),
     r"1 unexpected key\(s\) in the SALMONN checkpoint, e.g. speech_encoder.conv1.weight"),
    (lambda m: [m.pop(k) for k in list(m) if ".layers.1.self_attn.v_proj.lora_" in k],
     r"1 LoRA adapter\(s\) missing .*layers.1.self_attn.v_proj"),
])
def test_a_checkpoint_that_does_not_fit_is_one_line(salmonn_dir, tmp_path, change, expected):
    broken = _resave(salmonn_dir / "checkpoint.pth", tmp_path / "broken.pth", change)
    with pytest.raises(ModelLoadError, match=expected) as info:
        load_backend(settings_for(salmonn_dir, checkpoint=broken))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("part, value, expected", [
    ("checkpoint", "missing.pth", r"model.salmonn.checkpoint .*missing.pth.*hf download tsinghua-ee/SALMONN-7B"),
    ("beats", "missing.pt", r"model.salmonn.beats .*missing.pt.*BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt"),
    ("whisper", "missing-whisper", r"model.salmonn.whisper .*missing-whisper.*openai/whisper-large-v2"),
    ("llm", "missing-llm", r"model.salmonn.llm .*missing-llm.*lmsys/vicuna-7b-v1.5"),
])
def test_each_missing_part_is_one_line_naming_it_and_where_to_get_it(salmonn_dir, tmp_path, part, value, expected):
    with pytest.raises(ModelLoadError, match=expected) as info:
        load_backend(settings_for(salmonn_dir, **{part: tmp_path / value}))
    assert "\n" not in str(info.value)


def test_a_beats_file_that_is_not_beats_is_one_line(salmonn_dir, tmp_path):
    torch.save({"model": {}}, tmp_path / "not-beats.pt")
    with pytest.raises(ModelLoadError, match=r"model.salmonn.beats .*not a BEATs checkpoint"):
        load_backend(settings_for(salmonn_dir, beats=tmp_path / "not-beats.pt"))


def test_settings_need_the_checkpoint_and_beats_and_take_hub_references():
    with pytest.raises(ValueError, match="backend: salmonn needs model.salmonn.checkpoint .* and model.salmonn.beats"):
        ModelSettings(backend="salmonn")
    settings = ModelSettings(backend="salmonn", salmonn={"checkpoint": "tsinghua-ee/SALMONN-7B:salmonn_7b_v0.pth",
                                                        "beats": "/models/beats.pt", "lora_alpha": 28})
    assert settings.salmonn.checkpoint == "tsinghua-ee/SALMONN-7B:salmonn_7b_v0.pth"
    assert settings.salmonn.whisper == "openai/whisper-large-v2" and settings.salmonn.llm == "lmsys/vicuna-7b-v1.5"
    with pytest.raises(ValueError, match="lora_alpha"):
        ModelSettings(backend="salmonn", salmonn={"checkpoint": "a.pth", "beats": "b.pt", "lora_alpha": 0})


def test_a_file_that_is_not_a_salmonn_checkpoint_is_one_line(salmonn_dir, tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(ModelLoadError, match=r"model.salmonn.checkpoint .*other.pth.*not a SALMONN checkpoint"):
        load_backend(settings_for(salmonn_dir, checkpoint=tmp_path / "other.pth"))


def test_the_checkpoint_is_read_once_memory_mapped_and_only_its_model_dict_is_kept(salmonn_dir, monkeypatch):
    from monitor.engine.salmonn import checkpoint

    calls = []
    real_load = torch.load
    monkeypatch.setattr(checkpoint.torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    model = checkpoint.read(salmonn_dir / "checkpoint.pth")
    assert "speech_query_tokens" in model and "optimizer" not in model and "exp_avg" not in str(list(model))
    assert len(calls) == 1 and calls[0]["mmap"] is True and calls[0]["weights_only"] is True
