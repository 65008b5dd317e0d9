"""One engine for all rooms: batches of windows, and the audio encoder cropped to each window.

All on the real (random-weight) Qwen2-Audio architecture. Batched answers are compared with the
same windows answered one at a time, and with the plain path (the processor, the model's own
forward over 30 s of padded features, each question alone) — computed another way.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from monitor.engine.api import Question, Request, TextTask
from monitor.engine.local.encoder import CroppedEncoder, Unsupported, audio_tokens
from monitor.engine.local.engine import Engine
from monitor.engine.local.selfcheck import SCORE_TOLERANCE
from monitor.engine.settings import ModelSettings
from monitor.testing.signals import RATE, make_window, noise, tone
from tests.engine_support import fresh

PROMPTS = [
    "Help?",
    "Is a dog barking?",
    "Is a baby or an infant crying in this recording?",
    "Is glass breaking or shattering?",
    "Is someone knocking on the door or is the doorbell ringing? Answer yes or no.",
    "Is water running or dripping?",
]

# Windows of different rooms: different audio, lengths from 0.5 s to 30 s, different question sets.
ROOMS = [
    ("kitchen", noise(8.0, 0.05, seed=2) + tone(8.0, 200.0, 0.2), PROMPTS[:4]),
    ("hall", tone(0.5, 523.0), PROMPTS[1:3]),
    ("bedroom", noise(30.0, 0.2, seed=3), PROMPTS[2:]),
    ("bathroom", noise(2.3, 0.3, seed=4), [PROMPTS[5], PROMPTS[0], PROMPTS[5]]),
    ("garage", noise(17.3, 0.02, seed=5) + tone(17.3, 90.0, 0.4), PROMPTS[:1]),
]




def requests(rooms=ROOMS, texts: dict[str, tuple[TextTask, ...]] | None = None) -> list[Request]:
    out = []
    for seq, (room, audio, prompts) in enumerate(rooms):
        questions = tuple(Question(f"{room}-{i}", p) for i, p in enumerate(prompts))
        out.append(Request(make_window(audio, seq=seq), questions, (texts or {}).get(room, ()), source=room))
    return out


class Counting(Engine):
    """Counts the forward passes and generate() calls the engine makes."""

    forwards = 0
    generates = 0

    def _forward(self, **inputs):
        self.forwards += 1
        return super()._forward(**inputs)

    def _generate(self, inputs, max_new_tokens, budgets=None):
        self.generates += 1
        if budgets is None:
            return super()._generate(inputs, max_new_tokens)
        return super()._generate(inputs, max_new_tokens, budgets)


# ---------------------------------------------------------------------------- batched yes/no


def test_a_batch_of_rooms_is_one_forward_and_equals_one_window_at_a_time(engine):
    eng = fresh(engine, Counting)
    eng.forward_overhead = 10**9  # never split: every window, 0.5 s to 30 s, in the one padded forward
    batch = requests()
    eng.calibrate({p for _, _, prompts in ROOMS for p in prompts}, seconds=8.0)
    eng.forwards = 0
    results = eng.answer(batch)
    assert eng.forwards == 1, "all windows' yes/no questions in ONE forward"
    alone = [eng.run(r) for r in batch]
    assert [r.window for r in results] == [r.window for r in batch]  # request order
    for request, got, want in zip(batch, results, alone, strict=True):
        assert got.error is None and want.error is None
        assert set(got.scores) == {q.key for q in request.questions}
        plain = eng.score_plain(request.window.audio, [q.prompt for q in request.questions])
        for q in request.questions:
            assert abs(got.scores[q.key].score - want.scores[q.key].score) < 1e-4, (request.source, q.prompt)
            assert abs(got.scores[q.key].mass - want.scores[q.key].mass) < 1e-4
            assert abs(got.scores[q.key].score - plain[q.prompt][0]) < 1e-4, (request.source, q.prompt)
            assert got.scores[q.key].baseline == eng.baselines[q.prompt]
        assert got.generation == 0 and got.source == ""  # the worker copies those, the engine does not
    flat = [s.score for r in results for s in r.scores.values()]
    assert max(flat) - min(flat) > 0.02, "scores barely differ: this comparison would prove little"


def test_batched_scores_match_with_eager_attention(tiny_model_dir):
    eng = Engine.load(ModelSettings(path=tiny_model_dir, attn_implementation="eager"))
    assert eng.encoder_path == "cropped"
    rooms = ROOMS[:4]
    got = eng.score_windows([a for _, a, _ in rooms], [p for *_, p in rooms])
    for (_, audio, prompts), scores in zip(rooms, got, strict=True):
        assert list(scores) == list(dict.fromkeys(prompts))
        plain = eng.score_plain(audio, prompts)
        for p in scores:
            assert abs(scores[p][0] - plain[p][0]) < 1e-4


def test_a_window_whose_prompt_cannot_share_the_prefix_is_scored_plainly_inside_a_batch(engine):
    eng = fresh(engine)
    odd = "Is someone snoring?"
    eng.layout._suffixes[odd] = None  # as if its tokens merged across the audio/question boundary
    rooms = [("a", noise(1.0, seed=8), [odd]), ("b", tone(3.0, 300.0), [odd, PROMPTS[1]]), ROOMS[0]]
    got = eng.score_windows([a for _, a, _ in rooms], [p for *_, p in rooms])
    for (_, audio, prompts), scores in zip(rooms, got, strict=True):
        plain = eng.score_plain(audio, prompts)
        assert set(scores) == set(prompts)
        for p in prompts:
            assert abs(scores[p][0] - plain[p][0]) < 1e-4


def test_windows_of_very_different_lengths_are_grouped_and_still_equal(engine):
    eng = fresh(engine, Counting)
    assert eng.forward_overhead == 16  # CPU
    batch = requests()
    eng.calibrate({p for _, _, prompts in ROOMS for p in prompts}, seconds=8.0)
    eng.forwards = 0
    grouped = eng.answer(batch)
    assert 1 < eng.forwards <= len(batch)
    similar = requests([(f"room{i}", noise(8.0, 0.1, seed=50 + i), PROMPTS[:4]) for i in range(4)])
    eng.forwards = 0
    eng.answer(similar)
    assert eng.forwards == 1, "windows of the same length and questions share one forward"
    for request, got in zip(batch, grouped, strict=True):
        want = eng.run(request)
        assert all(abs(got.scores[k].score - want.scores[k].score) < 1e-4 for k in want.scores)


def test_group_rows_pads_only_when_padding_costs_less_than_a_forward():
    from monitor.engine.local.packing import group_rows

    assert group_rows([430, 425, 431, 428], 64) == [[0, 1, 2, 3]]
    assert group_rows([430, 60, 820, 70], 64) == [[0], [1, 3], [2]]
    assert group_rows([430, 60, 820, 70], 10**9) == [[0, 1, 2, 3]]
    assert group_rows([430, 60, 820, 70], 0) == [[0], [1], [2], [3]]
    assert group_rows([], 16) == []


def test_batches_larger_than_max_batch_are_answered_in_chunks_in_order(engine):
    eng = fresh(engine, Counting, max_batch=2)
    eng.forward_overhead = 10**9
    batch = requests()
    eng.calibrate({p for _, _, prompts in ROOMS for p in prompts}, seconds=8.0)
    eng.forwards = 0
    results = eng.answer(batch)
    assert eng.forwards == 3  # 2 + 2 + 1 windows
    assert [r.window.seq for r in results] == [r.window.seq for r in batch]
    assert all(r.error is None for r in results)


def test_calibration_in_a_batch_uses_the_first_windows_length_and_scores_silence(engine):
    eng = fresh(engine)
    results = eng.answer(requests(ROOMS[1:3]))  # nothing calibrated yet: 0.5 s window first
    assert eng.calibration_seconds == 0.5
    silence = np.zeros(RATE // 2, dtype=np.float32)
    for r in results:
        for q in r.scores.values():
            assert q.baseline in eng.baselines.values()
    for prompt, baseline in eng.baselines.items():
        assert abs(baseline - eng.score_plain(silence, [prompt])[prompt][0]) < 1e-4


# ---------------------------------------------------------------------------- batched text


def test_text_questions_of_all_windows_are_one_generate_and_equal_one_by_one(engine):
    eng = fresh(engine, Counting)
    t0 = 16000 * 50
    windows = [make_window(noise(4.0, 0.1, seed=11), seq=1, start=t0),
               make_window(tone(6.0, 250.0) + noise(6.0, 0.05, seed=12), seq=2, start=t0),
               make_window(noise(2.0, 0.3, seed=13), seq=3, start=t0)]
    batch = [
        Request(windows[0], texts=(TextTask("speech", "What is being said?", t0 + 8000, t0 + 40000, 6),
                                   TextTask("late", "Describe the sounds in this recording.", t0 - 100, t0 + 9000, 3))),
        Request(windows[1], questions=(Question("dog", PROMPTS[1]),),
                texts=(TextTask("speech", "What is being said?", t0, t0 + 96000, 12),)),
        Request(windows[2], questions=(Question("help", PROMPTS[0]),)),
    ]
    eng.calibrate([PROMPTS[0], PROMPTS[1]], 4.0)
    results = eng.answer(batch)
    assert eng.generates == 1, "every text question of the batch in ONE generate()"
    assert all(r.error is None for r in results)
    assert [(t.key, t.start, t.end) for t in results[0].texts] == [("speech", t0 + 8000, t0 + 40000),
                                                                    ("late", t0, t0 + 9000)]
    assert results[2].texts == []
    for request, result in zip(batch, results, strict=True):
        for task, text in zip([t for t in request.texts], result.texts, strict=True):
            w = request.window
            alone = eng.answer_text(w.segment(text.start, text.end), task.prompt, task.max_new_tokens)
            assert text.text == alone, (request.window.seq, task.key)
    assert any(t.text for r in results for t in r.texts)


def test_batched_text_answers_equal_the_plain_generate_through_the_processor(engine):
    eng = fresh(engine)
    clips = [noise(1.5, 0.2, seed=21), tone(5.0, 700.0), noise(9.0, 0.05, seed=22) + tone(9.0, 120.0, 0.3)]
    prompts = ["What is being said?", "Describe the sounds in this recording.", "What is being said?"]
    budgets = [4, 9, 7]
    got = eng.answer_texts(list(zip(clips, prompts, budgets, strict=True)))
    for audio, prompt, budget, text in zip(clips, prompts, budgets, got, strict=True):
        inputs = engine.processor(text=engine.layout.render(prompt), audio=audio, sampling_rate=RATE,
                                  return_tensors="pt")
        with torch.no_grad():
            out = engine.model.generate(**inputs, max_new_tokens=budget, do_sample=False)
        want = engine.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert text == want


# ---------------------------------------------------------------------------- failure isolation


class Fragile(Engine):
    """Fails like a real fault would: out of memory for batches, or a bad window's features."""

    max_rows: int | None = None  # a forward with more rows runs out of memory
    bad_length: int | None = None  # a clip of this many samples cannot be prepared

    def _forward(self, **inputs):
        rows = next(v for v in inputs.values() if isinstance(v, torch.Tensor)).shape[0]
        if self.max_rows is not None and rows > self.max_rows:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return super()._forward(**inputs)

    def _clip(self, audio):
        if self.bad_length is not None and len(audio) == self.bad_length:
            raise ValueError("corrupt features\nmore detail")
        return super()._clip(audio)


def test_a_batch_that_runs_out_of_memory_is_answered_window_by_window(engine, caplog):
    eng = fresh(engine, Fragile)
    eng.forward_overhead = 10**9  # one forward for the whole batch
    eng.calibrate({p for _, _, prompts in ROOMS for p in prompts}, seconds=8.0)
    eng.max_rows = 1
    batch = requests()
    with caplog.at_level(logging.WARNING, logger="monitor.engine.local.engine"):
        results = eng.answer(batch)
    assert all(r.error is None for r in results)
    assert eng.batch_failures == 1 and eng.failures == 0
    assert any("one by one" in r.getMessage() for r in caplog.records)
    eng.max_rows = None
    again = eng.answer(batch)
    for a, b in zip(results, again, strict=True):
        assert a.scores.keys() == b.scores.keys()
        assert all(abs(a.scores[k].score - b.scores[k].score) < 1e-4 for k in a.scores)


def test_a_bad_window_fails_alone_and_the_others_are_answered(engine):
    eng = fresh(engine, Fragile)
    eng.calibrate({p for _, _, prompts in ROOMS for p in prompts}, seconds=8.0)
    batch = requests()
    eng.bad_length = len(batch[3].window.audio)
    results = eng.answer(batch)
    assert results[3].error == "ValueError: corrupt features (window 3 skipped)"
    assert results[3].scores == {} and results[3].texts == []
    assert [r.error for i, r in enumerate(results) if i != 3] == [None] * 4
    eng.bad_length = None
    for i in (0, 4):
        want = eng.run(batch[i])
        assert all(abs(results[i].scores[k].score - want.scores[k].score) < 1e-4 for k in want.scores)
    assert eng.failures == 1 and eng.batch_failures == 1


# ---------------------------------------------------------------------------- the cropped encoder


LENGTHS = [0.1, 0.5, 1.0, 2.3, 7.99, 8.0, 17.3, 29.99, 30.0]


def features(engine: Engine, seconds: list[float]) -> tuple[torch.Tensor, list[int]]:
    clips = [engine._clip(noise(s, 0.1, seed=i) + tone(s, 100.0 + 40 * i, 0.1)) for i, s in enumerate(seconds)]
    return torch.cat([c.features["input_features"] for c in clips]), [c.frames for c in clips]


def test_cropped_audio_embeddings_equal_the_padded_encoders_from_half_a_second_to_30(engine):
    encoder = engine.encoder
    assert engine.encoder_path == "cropped" and encoder is not None
    feats, frames = features(engine, LENGTHS)
    with torch.inference_mode():
        padded = encoder.padded(feats, frames)
        batched = encoder.cropped(feats, frames)  # one batch, cropped to its longest window
        assert batched.shape == padded.shape == (sum(audio_tokens(f) for f in frames), padded.shape[1])
        assert float((batched - padded).abs().max()) < 1e-4
        at = 0
        for i, f in enumerate(frames):
            n = audio_tokens(f)
            alone = encoder.cropped(feats[i:i + 1], [f])
            assert float((alone - padded[at:at + n]).abs().max()) < 1e-4, LENGTHS[i]
            at += n
    # the model's own forward (processor, 30 s of features) projects the same audio embeddings
    i = LENGTHS.index(7.99)
    audio = noise(7.99, 0.1, seed=i) + tone(7.99, 100.0 + 40 * i, 0.1)
    captured = []
    projector = engine.model.model.multi_modal_projector
    handle = projector.register_forward_hook(lambda _m, _args, out: captured.append(out))
    try:
        inputs = engine.processor(text=engine.layout.render("Help?"), audio=audio, sampling_rate=RATE,
                                  return_tensors="pt")
        with torch.inference_mode():
            engine.model(**inputs)
    finally:
        handle.remove()
    n = audio_tokens(frames[i])
    own = captured[0][0, :n]
    start = sum(audio_tokens(f) for f in frames[:i])
    assert float((own - batched[start:start + n]).abs().max()) < 1e-4


def test_the_encoder_sees_only_the_windows_own_frames(engine):
    seen: list[int] = []
    layer = engine.model.model.audio_tower.layers[0]
    handle = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        eng = fresh(engine)
        seen.clear()
        eng.score(noise(8.0), PROMPTS[:2])
        eng.forward_overhead = 10**9
        eng.score_windows([noise(2.0), noise(8.0, seed=1)], [PROMPTS[:1], PROMPTS[:1]])
        eng.forward_overhead = 0
        eng.score_windows([noise(2.0), noise(8.0, seed=1)], [PROMPTS[:1], PROMPTS[:1]])
    finally:
        handle.remove()
    # 8 s = 800 mel frames -> 400 positions, +1 the convolutions read past the end; a batch is cropped
    # to its longest window; split into two forwards, each window is cropped to its own length
    assert seen == [401, 401, 101, 401]


# Window lengths no two alike (utterances of text rules, windows after an outage): each was a new shape
IRREGULAR = [0.13 + 0.331 * k + 0.011 * (k % 7) for k in range(20)] + [9.7, 17.3, 29.99, 30.0]


def _encoder_lengths(engine: Engine) -> tuple[list[int], object]:
    """Positions each encoder run covers (its first layer's input length), recorded by a hook."""
    seen: list[int] = []
    layer = engine.model.model.audio_tower.layers[0]
    return seen, layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))


def test_crops_are_rounded_up_to_a_few_lengths_that_hold_the_longest_window(engine):
    # through the engine: windows of 24 lengths reach the encoder in 10 shapes, none too short
    eng = fresh(engine)
    seen, handle = _encoder_lengths(engine)
    try:
        for i, seconds in enumerate(IRREGULAR):
            eng.score_windows([noise(seconds, 0.1, seed=i)], [PROMPTS[:1]])
        eng.answer_texts([(noise(s, 0.1, seed=50 + i), "What is being said?", 2) for i, s in enumerate(IRREGULAR[:9])])
    finally:
        handle.remove()
    needed = [(int(round(s * RATE)) // 160 - 1) // 2 + 1 for s in IRREGULAR]  # valid positions: 50 per second
    assert len(seen) == len(IRREGULAR) + 1 and len(set(seen)) == 10, sorted(set(seen))
    assert set(seen) <= {min(50 * s + 1, 1500) for s in (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30)}, sorted(set(seen))
    assert all(got >= min(n + 1, 1500) for got, n in zip(seen, needed))  # every valid position, + the one past
    # the rounding itself: the smallest of 13 lengths that holds the longest window
    from monitor.engine.local.encoder import CROP_SECONDS, crop_positions

    full = 1500
    sizes = {crop_positions(n, full) for n in range(1, full + 1)}
    assert sorted(sizes) == [50 * s for s in CROP_SECONDS] and len(sizes) == 13
    assert all(crop_positions(n, full) >= n for n in range(1, full + 1))
    assert crop_positions(100, full) == 100 and crop_positions(400, full) == 400  # 2 s and 8 s windows: exact
    assert crop_positions(401, full) == 500 and crop_positions(1501, full) == full
    assert crop_positions(377, full, None) == 377


def test_the_self_check_compares_the_rounded_crops_the_engine_uses(engine):
    seen, handle = _encoder_lengths(engine)
    try:
        eng = fresh(engine)
    finally:
        handle.remove()
    assert eng.encoder is not None
    # probes of 0.5 s and 7.3 s: cropped to 1 s and 8 s (as the engine would), against the padded 30 s
    assert {51, 401, 1500} <= set(seen) and not {26, 366} & set(seen)


def test_rounded_crops_give_the_exact_crops_embeddings_and_scores(engine):
    import copy

    # float64: the rounding may change only summation order (differences ~1e-12), never a value
    model64 = copy.deepcopy(engine.model).double()
    rounded, exact = CroppedEncoder(model64), CroppedEncoder(model64)
    exact.crop_seconds = None
    feats, frames = features(engine, IRREGULAR[::3] + [8.0, 7.99])
    with torch.inference_mode():
        for i, f in enumerate(frames):
            a = rounded.cropped(feats[i:i + 1].double(), [f])
            b = exact.cropped(feats[i:i + 1].double(), [f])
            assert a.shape == b.shape and float((a - b).abs().max()) < 1e-10
        batch_a, batch_b = rounded.cropped(feats.double(), frames), exact.cropped(feats.double(), frames)
        assert float((batch_a - batch_b).abs().max()) < 1e-10
    # and the engine's scores (float32) within the self-check's tolerances
    eng, plain = fresh(engine), fresh(engine)
    plain.encoder.crop_seconds = None
    audios = [noise(s, 0.1, seed=60) + tone(s, 250.0, 0.2) for s in (0.37, 2.3, 7.3, 13.1, 29.9)]
    got = eng.score_windows(audios, [PROMPTS[:3]] * len(audios))
    want = plain.score_windows(audios, [PROMPTS[:3]] * len(audios))
    for x, y in zip(got, want, strict=True):
        assert all(abs(a - b) <= SCORE_TOLERANCE[torch.float32] for p in x for a, b in zip(x[p], y[p]))


@pytest.mark.parametrize("seconds", [0.5, 2.3, 8.0, 30.0])
def test_cropped_and_padded_paths_give_the_same_yes_no_scores(engine, seconds):
    cropped = fresh(engine)
    padded = fresh(engine)
    padded.encoder = None  # the model's own forward, over 30 s of padded features
    audio = noise(seconds, 0.1, seed=31) + tone(seconds, 300.0, 0.2)
    a, b = cropped.score(audio, PROMPTS), padded.score(audio, PROMPTS)
    for p in PROMPTS:
        assert abs(a[p][0] - b[p][0]) < 1e-4 and abs(a[p][1] - b[p][1]) < 1e-4
    many = cropped.score_windows([audio, noise(1.0, seed=32)], [PROMPTS, PROMPTS[:2]])
    many_padded = padded.score_windows([audio, noise(1.0, seed=32)], [PROMPTS, PROMPTS[:2]])
    for x, y in zip(many, many_padded, strict=True):
        assert all(abs(x[p][0] - y[p][0]) < 1e-4 for p in x)


def test_the_self_check_refuses_an_encoder_whose_output_depends_on_padding(engine, monkeypatch, caplog):
    from transformers.models.qwen2_audio import modeling_qwen2_audio as qwen

    original = qwen.Qwen2AudioEncoderLayer.forward

    def attends_to_padding(self, hidden_states, attention_mask=None, **kwargs):
        return original(self, hidden_states, None, **kwargs)  # as Whisper does: no padding mask

    monkeypatch.setattr(qwen.Qwen2AudioEncoderLayer, "forward", attends_to_padding)
    with caplog.at_level(logging.INFO, logger="monitor.engine.local.selfcheck"):
        eng = fresh(engine)
    assert eng.encoder is None and eng.encoder_path == "padded"
    refused = [r for r in caplog.records if "padded to 30 s" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.WARNING
    # the padded path is the model's own: still the plain forward's scores
    audio = noise(3.0, seed=41)
    got, plain = eng.score(audio, PROMPTS[:3]), eng.score_plain(audio, PROMPTS[:3])
    assert all(abs(got[p][0] - plain[p][0]) < 1e-4 for p in got)
    eng.forward_overhead = 10**9
    batch = eng.score_windows([audio, noise(9.0, seed=42)], [PROMPTS[:3], PROMPTS[2:]])
    assert all(abs(batch[0][p][0] - got[p][0]) < 1e-4 for p in got)
    questions = [(audio, "What is being said?", 5), (noise(6.0, seed=43), "Describe the sounds in this recording.", 8)]
    assert eng.answer_texts(questions) == [eng.answer_text(*q) for q in questions]


def test_a_model_not_shaped_like_qwen2_audio_keeps_the_padded_path(engine, monkeypatch, caplog):
    with pytest.raises(Unsupported):
        CroppedEncoder(torch.nn.Linear(2, 2))
    monkeypatch.setattr(engine.model.model.audio_tower, "avg_pooler", torch.nn.AvgPool1d(3, stride=3))
    with caplog.at_level(logging.INFO, logger="monitor.engine.local.selfcheck"):
        eng = fresh(engine)
    assert eng.encoder is None
    assert any("cropping unavailable" in r.getMessage() for r in caplog.records)


def test_pack_rows_keeps_each_windows_row_as_packed_alone_and_masks_padding():
    from monitor.engine.local.packing import pack, pack_rows

    batch = pack_rows([([10, 11, 12], [[20, 21], [30]]), ([40], [[50]])], "cpu", pad_id=0)
    alone = pack([10, 11, 12], [[20, 21], [30]], "cpu")
    assert batch.input_ids.tolist() == [[10, 11, 12, 20, 21, 30], [40, 50, 0, 0, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 0, 0, 0, 0]]
    assert batch.row.tolist() == [0, 0, 1] and batch.last.tolist() == [4, 5, 1]
    assert torch.equal(batch.attention_mask[0], alone.attention_mask[0])
    assert batch.attention_mask[1, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],  # padding sees only itself: finite, and never seen by a real token
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]
    eager = pack_rows([([10, 11, 12], [[20, 21], [30]]), ([40], [[50]])], "cpu", float_mask=torch.float32)
    assert torch.equal(eager.attention_mask == 0, batch.attention_mask)


def test_pack_rows_narrows_the_sliding_layers_mask_to_the_window_in_positions():
    """Window 2: a token sees itself and the key one position before it, as in its question's plain prompt."""
    from monitor.engine.local.packing import pack_rows

    packed = pack_rows([([10, 11, 12], [[20, 21], [30]])], "cpu", sliding_window=2)
    assert set(packed.attention_mask) == {"full_attention", "sliding_attention"}
    assert packed.position_ids[0].tolist() == [0, 1, 2, 3, 4, 3]
    assert packed.attention_mask["full_attention"][0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 1]]
    assert packed.attention_mask["sliding_attention"][0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0],
        [0, 0, 1, 0, 0, 1]]  # the second question (position 3) sees the prefix's last token, as alone
