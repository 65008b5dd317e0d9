"""The engine on a real (random-weight) Qwen2-Audio: shared-prefix scoring, text, calibration, failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monitor.engine.api import Question, Request, TextTask
from monitor.engine.local.engine import Engine, ModelLoadError
from monitor.engine.settings import ModelSettings
from monitor.testing.signals import RATE, make_window, noise, tone
from tests.engine_support import fresh
from monitor.windows import Utterance

QUESTIONS = [
    "Help?",
    "Is a dog barking?",
    "Is a baby or an infant crying in this recording?",
    "Is someone falling down or has a person fallen to the floor? Listen for a thud, a crash or a body hitting "
    "the ground, followed by silence, a groan or someone calling for help; a dropped object such as a pot or a "
    "book is not a fall, and neither is a door slamming or footsteps on the stairs. Answer yes or no.",
]




def reference_scores(engine: Engine, audio: np.ndarray, prompt: str) -> tuple[float, float]:
    """Written independently of the engine: the processor, one full forward, the whole softmax."""
    messages = []
    if engine.settings.system_prompt is not None:
        messages.append({"role": "system", "content": engine.settings.system_prompt})
    messages.append({"role": "user", "content": [{"type": "audio", "audio": "x"}, {"type": "text", "text": prompt}]})
    text = engine.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = engine.processor(text=text, audio=audio, sampling_rate=RATE, return_tensors="pt")
    with torch.no_grad():
        logits = engine.model(**inputs).logits[0, -1].double()
    probs = torch.softmax(logits, dim=-1)
    vocab = engine.tokenizer.get_vocab()
    yes = [i for t, i in vocab.items() if engine.tokenizer.convert_tokens_to_string([t]).strip().lower() == "yes"]
    no = [i for t, i in vocab.items() if engine.tokenizer.convert_tokens_to_string([t]).strip().lower() == "no"]
    p_yes, p_no = float(probs[yes].sum()), float(probs[no].sum())
    return p_yes / (p_yes + p_no), p_yes + p_no


WINDOWS = {
    "1s noise": noise(1.0, seed=1),
    "3.7s tone": tone(3.7, 523.0),
    "8s noise+tone": noise(8.0, 0.05, seed=2) + tone(8.0, 200.0, 0.2),
    "30s noise": noise(30.0, 0.2, seed=3),
}


@pytest.mark.parametrize("name", list(WINDOWS))
def test_shared_prefix_scores_equal_plain_forward_of_each_question(engine, name):
    audio = WINDOWS[name]
    got = engine.score(audio, QUESTIONS)
    assert list(got) == QUESTIONS
    for prompt in QUESTIONS:
        want_score, want_mass = reference_scores(engine, audio, prompt)
        assert abs(got[prompt][0] - want_score) < 1e-4, (name, prompt)
        assert abs(got[prompt][1] - want_mass) < 1e-4, (name, prompt)
    values = [s for s, _ in got.values()]
    assert max(values) - min(values) > 0.02, "scores barely differ: this comparison would prove little"


def test_scores_differ_between_windows_and_duplicates_are_scored_once(engine):
    a = engine.score(WINDOWS["1s noise"], QUESTIONS[:2])
    b = engine.score(WINDOWS["3.7s tone"], QUESTIONS[:2] + [QUESTIONS[0]])
    assert len(b) == 2
    assert any(abs(a[q][0] - b[q][0]) > 1e-3 for q in QUESTIONS[:2]), "the audio must matter"


def test_eager_attention_and_a_custom_system_prompt_match_the_plain_forward(tiny_model_dir):
    engine = Engine.load(ModelSettings(path=tiny_model_dir, attn_implementation="eager",
                                       system_prompt="You listen to a house and answer yes or no."))
    assert "You listen to a house" in engine.layout.prefix_text
    audio = WINDOWS["3.7s tone"]
    got = engine.score(audio, QUESTIONS)
    for prompt in QUESTIONS:
        assert abs(got[prompt][0] - reference_scores(engine, audio, prompt)[0]) < 1e-4


def test_prompt_is_laid_out_by_the_models_chat_template_with_audio_first(engine):
    q = "Is a dog barking?"
    rendered = engine.layout.render(q)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nIs a dog barking?<|im_end|>\n<|im_start|>assistant\n")
    assert engine.layout.prefix_text + q + engine.layout.tail_text == rendered
    suffix = engine.layout.suffix_ids(q)
    assert engine.tokenizer.decode(suffix) == q + "<|im_end|>\n<|im_start|>assistant\n"
    assert engine.layout.suffix_ids(q) is suffix  # tokenised once, then cached


def test_yes_no_variants_are_collected_from_the_vocabulary(engine):
    tok = engine.tokenizer
    yes = {tok.decode([i]) for i in engine.yes_ids.tolist()}
    no = {tok.decode([i]) for i in engine.no_ids.tolist()}
    assert {"Yes", " Yes", "yes", " yes", "YES"} <= yes
    assert {"No", " No", "no", " no", "NO"} <= no
    assert all(t.strip().lower() == "yes" for t in yes) and all(t.strip().lower() == "no" for t in no)
    vocab = tok.get_vocab()
    for other in ("Ġnot", "Ġnothing", "Ġnow", "Ġnone"):  # words that start like an answer are not answers
        assert other in vocab and vocab[other] not in engine.no_ids.tolist()


def test_text_answer_is_greedy_bounded_and_free_of_the_chat_template(engine, make_speech):
    import soundfile as sf

    speech, rate = sf.read(make_speech("Help me, I have fallen and I cannot get up."), dtype="float32")
    assert rate == RATE
    prompt = "What is being said? Write down the words exactly."
    eng = fresh(engine)
    generated = []
    original = eng._generate

    def spy(inputs, budget):
        out = original(inputs, budget)
        generated.append(out.shape[1] - inputs["input_ids"].shape[1])
        return out

    eng._generate = spy
    text = eng.answer_text(speech, prompt, max_new_tokens=12)
    assert generated and 0 < generated[0] <= 12
    # the same greedy answer, computed the plain way through the processor
    inputs = engine.processor(text=engine.layout.render(prompt), audio=speech, sampling_rate=RATE, return_tensors="pt")
    with torch.no_grad():
        out = engine.model.generate(**inputs, max_new_tokens=12, do_sample=False)
    want = engine.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert text == want and text
    for marker in ("<|im_start|>", "<|im_end|>", "<|AUDIO|>", "assistant\n", "system"):
        assert marker not in text


def test_text_answers_are_capped_by_model_max_new_tokens(engine):
    capped = fresh(engine, max_new_tokens=3)
    calls = []
    original = capped._generate

    def spy(inputs, budget):
        calls.append(budget)
        return original(inputs, budget)

    capped._generate = spy
    text = capped.answer_text(noise(2.0), "Describe the sounds in this recording.", max_new_tokens=200)
    assert calls == [3] and text


def test_run_answers_questions_with_baselines_and_texts_per_utterance(engine):
    eng = fresh(engine)
    audio = noise(8.0, 0.05, seed=7) + tone(8.0, 300.0, 0.2)
    start = 16000 * 100
    window = make_window(audio, seq=4, start=start, utterances=(Utterance(start + 16000, start + 48000),))
    request = Request(
        window,
        questions=(Question("dog", "Is a dog barking?"), Question("baby", QUESTIONS[2]),
                   Question("baby_again", QUESTIONS[2])),
        texts=(TextTask("speech", "What is being said?", start + 16000, start + 48000, max_new_tokens=5),
               TextTask("late", "What is being said?", start - 32000, start + 8000, max_new_tokens=5)),
    )
    result = eng.run(request)
    assert result.error is None and result.window is window and result.engine_ms > 0
    assert set(result.scores) == {"dog", "baby", "baby_again"}
    assert result.scores["baby"] == result.scores["baby_again"]
    silence = np.zeros(len(audio), dtype=np.float32)
    for key, prompt in (("dog", "Is a dog barking?"), ("baby", QUESTIONS[2])):
        s = result.scores[key]
        assert abs(s.score - reference_scores(eng, audio, prompt)[0]) < 1e-4
        assert abs(s.baseline - reference_scores(eng, silence, prompt)[0]) < 1e-4
        assert s.lift == pytest.approx(s.score - s.baseline)
        assert 0 < s.mass < 1
    assert [(t.key, t.start, t.end) for t in result.texts] == [
        ("speech", start + 16000, start + 48000), ("late", start, start + 8000)]
    assert result.texts[0].text == eng.answer_text(audio[16000:48000], "What is being said?", 5)


def test_baselines_are_computed_once_per_prompt_and_lazily_for_new_ones(engine):
    eng = fresh(engine)
    eng.calibrate(["Is a dog barking?", "Help?"], seconds=2.0)
    assert eng.calibrated == 2
    eng.calibrate(["Help?", "Is a dog barking?"])
    assert eng.calibrated == 2  # known: nothing recomputed
    window = make_window(noise(2.0, seed=9))
    result = eng.run(Request(window, questions=(Question("dog", "Is a dog barking?"), Question("new", QUESTIONS[2]))))
    assert result.error is None and eng.calibrated == 3  # only the prompt that appeared later
    silence = np.zeros(2 * RATE, dtype=np.float32)
    assert abs(eng.baselines[QUESTIONS[2]] - reference_scores(eng, silence, QUESTIONS[2])[0]) < 1e-4
    eng.calibrate(["Help?"], seconds=3.0)  # another window length: baselines of the new length
    assert eng.baselines == {"Help?": pytest.approx(reference_scores(eng, np.zeros(3 * RATE, np.float32), "Help?")[0], abs=1e-4)}


class FlakyEngine(Engine):
    """Injects a failure inside the forward pass of chosen windows (what a real fault would do)."""

    fail_with: BaseException | None = None

    def _forward(self, **inputs):
        if self.fail_with is not None:
            exc, self.fail_with = self.fail_with, None
            raise exc
        return super()._forward(**inputs)


def test_a_failing_window_gets_an_error_and_the_next_one_works(engine):
    eng = fresh(engine, FlakyEngine)
    eng.calibrate(["Is a dog barking?"], 1.0)
    questions = (Question("dog", "Is a dog barking?"),)
    eng.fail_with = RuntimeError("shape mismatch in layer 3\nsecond line of detail")
    bad = eng.run(Request(make_window(noise(1.0), seq=1), questions))
    good = eng.run(Request(make_window(noise(1.0), seq=2), questions))
    assert bad.error == "RuntimeError: shape mismatch in layer 3 (window 1 skipped)"
    assert bad.scores == {} and bad.texts == []
    assert good.error is None and set(good.scores) == {"dog"}
    assert eng.failures == 1 and eng.oom == 0


def test_out_of_memory_in_a_forward_is_counted_and_the_engine_lives_on(engine, caplog):
    eng = fresh(engine, FlakyEngine)
    eng.calibrate(["Is a dog barking?"], 1.0)
    questions = (Question("dog", "Is a dog barking?"),)
    eng.fail_with = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with caplog.at_level("ERROR", logger="monitor.engine.local.engine"):
        bad = eng.run(Request(make_window(noise(1.0), seq=5), questions))
    assert bad.error.startswith("out of memory on window 5")
    assert eng.oom == 1 and eng.failures == 1
    assert any("out of memory" in r.getMessage() for r in caplog.records)
    assert eng.run(Request(make_window(noise(1.0), seq=6), questions)).error is None


def test_out_of_memory_while_generating_text_fails_only_that_window(engine):
    eng = fresh(engine)
    original = eng._generate
    state = {"fail": True}

    def generate(inputs, budget):
        if state.pop("fail", False):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        return original(inputs, budget)

    eng._generate = generate
    task = (TextTask("speech", "What is being said?", 0, 16000, 4),)
    bad = eng.run(Request(make_window(noise(1.0), seq=1), texts=task))
    good = eng.run(Request(make_window(noise(1.0), seq=2), texts=task))
    assert bad.error.startswith("out of memory") and eng.oom == 1
    assert good.error is None and len(good.texts) == 1


def test_bfloat16_on_cpu_loads_and_scores(tiny_model_dir):
    eng = Engine.load(ModelSettings(path=tiny_model_dir, device="cpu", dtype="bfloat16"))
    assert next(eng.model.parameters()).dtype == torch.bfloat16
    got = eng.score(noise(2.0), QUESTIONS[:2])
    assert all(0 < s < 1 and 0 < m <= 1 for s, m in got.values())


def test_load_errors_are_one_line_saying_what_to_do(tmp_path):
    with pytest.raises(ModelLoadError) as missing:
        Engine.load(ModelSettings(path=tmp_path / "nowhere"))
    assert "model.path" in str(missing.value) and "does not exist" in str(missing.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError) as empty:
        Engine.load(ModelSettings(path=tmp_path / "empty"))
    assert "not a model folder" in str(empty.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    with pytest.raises(ModelLoadError) as bad:
        Engine.load(ModelSettings(path=broken))
    for exc in (missing.value, empty.value, bad.value):
        assert "\n" not in str(exc) and str(exc)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_cuda_without_cuda_says_so(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="model.device is cuda.*model.device: cpu"):
        Engine.load(ModelSettings(path=tiny_model_dir, device="cuda"))


def test_auto_placement_is_cpu_float32_here_and_overridable():
    from monitor.engine.placement import resolve_placement

    auto = resolve_placement(ModelSettings())  # the suite pins a CPU's auto to float32 (conftest; test_precision.py)
    if torch.cuda.is_available():
        assert (auto.device, auto.dtype) == ("cuda", "bfloat16")
    else:
        assert (auto.device, auto.dtype) == ("cpu", "float32")
    assert resolve_placement(ModelSettings(device="cpu", dtype="bfloat16")).dtype == "bfloat16"


def test_processor_built_prefix_gives_the_same_scores_as_the_fast_one(engine):
    eng = fresh(engine)
    assert eng._fast_features, "the fast prefix path should agree with the processor on Qwen2-Audio"
    audio = WINDOWS["3.7s tone"]
    fast = eng.score(audio, QUESTIONS)
    eng._fast_features = False
    slow = eng.score(audio, QUESTIONS)
    for prompt in QUESTIONS:
        assert abs(fast[prompt][0] - slow[prompt][0]) < 1e-5


def test_a_prompt_that_cannot_share_the_prefix_is_still_scored_right(engine):
    eng = fresh(engine)
    odd = "Is someone snoring?"
    eng.layout._suffixes[odd] = None  # as if its tokens merged across the audio/question boundary
    audio = WINDOWS["1s noise"]
    got = eng.score(audio, [odd, QUESTIONS[1]])
    for prompt in (odd, QUESTIONS[1]):
        assert abs(got[prompt][0] - reference_scores(eng, audio, prompt)[0]) < 1e-4
    assert eng.answer_text(audio, odd, 3) == fresh(engine).answer_text(audio, odd, 3)


def test_running_out_of_memory_while_loading_is_one_line(tiny_model_dir, monkeypatch):
    import transformers

    def no_memory(*_args, **_kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 16.00 GiB")

    monkeypatch.setattr(transformers.Qwen2AudioForConditionalGeneration, "from_pretrained", no_memory)
    with pytest.raises(ModelLoadError) as exc:
        Engine.load(ModelSettings(path=tiny_model_dir))
    assert str(exc.value).startswith(f"not enough memory to load model.path {tiny_model_dir}")
    assert "\n" not in str(exc.value)


# transformers' message when a model needs a package that is missing: one sentence broken across lines.
MISSING_BACKEND = ("Qwen2AudioForConditionalGeneration requires the timm library but it was not found in your "
                   "environment. Check out the instructions on the\ninstallation page: "
                   "https://github.com/huggingface/pytorch-image-models and follow the ones that match your "
                   "environment.\nPlease note that you may need to restart your runtime after installation.")


def test_a_load_failure_is_one_line_that_ends_at_a_whole_sentence(tiny_model_dir, monkeypatch):
    import transformers

    from monitor.engine.errors import first_line

    def missing_package(*_args, **_kwargs):
        raise ImportError(MISSING_BACKEND)

    monkeypatch.setattr(transformers.Qwen2AudioForConditionalGeneration, "from_pretrained", missing_package)
    with pytest.raises(ModelLoadError) as exc:
        Engine.load(ModelSettings(path=tiny_model_dir))
    message = str(exc.value)
    assert "\n" not in message and "Check out the instructions on the" not in message, message
    assert message.endswith("requires the timm library but it was not found in your environment.)"), message
    # a one-line message, or a first line without a whole sentence in it, is kept as it is
    assert first_line(ValueError("no config.json in /m. Fix it")) == "ValueError: no config.json in /m. Fix it"
    assert first_line(ValueError("corrupt features\nmore detail")) == "ValueError: corrupt features"
    assert first_line(OSError("")) == "OSError"
    # the other shape of transformers' message: what to run is on the line after the colon
    pip = ImportError("TimmWrapperModel requires the timm library but it was not found in your environment. You can "
                      "install it with pip:\n`pip install timm`. Please note that you may need to restart your runtime.")
    assert first_line(pip) == ("ImportError: TimmWrapperModel requires the timm library but it was not found in your "
                               "environment. You can install it with pip: `pip install timm`.")


def test_a_folder_with_a_config_but_no_weights_is_one_line(tiny_model_dir, tmp_path):
    import shutil

    partial = tmp_path / "partial"
    partial.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, partial / f.name)
    with pytest.raises(ModelLoadError) as exc:
        Engine.load(ModelSettings(path=partial))
    assert str(exc.value).startswith(f"model.path {partial} could not be loaded (") and "\n" not in str(exc.value)


def test_pack_lays_questions_side_by_side_after_the_prefix():
    from monitor.engine.local.packing import pack

    packed = pack([10, 11, 12], [[20, 21], [30]], "cpu")
    assert packed.input_ids.tolist() == [[10, 11, 12, 20, 21, 30]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 3]]  # each question continues from the prefix
    assert packed.last.tolist() == [4, 5]
    assert packed.attention_mask[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 0, 0, 1],  # the second question sees the prefix and itself, never the first question
    ]
    eager = pack([10, 11, 12], [[20, 21], [30]], "cpu", float_mask=torch.float32)
    assert torch.equal(eager.attention_mask == 0, packed.attention_mask)
    with pytest.raises(ValueError):
        pack([10], [[]], "cpu")
