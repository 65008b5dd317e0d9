"""The `openai` backend: a model served by a real vLLM on the CPU, against the local engine and through outages.

The vLLM server starts once per session (60-105 s) while the tests against a scripted fake
server run; "the server killed" is a TCP gate in front of it that resets every connection and
refuses new ones (what clients see of a SIGKILLed server), because restarting vLLM takes
another 60-100 s.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from monitor.engine.api import Question, Request, TextTask
from monitor.engine.errors import ModelLoadError
from monitor.engine.settings import ModelSettings
from monitor.testing.signals import make_window, noise, tone
from tests.conftest import REPO, free_port, need
from tests.daemon_support import LOUD_RULES, DaemonProcess, NotifySocket, events_of, write_config
from tests.vllm_support import (
    SERVED_NAME,
    FakeServer,
    Gate,
    VllmServer,
    build_served_model,
    logprobs_answer,
    make_ca,
    need_vllm,
    vllm_available,
)

QUESTIONS = [
    "Is a dog barking?",
    "Does this recording contain the sound of a person falling down: a heavy thud or crash followed by a cry?",
    "Does this recording contain the loud, repeating, high-pitched beeping of a smoke alarm? Answer yes or no.",
]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def served_model_dir(tmp_path_factory) -> Path:
    """A random-weight Qwen2-Audio with 32-wide attention heads (what vLLM's CPU backend takes)."""
    return build_served_model(tmp_path_factory.mktemp("served-qwen2-audio"))


@pytest.fixture(scope="module")
def vllm_launch(served_model_dir, tmp_path_factory) -> Iterator[VllmServer | None]:
    """The one vLLM of the session (only this module uses it), launched (not yet ready) as soon as the
    module's first test runs, and stopped after its last so that it holds no memory during the rest of the suite."""
    if not vllm_available():
        yield None
        return
    server = VllmServer(served_model_dir, tmp_path_factory.mktemp("vllm")).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True, scope="module")
def _launch_early(vllm_launch) -> None:
    """Start vLLM booting while the fake-server tests run."""


@pytest.fixture
def vllm(vllm_launch) -> VllmServer:
    need_vllm()
    assert vllm_launch is not None
    return vllm_launch.wait_ready()


@pytest.fixture(scope="session")
def local_engine(served_model_dir):
    from monitor.engine.local.engine import Engine

    return Engine.load(ModelSettings(path=served_model_dir, device="cpu", dtype="float32"))


def served_settings(url: str, name: str = SERVED_NAME, **kw) -> ModelSettings:
    return ModelSettings(backend="openai", url=url, name=name, **kw)


@pytest.fixture
def served(vllm, monkeypatch) -> Iterator:
    from monitor.engine.backends import load_backend

    monkeypatch.setenv("AM_TEST_API_KEY", vllm.api_key)
    backend = load_backend(served_settings(vllm.url, api_key_env="AM_TEST_API_KEY", timeout=120))
    yield backend
    backend.close()


def ask(window, questions=QUESTIONS, texts=()) -> Request:
    return Request(window, tuple(Question(f"q{i}", q) for i, q in enumerate(questions)), tuple(texts))


# ---------------------------------------------------------------------------- settings


def test_backend_openai_needs_url_and_name_with_file_and_line(tmp_path):
    from monitor.config import load_config
    from monitor.yamlsource import ValidationFailed

    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "home.yaml").touch()
    path = tmp_path / "c.yaml"
    path.write_text("node_id: sat\nmodel:\n  backend: openai\n  url: http://gpu-box:8000/v1\n")
    with pytest.raises(ValidationFailed) as info:
        load_config(path)
    assert f"{path}:2: model: backend: openai needs model.name" in str(info.value)
    path.write_text("model:\n  backend: openai\n  url: http://gpu-box:8000/v1\n  name: qwen\n"
                    "  api_key_file: key\n  api_key_env: KEY\n")
    with pytest.raises(ValidationFailed, match="either api_key_file or api_key_env"):
        load_config(path)
    path.write_text("model:\n  backend: openai\n  url: gpu-box:8000\n  name: qwen\n")
    with pytest.raises(ValidationFailed, match=f"{path}:3: model.url"):
        load_config(path)
    path.write_text("model:\n  backend: openai\n  url: https://gpu-box/v1\n  name: qwen\n  timeout: 5s\n  concurrency: 4\n")
    model = load_config(path).model
    assert (model.backend, model.url, model.name, model.timeout, model.concurrency) == (
        "openai", "https://gpu-box/v1", "qwen", 5.0, 4)


# ---------------------------------------------------------------------------- a scripted server (no vLLM)


def _by_question(body: dict) -> str:
    return body["messages"][-1]["content"][1]["text"]


def test_exact_scoring_request_shape(monkeypatch):
    """Audio first, then the question; max_tokens 1, temperature 0, the yes/no ids allowed and all returned."""
    def chat(body):
        if body.get("max_tokens") != 1:
            return 200, {"choices": [{"message": {"content": " a dog "}}]}, 0.0
        top = [("token_id:12", math.log(0.6)), ("token_id:13", math.log(0.1)), ("token_id:22", math.log(0.3))]
        return 200, logprobs_answer(top), 0.0

    fake = FakeServer(chat)
    from monitor.engine.served import ServedModel

    try:
        backend = ServedModel.load(served_settings(fake.url, "fake", timeout=5, system_prompt="Listen."))
        assert backend.scoring.mode == "exact"
        assert sorted(backend.yes_ids) == [11, 12, 13] and sorted(backend.no_ids) == [21, 22, 23]
        audio = noise(1.5, 0.2, seed=4)
        window = make_window(audio, seq=7, start=16000)
        backend.calibrate(["Is it?"], 1.5)  # first: the last "Is it?" the server sees is then about the window
        (result,) = backend.answer([ask(window, ["Is it?"], [TextTask("t", "Say it.", 16000, 40000, 5)])])
        assert result.error is None, result.error
        score = result.scores["q0"]
        assert score.score == pytest.approx(0.7) and score.mass is None and score.baseline == pytest.approx(0.7)
        assert result.texts[0].text == "a dog" and (result.texts[0].start, result.texts[0].end) == (16000, 40000)
        yes_no = [b for b in fake.chats() if b["max_tokens"] == 1 and _by_question(b) == "Is it?"][-1]
        assert yes_no["temperature"] == 0 and yes_no["logprobs"] is True and yes_no["top_logprobs"] == 6
        assert yes_no["allowed_token_ids"] == [11, 12, 13, 21, 22, 23]
        system, user = yes_no["messages"]
        assert system == {"role": "system", "content": "Listen."}
        assert [part["type"] for part in user["content"]] == ["input_audio", "text"]
        sent, rate = sf.read(io.BytesIO(base64.b64decode(user["content"][0]["input_audio"]["data"])), dtype="float32")
        assert rate == 16000 and np.array_equal(sent, audio)  # float WAV: the very samples
        text = [b for b in fake.chats() if b["max_tokens"] != 1][-1]
        assert text["max_tokens"] == 5 and text["temperature"] == 0
        clip, _ = sf.read(io.BytesIO(base64.b64decode(text["messages"][-1]["content"][0]["input_audio"]["data"])),
                          dtype="float32")
        assert np.array_equal(clip, audio[: 40000 - 16000])
        backend.close()
    finally:
        fake.close()


def test_fallback_scores_from_the_top_answers_and_unknown_is_not_a_score(caplog):
    """A server that does not renormalise (raw logprobs) and allows 20: the top answers decide; none = unknown."""
    def chat(body):
        if "allowed_token_ids" in body:  # raw mode: restricted, yet not renormalised
            return 200, logprobs_answer([("token_id:12", math.log(0.2)), ("token_id:22", math.log(0.1))]), 0.0
        if _by_question(body) == "none?":
            return 200, logprobs_answer([("token_id:99", math.log(0.9)), ("token_id:98", math.log(0.05))]), 0.0
        return 200, logprobs_answer([("token_id:99", math.log(0.5)), ("token_id:12", math.log(0.25)),
                                     ("token_id:13", math.log(0.05)), ("token_id:22", math.log(0.1))]), 0.0

    fake = FakeServer(chat, max_logprobs=20)
    from monitor.engine.served import ServedModel, Scoring

    try:
        with caplog.at_level(logging.INFO):
            backend = ServedModel.load(served_settings(fake.url, "fake", timeout=5))
        assert backend.scoring == Scoring("top", 20, True)
        assert "--logprobs-mode processed_logprobs" in caplog.text
        (result,) = backend.answer([ask(make_window(noise(2, 0.1)), ["yes?", "none?"])])
        assert result.error is None
        assert result.scores["q0"].score == pytest.approx(0.3 / 0.4) and result.scores["q0"].mass == pytest.approx(0.4)
        assert "q1" not in result.scores and backend.unknown == 1  # unknown: left out, never 0
        assert backend.baselines["none?"] == 0.5 and "neither yes nor no" in caplog.text
        backend.close()
    finally:
        fake.close()


def test_failures_fail_the_window_alone_back_off_and_recover(monkeypatch, caplog):
    secret = "sk-very-secret-" + "7" * 12
    monkeypatch.setenv("AM_FAKE_KEY", secret)
    mode = {"now": "ok"}

    def chat(body):
        if _by_question(body) == "bad":
            return 400, {"error": {"message": "audio is too short"}}, 0.0
        if mode["now"] == "503":
            return 503, {"error": {"message": "overloaded"}}, 0.0
        delay = 3.0 if mode["now"] == "slow" else 0.0
        return 200, logprobs_answer([("token_id:11", math.log(0.5)), ("token_id:21", math.log(0.5))]), delay

    fake = FakeServer(chat, api_key=secret)
    from monitor.engine.served import ServedModel

    try:
        caplog.set_level(logging.DEBUG)
        backend = ServedModel.load(served_settings(fake.url, "fake", timeout=1.0, api_key_env="AM_FAKE_KEY"))
        assert all(h.get("Authorization") == f"Bearer {secret}" for p, h, _ in fake.seen if p.startswith("/v1/"))
        good, bad = make_window(noise(1, 0.1), seq=1), make_window(noise(1, 0.1), seq=2)
        backend.calibrate(["ok?"], 1.0)
        # a window the server refuses fails alone; the other window of the batch is answered
        first, second = backend.answer([ask(bad, ["bad"]), ask(good, ["ok?"])])
        assert first.error is not None and "400" in first.error and "too short" in first.error and not first.scores
        assert second.error is None and second.scores["q0"].score == pytest.approx(0.5)
        # the server fails: that window fails, then the next fails at once without a request
        mode["now"] = "503"
        (down,) = backend.answer([ask(good, ["ok?"])])
        assert down.error is not None and "503" in down.error
        sent = len(fake.chats())
        started = time.monotonic()
        (fast,) = backend.answer([ask(good, ["ok?"])])
        assert "unavailable" in fast.error and len(fake.chats()) == sent and time.monotonic() - started < 0.2
        # back: answers resume by themselves once the pause is over
        mode["now"] = "ok"
        deadline = time.monotonic() + 10
        while (result := backend.answer([ask(good, ["ok?"])])[0]).error is not None:
            assert time.monotonic() < deadline, result.error
            time.sleep(0.1)
        assert "answers again" in caplog.text
        # a server that hangs: the batch returns within the timeout, and the next window does not wait again
        mode["now"] = "slow"
        started = time.monotonic()
        results = backend.answer([ask(good, ["ok?"]), ask(bad, ["ok?"])])
        assert time.monotonic() - started < 2.0 and all("within" in r.error for r in results)
        started = time.monotonic()
        (again,) = backend.answer([ask(good, ["ok?"])])
        assert again.error is not None and time.monotonic() - started < 0.2
        everything = caplog.text + " ".join(str(r.error) for r in (first, down, fast, *results, again))
        assert secret not in everything
        backend.close()
    finally:
        fake.close()


def test_load_failures_are_one_line_naming_what_to_fix(monkeypatch):
    from monitor.engine.served import ServedModel

    fake = FakeServer(lambda body: (200, logprobs_answer([("token_id:11", 0.0)]), 0.0), api_key="right-key")
    try:
        port = free_port()
        with pytest.raises(ModelLoadError) as info:
            ServedModel.load(served_settings(f"http://127.0.0.1:{port}/v1", "fake"))
        text = str(info.value)
        assert "\n" not in text and text.startswith(f"model.url: cannot reach http://127.0.0.1:{port}/v1 (")
        monkeypatch.setenv("AM_FAKE_KEY", "right-key")
        with pytest.raises(ModelLoadError, match=r"model.name qwen is not served at .*, which serves fake: set model.name"):
            ServedModel.load(served_settings(fake.url, "qwen", api_key_env="AM_FAKE_KEY"))
        monkeypatch.setenv("AM_FAKE_KEY", "wrong-key")
        with pytest.raises(ModelLoadError, match="refused the API key") as info:
            ServedModel.load(served_settings(fake.url, "fake", api_key_env="AM_FAKE_KEY"))
        assert "wrong-key" not in str(info.value)
        monkeypatch.delenv("AM_FAKE_KEY")
        with pytest.raises(ModelLoadError, match="model.api_key_env: the environment variable AM_FAKE_KEY is not set"):
            ServedModel.load(served_settings(fake.url, "fake", api_key_env="AM_FAKE_KEY"))
    finally:
        fake.close()


def test_https_with_a_ca_of_ones_own(tmp_path):
    from monitor.engine.served import ServedModel

    ca, cert, key = make_ca(tmp_path / "pki")
    fake = FakeServer(lambda body: (200, logprobs_answer([("token_id:11", math.log(0.8)), ("token_id:21", math.log(0.2))]),
                                    0.0), tls=(cert, key))
    try:
        assert fake.url.startswith("https://")
        with pytest.raises(ModelLoadError, match="CERTIFICATE_VERIFY_FAILED.*set model.ca_file"):
            ServedModel.load(served_settings(fake.url, "fake"))
        with pytest.raises(ModelLoadError, match="model.ca_file .*nope.pem: cannot load it"):
            ServedModel.load(served_settings(fake.url, "fake", ca_file=tmp_path / "nope.pem"))
        backend = ServedModel.load(served_settings(fake.url, "fake", ca_file=ca))
        (result,) = backend.answer([ask(make_window(noise(1, 0.1)), ["ok?"])])
        assert result.error is None and result.scores["q0"].score == pytest.approx(0.8)
        backend.close()
    finally:
        fake.close()


# ---------------------------------------------------------------------------- a real vLLM


def test_served_answer_tokens_are_the_local_tokenizers(served, local_engine):
    from monitor.engine.local.answers import yes_no_token_ids

    yes, no = yes_no_token_ids(local_engine.tokenizer)
    assert sorted(served.yes_ids) == yes and sorted(served.no_ids) == no
    assert served.scoring.mode == "exact"


def test_served_scores_equal_the_local_engine(served, local_engine):
    """Same checkpoint, same windows (1-30 s, and past 30 s), same questions: the same scores and baselines."""
    windows = [make_window(noise(1.0, 0.1, seed=1), seq=0), make_window(tone(4.5, 330.0) + noise(4.5, 0.02, seed=2), seq=1),
               make_window(noise(12.0, 0.3, seed=3), seq=2), make_window(noise(30.0, 0.05, seed=4), seq=3),
               make_window(noise(31.0, 0.05, seed=5), seq=4)]
    texts = [(TextTask("say", "What is being said? Write down the words exactly.", w.start, w.end, 6),) for w in windows]
    served.calibrate(QUESTIONS, 2.0)
    local_engine.calibrate(QUESTIONS, 2.0)
    got = served.answer([ask(w, texts=t) for w, t in zip(windows, texts)])
    want = local_engine.answer([ask(w, texts=t) for w, t in zip(windows, texts)])
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        assert g.error is None and w.error is None, (g.error, w.error)
        assert g.scores.keys() == w.scores.keys() == {"q0", "q1", "q2"}
        for key in w.scores:
            worst = max(worst, abs(g.scores[key].score - w.scores[key].score),
                        abs(g.scores[key].baseline - w.scores[key].baseline))
        assert [t.key for t in g.texts] == ["say"] and isinstance(g.texts[0].text, str)
    print(f"largest difference from the local engine: {worst:.2e}")
    assert worst < 1e-3, worst
    spread = [r.scores[k].score for r in got for k in r.scores]
    assert max(spread) - min(spread) > 0.05  # the comparison is about scores that differ


def test_served_top_answers_fallback_matches_the_local_distribution(served, local_engine):
    """Forced to the fallback, yes/no tokens among vLLM's top 20 give the local model's own probabilities."""
    import torch

    from monitor.engine.served import Scoring

    served.scoring = Scoring("top", 20, True)
    audio = noise(3.0, 0.2, seed=9)
    (result,) = served.answer([ask(make_window(audio))])
    assert result.error is None
    for i, prompt in enumerate(QUESTIONS):
        with torch.inference_mode():
            logits = local_engine.model(**local_engine._plain_inputs(audio, prompt), use_cache=False).logits[0, -1]
        logp = torch.log_softmax(logits.float(), -1)
        top = set(torch.topk(logp, 20).indices.tolist())
        p_yes = sum(math.exp(float(logp[t])) for t in top & served.yes_ids)
        p_no = sum(math.exp(float(logp[t])) for t in top & served.no_ids)
        if p_yes + p_no == 0:
            assert f"q{i}" not in result.scores
        else:
            assert result.scores[f"q{i}"].score == pytest.approx(p_yes / (p_yes + p_no), abs=1e-3)
            assert result.scores[f"q{i}"].mass == pytest.approx(p_yes + p_no, abs=1e-3)


def test_served_load_errors_name_the_served_models(vllm, monkeypatch):
    from monitor.engine.served import ServedModel

    monkeypatch.setenv("AM_TEST_API_KEY", vllm.api_key)
    with pytest.raises(ModelLoadError, match=f"model.name qwen2-audio is not served at {re.escape(vllm.url)}, "
                                             f"which serves {SERVED_NAME}"):
        ServedModel.load(served_settings(vllm.url, "qwen2-audio", api_key_env="AM_TEST_API_KEY"))
    monkeypatch.setenv("AM_TEST_API_KEY", "not-the-key")
    with pytest.raises(ModelLoadError, match="refused the API key"):
        ServedModel.load(served_settings(vllm.url, api_key_env="AM_TEST_API_KEY"))


def test_openai_backend_never_imports_torch_or_transformers(vllm):
    code = f"""
import os, sys
import numpy as np
from monitor.engine.api import Question, Request, TextTask
from monitor.engine.backends import load_backend
from monitor.engine.settings import ModelSettings
from monitor.testing.signals import make_window, noise
backend = load_backend(ModelSettings(backend="openai", url={vllm.url!r}, name={SERVED_NAME!r},
                                     api_key_env="AM_TEST_API_KEY", timeout=60))
window = make_window(noise(2.0, 0.1))
backend.calibrate(["Is a dog barking?"], 2.0)
(result,) = backend.answer([Request(window, (Question("dog", "Is a dog barking?"),),
                                    (TextTask("say", "What is said?", 0, window.end, 3),))])
assert result.error is None and "dog" in result.scores and result.texts, result
print(sorted(m for m in ("torch", "transformers", "tokenizers") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "AM_TEST_API_KEY": vllm.api_key})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _vllm_requests(server: VllmServer) -> float:
    """Requests the server has finished, by vLLM's own counter."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:request_success_total"))


def test_eval_with_backend_openai_is_answered_by_the_served_model(vllm, tmp_path):
    """`eval` loads the model `model.backend` names, as the daemon does: the server answers every window,
    no local model is looked for (model.path names nothing) and torch is never imported."""
    from tests.tuning_support import GATED_RULES, bursts_wav

    data = tmp_path / "data"
    bursts_wav(data / "loud" / "door.wav", 10, [(3, 6)], seed=1)  # ON at 4 s: detected
    bursts_wav(data / "negatives" / "evening.wav", 20, [(10, 12)], seed=2)  # ON at 11 s: a false alarm
    key_file = tmp_path / "api-key"
    key_file.write_text(vllm.api_key + "\n")
    key_file.chmod(0o600)
    config = write_config(tmp_path, tmp_path / "no-local-model", 1, rules=GATED_RULES,
                          extra={"model": {"backend": "openai", "url": vllm.url, "name": SERVED_NAME,
                                           "api_key_file": str(key_file), "timeout": "60s"}, "log.level": "info"})
    out = tmp_path / "out"
    code = ("import sys; from monitor.cli import main\n"
            f"code = main(['eval', {str(data)!r}, '-c', {str(config)!r}, '--out', {str(out)!r}, '-q'])\n"
            "print('imported:', sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
            "sys.exit(code)\n")
    before = _vllm_requests(vllm)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and vllm.api_key not in proc.stderr + proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "imported: []"
    # 9 + 19 windows, each asking at least `lifted` (ungated): every answer came from the server
    assert _vllm_requests(vllm) - before >= 28
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == f"{SERVED_NAME} served at {vllm.url}"
    assert [r["windows"] for r in report["recordings"]] == [9, 19] and all(r["failed"] == 0 for r in report["recordings"])
    loud = report["rules"]["loud"]["current"]
    assert (loud["intervals"], loud["detected"], loud["on_events"], loud["false_alarms"]) == (1, 1, 2, 1)


def _metric(port: str, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.search(rf'^audio_monitor_{name}{{source="test_node"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_daemon_on_a_served_model_survives_the_server_going_away(vllm, broker, subscriber_factory, tmp_path):
    """A satellite daemon: rule state and event through vLLM; the server gone for 12 s; answers resume."""
    rate = 16000
    rng = np.random.default_rng(3)
    loud = lambda s: (rng.standard_normal(int(s * rate)) * 0.1).astype(np.float32)  # noqa: E731
    sf.write(tmp_path / "room.wav", np.concatenate([loud(40), np.zeros(5 * rate, np.float32), loud(12)]), rate)
    key_file = tmp_path / "api-key"
    key_file.write_text(vllm.api_key + "\n")
    key_file.chmod(0o600)
    gate = Gate(vllm.port)
    config = write_config(tmp_path, tmp_path, broker.port, source=f"file:{tmp_path / 'room.wav'}", rules=LOUD_RULES,
                          extra={"model": {"backend": "openai", "url": gate.url, "name": SERVED_NAME,
                                           "api_key_file": str(key_file), "timeout": "5s"}})
    sub = subscriber_factory(broker, "am/#")
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log("listening:", timeout=60)
        port = re.search(r"metrics on http://127.0.0.1:(\d+)/metrics", daemon.wait_log("metrics on")).group(1)
        sub.wait_for(lambda t, p, r: t == "am/test_node/loud/event" and json.loads(p)["kind"] == "on", timeout=20)
        sub.wait_for(lambda t, p, r: t == "am/test_node/loud/state" and p == b"ON")
        maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
        assert "libtorch" not in maps and "transformers" not in maps  # a satellite: no torch in the process

        gate.down()  # the server "killed": connections reset, new ones refused
        down_at = time.monotonic()
        failed_before = _metric(port, "windows_failed_total")
        lags = []
        while time.monotonic() - down_at < 12:
            time.sleep(1)
            lags.append(_metric(port, "lag_seconds"))
            assert daemon.proc.poll() is None, daemon.output
        failed = _metric(port, "windows_failed_total") - failed_before
        assert failed >= 8, failed  # every loud window asked, and failed, about once a second
        assert max(lags) < 4, lags  # capture never waited for the server
        gate.up()
        up_at = time.monotonic()
        answered = _metric(port, "windows_processed_total") - _metric(port, "windows_failed_total")
        while _metric(port, "windows_processed_total") - _metric(port, "windows_failed_total") < answered + 3:
            assert time.monotonic() - up_at < 20, daemon.output[-3000:]
            time.sleep(0.5)
        stuck = _metric(port, "windows_failed_total")
        sub.wait_for(lambda t, p, r: t == "am/test_node/info" and json.loads(p).get("failed", 0) >= 8, timeout=15)
        # the rule works again end to end: OFF in the silence, ON again when the noise returns
        ons = lambda: [e for e in events_of(sub.messages) if e["kind"] == "on"]  # noqa: E731
        sub.wait_for(lambda t, p, r: t == "am/test_node/loud/event" and json.loads(p)["kind"] == "off", timeout=30)
        deadline = time.monotonic() + 20
        while len(ons()) < 2:
            assert time.monotonic() < deadline, daemon.output[-3000:]
            time.sleep(0.2)
        assert _metric(port, "windows_failed_total") == stuck  # nothing failed once the server was back
    finally:
        code = daemon.stop()
        gate.close()
    assert code == 0, daemon.output[-3000:]
    assert "Traceback" not in daemon.output
    assert vllm.api_key not in daemon.output
    assert all(vllm.api_key.encode() not in payload for _, payload, _ in sub.messages)
    assert "failing requests at once" in daemon.output and "answers again" in daemon.output


def test_a_served_model_that_stops_answering_is_model_failed_until_it_answers_again(vllm, broker, subscriber_factory,
                                                                                    tmp_path):
    """vLLM stopped (SIGSTOP: it says nothing) for 30 s (3x `model.failure_timeout`), then continued: the rule that was ON turns OFF with
    `reason: model_failed` once the windows have failed for `model.failure_timeout`; the Model problem sensor,
    the status, STATUS= and the metric say so; when answers return the room recovers by itself."""
    rate = 16000
    rng = np.random.default_rng(5)
    sf.write(tmp_path / "room.wav", (rng.standard_normal(240 * rate) * 0.1).astype(np.float32), rate)
    key_file = tmp_path / "api-key"
    key_file.write_text(vllm.api_key + "\n")
    key_file.chmod(0o600)
    config = write_config(tmp_path, tmp_path, broker.port, source=f"file:{tmp_path / 'room.wav'}", rules=LOUD_RULES,
                          extra={"model": {"backend": "openai", "url": vllm.url, "name": SERVED_NAME,
                                           "api_key_file": str(key_file), "timeout": "5s", "failure_timeout": "10s"}})
    notify = NotifySocket(tmp_path / "notify.sock")
    sub = subscriber_factory(broker, ["am/#", "homeassistant/#"])
    daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": notify.path})

    def model_problem(problem: str, after: int = 0, timeout: float = 60.0) -> tuple[int, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, (t, p, _) in enumerate(list(sub.messages)[after:], start=after):
                if t == "am/test_node/model" and json.loads(p)["problem"] == problem:
                    return i, json.loads(p)
            time.sleep(0.1)
        raise TimeoutError(f"no Model problem {problem}:\n{daemon.output[-3000:]}")

    def status(state: str, timeout: float = 30.0) -> dict:
        found = sub.wait_for(lambda t, p, r: t == "am/test_node/info" and json.loads(p)["state"] == state, timeout=timeout)
        return json.loads(found[1])

    stopped = False
    try:
        daemon.wait_log("listening:", timeout=90)
        port = re.search(r"metrics on http://127.0.0.1:(\d+)/metrics", daemon.wait_log("metrics on")).group(1)
        discovery = json.loads(sub.wait_for(lambda t, p, r: t == "homeassistant/device/test_node/config")[1])
        sensor = discovery["cmps"]["model"]  # Home Assistant's Model problem sensor
        assert sensor["device_class"] == "problem" and sensor["state_topic"] == "am/test_node/model"
        model_problem("OFF")
        sub.wait_for(lambda t, p, r: t == "am/test_node/loud/state" and p == b"ON", timeout=30)
        assert _metric(port, "model_ok") == 1.0

        os.killpg(vllm.proc.pid, signal.SIGSTOP)  # the server stops answering
        stopped, stopped_at = True, time.monotonic()
        off = json.loads(sub.wait_for(lambda t, p, r: t == "am/test_node/loud/event" and json.loads(p)["kind"] == "off",
                                      timeout=60)[1])
        assert off["reason"] == "model_failed" and time.monotonic() - stopped_at >= 10
        assert sub.wait_for(lambda t, p, r: t == "am/test_node/loud/state" and p == b"OFF", timeout=5)
        i, problem = model_problem("ON")
        assert problem["reason"] == "model_failed" and "its windows failed for" in problem["detail"]
        info = status("model_failed")
        assert info["model"] == "model_failed" and info["hearing"] == "ok" and info["failed"] >= 5
        assert _metric(port, "model_ok") == 0.0
        notify.wait("STATUS=model failed (its windows failed for", timeout=20)
        daemon.wait_log("model failed: its windows failed for")
        while time.monotonic() - stopped_at < 30:  # stopped for 3x the failure timeout: nothing turns ON, it carries on
            assert daemon.proc.poll() is None, daemon.output[-3000:]
            time.sleep(1)
        os.killpg(vllm.proc.pid, signal.SIGCONT)
        stopped = False

        model_problem("OFF", after=i, timeout=90)  # answers return: the room recovers by itself
        daemon.wait_log("the model answers again")
        sub.wait_for(lambda t, p, r: t == "am/test_node/loud/state" and p == b"ON" and
                     len([e for e in events_of(sub.messages) if e["kind"] == "on"]) >= 2, timeout=30)
        assert status("listening")["model"] == "ok"
        assert _metric(port, "model_ok") == 1.0
    finally:
        if stopped:
            os.killpg(vllm.proc.pid, signal.SIGCONT)
        code = daemon.stop()
        notify.close()
        print(daemon.output)  # shown when the test fails
    assert code == 0, daemon.output[-3000:]
    assert "Traceback" not in daemon.output and vllm.api_key not in daemon.output
    kinds = [(e["kind"], e.get("reason")) for e in events_of(sub.messages)]
    assert kinds[:3] == [("on", None), ("off", "model_failed"), ("on", None)], kinds


# ---------------------------------------------------------------------------- a satellite's install


SATELLITE = REPO / ".venv-satellite"


def satellite(program: str = "audio-monitor") -> str:
    """A program of the satellite's environment: the package installed without extras, as
    docs/served.md installs a satellite (`make test` makes it)."""
    path = SATELLITE / "bin" / program
    need(path.exists(), "the satellite environment .venv-satellite (`make test` creates it)")
    return str(path)


def satellite_packages() -> list[str]:
    """Which of the model stack's and the base install's packages the satellite's Python can import."""
    code = ("import importlib.util as u, json, monitor\n"
            "print(monitor.__file__)\n"
            "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'tokenizers', 'matplotlib', 'tqdm', 'httpx', "
            "'starlette', 'uvicorn', 'paho') if u.find_spec(m))))\n")
    out = subprocess.run([satellite("python"), "-c", code], cwd="/", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    where, found = out.stdout.strip().splitlines()
    assert Path(where) == REPO / "monitor" / "__init__.py"  # it runs this checkout (an editable install)
    return json.loads(found)


def test_a_satellite_install_lacks_the_model_stack_and_says_in_one_line_which_extra_brings_it(tmp_path):
    """No torch, transformers, tokenizers, matplotlib or tqdm; `backend: local` (the default) or `salmonn`
    is one line naming the extra, from `check` and from `run`; `replay` is one line naming [tuning]."""
    assert satellite_packages() == ["httpx", "paho", "starlette", "uvicorn"]
    config = write_config(tmp_path, tmp_path / "no-model", free_port(), extra={"log.level": "info"})
    want = ('model.backend: local runs the model in this process and needs torch and transformers, which this '
            'install lacks: pip install "audio-monitor[local]" (or backend: openai, to ask a model served elsewhere)')
    check = subprocess.run([satellite(), "check", "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 1 and check.stdout == ""
    assert check.stderr.splitlines() == [f"{config}:{_line_of(config, 'model:')}: {want}"], check.stderr
    run = subprocess.run([satellite(), "run", "-c", str(config)], capture_output=True, text=True, timeout=60)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 1 and len(lines) == 1 and lines[0].endswith(want) and " ERROR " in lines[0], run.stderr
    salmonn = subprocess.run([satellite(), "check", "-c", str(config), "--set", "model.backend=salmonn",
                              "--set", "model.salmonn.checkpoint=tsinghua-ee/SALMONN-7B:salmonn_7b_v0.pth",
                              "--set", f"model.salmonn.beats={tmp_path / 'beats.pt'}"],
                             capture_output=True, text=True, timeout=60)
    assert salmonn.returncode == 1 and salmonn.stderr.splitlines() == [
        '--set: model.backend: salmonn runs the model in this process and needs torch and transformers, which this '
        'install lacks: pip install "audio-monitor[salmonn]" (or backend: openai, to ask a model served elsewhere)']
    # replay and eval: the plots' packages are missing, said before any model is asked
    served = write_config(tmp_path, tmp_path, free_port(), extra={
        "log.level": "info", "model": {"backend": "openai", "url": f"http://127.0.0.1:{free_port()}/v1", "name": "m"}})
    sf.write(tmp_path / "a.wav", noise(3.0, 0.1), 16000)
    replay = subprocess.run([satellite(), "replay", str(tmp_path / "a.wav"), "-c", str(served), "--out",
                             str(tmp_path / "out"), "-q"], capture_output=True, text=True, timeout=60)
    lines = [line for line in replay.stderr.splitlines() if line.strip()]
    assert replay.returncode == 1 and replay.stdout == "" and len(lines) == 1, replay.stderr
    assert lines[0].endswith('ERROR   monitor.tuning.commands: replay: its plots and progress bars need matplotlib and '
                             'tqdm, which this install lacks: pip install "audio-monitor[tuning]"'), replay.stderr
    assert not (tmp_path / "out").exists()


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.startswith(text))


def test_a_satellite_install_runs_the_daemon_on_the_served_model(vllm, broker, subscriber_factory, tmp_path):
    """`audio-monitor run` from the satellite's environment, where torch and transformers are not even
    installed, with `backend: openai`: vLLM answers, the rule turns ON, its event and state reach MQTT."""
    program = satellite()
    assert not {"torch", "transformers"} & set(satellite_packages())
    rate = 16000
    rng = np.random.default_rng(11)
    sf.write(tmp_path / "room.wav", (rng.standard_normal(40 * rate) * 0.1).astype(np.float32), rate)
    key_file = tmp_path / "api-key"
    key_file.write_text(vllm.api_key + "\n")
    key_file.chmod(0o600)
    config = write_config(tmp_path, tmp_path, broker.port, source=f"file:{tmp_path / 'room.wav'}", rules=LOUD_RULES,
                          extra={"model": {"backend": "openai", "url": vllm.url, "name": SERVED_NAME,
                                           "api_key_file": str(key_file), "timeout": "30s"}})
    sub = subscriber_factory(broker, "am/#")
    daemon = DaemonProcess(config, program=(program,))
    try:
        daemon.wait_log("listening:", timeout=60)
        event = json.loads(sub.wait_for(lambda t, p, r: t == "am/test_node/loud/event" and json.loads(p)["kind"] == "on",
                                        timeout=60)[1])
        assert event["rule"] == "loud" and event["score"] is not None
        sub.wait_for(lambda t, p, r: t == "am/test_node/loud/state" and p == b"ON", timeout=10)
        assert Path(f"/proc/{daemon.proc.pid}/cmdline").read_bytes().split(b"\0")[1] == program.encode()
    finally:
        code = daemon.stop()
    assert code == 0, daemon.output[-3000:]
    assert "Traceback" not in daemon.output and vllm.api_key not in daemon.output
