"""Labels from where people are, against the real daemon (tiny model, a file of noise bursts paced in real time,
a real broker, the page in headless chromium): an alert marked right or a false alarm on the page or over MQTT,
"it missed something", and the labels that must not be saved (cross-site, muted, a clip already deleted)."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import REPO, Broker, Subscriber
from tests.daemon_support import LOUD_RULES, DaemonProcess, write_config
from tests.test_web import browser, bursts, open_page, playwright, wait_until, web_url  # noqa: F401 - fixtures

ROOM, RULE = "test_node", "loud"
QUESTION = "Does this recording contain any sound at all? Answer yes or no."


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_model_dir) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("labels-live")
    broker = Broker(tmp).start()
    wav = bursts(tmp / "bursts.wav", 300)
    config = write_config(tmp, tiny_model_dir, broker.port, source=f"file:{wav}", rules=LOUD_RULES,
                          extra={"windows.hop": "1s", "log.level": "info"})
    sub = Subscriber(broker.host, broker.port, "am/#")
    daemon = DaemonProcess(config)
    state = {"sub": sub, "tmp": tmp, "daemon": daemon, "config": config, "source": sf.read(wav, dtype="float32")[0],
             "labels": tmp / "state" / "labels" / ROOM / RULE, "outputs": []}
    try:
        state["url"] = web_url(daemon)
        daemon.wait_log("listening:", timeout=120)
        state["listening_since"] = time.monotonic()
        yield state
    finally:
        state["daemon"].stop()  # the one running now (the last test starts it again)
        sub.close()
        broker.stop()
    for output in [*state["outputs"], state["daemon"].output]:
        assert "Traceback" not in output, output


def post(url: str, body: dict, headers: dict | None = None) -> tuple[int, str]:
    host, port = re.match(r"http://([^:/]+):(\d+)/", url).groups()
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    conn.request("POST", "/api/label", body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json", **(headers if headers is not None else {"X-Audio-Monitor": "1"})})
    response = conn.getresponse()
    out = response.status, response.read().decode()
    conn.close()
    return out


def saved(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.wav") if not p.name.startswith("."))


def where_in(source: np.ndarray, audio: np.ndarray) -> int:
    """The one place of `source` that holds exactly `audio` (a noise burst is unique sample for sample)."""
    k = int(np.flatnonzero(audio)[0])
    hits = [int(i) - k for i in np.flatnonzero(source == audio[k])
            if int(i) >= k and np.array_equal(source[int(i) - k:int(i) - k + len(audio)], audio)]
    assert len(hits) == 1, f"{len(hits)} places in the source hold the label's audio"
    return hits[0]


def on_events(sub: Subscriber, after: int = 0) -> list[dict]:
    return [json.loads(p) for t, p, _ in list(sub.messages)[after:]
            if t == f"am/{ROOM}/{RULE}/event" and json.loads(p)["kind"] == "on" and json.loads(p).get("clip")]


def completed(clip: str | Path) -> None:
    """Wait for a clip's post-roll: 1 s pre-roll + a 2 s window + 1 s post-roll."""
    wait_until(lambda: sf.info(str(clip)).duration == 4.0, 10, f"the post-roll of {clip}")


def test_an_alert_labelled_on_the_page_and_over_mqtt_keeps_the_window_it_was_heard_in(browser, live):  # noqa: F811
    errors: list[str] = []
    page = open_page(browser, live["url"], errors)
    # the newest of two alerts (the first, at the file's start, has no pre-roll before it)
    page.wait_for_function("document.querySelectorAll('li.event.on button.label.wrong').length >= 2", timeout=30_000)
    item = page.query_selector("li.event.on button.label.wrong")
    li = item.evaluate_handle("b => b.closest('li')").as_element()
    event = li.get_attribute("data-id")
    clip = live["tmp"] / "state" / "clips" / li.query_selector("audio").get_attribute("src").rsplit("/", 1)[1]
    completed(clip)  # with its post-roll
    item.click()  # "false alarm"
    page.wait_for_selector(f'li[data-id="{event}"] .label-result[data-status="200"]', timeout=15_000)
    (wav,) = saved(live["labels"] / "negative")
    audio, rate = sf.read(wav, dtype="float32")
    heard, _ = sf.read(clip, dtype="float32")
    assert rate == 16_000 and np.array_equal(audio, heard)  # the clip: the window, its pre- and post-roll, sample for sample
    side = json.loads(wav.with_suffix(".json").read_text())
    assert (side["event"], side["verdict"], side["origin"], side["question"]) == (event, "negative", "page", QUESTION)
    assert side["model"] and isinstance(side["score"], float)
    assert side["window"] == {"start": 1.0, "end": 3.0} and side["duration"] == 4.0  # 1 s pre-roll, 2 s window, 1 s post
    # ... which is the source's audio at that place: 1 s before the window, the window, 1 s after it
    start = where_in(live["source"], audio)
    assert np.array_equal(live["source"][start:start + len(audio)], audio)

    # the same over MQTT ("right", from the phone) for another alert; a bad payload is one line and nothing more
    sub = live["sub"]
    others = lambda: [e for e in on_events(sub)[1:] if e["id"] != event]  # noqa: E731 - the first has no pre-roll
    wait_until(others, 30, "another alert")
    other = others()[-1]
    completed(other["clip"])
    client = sub.client
    client.publish(f"am/{ROOM}/{RULE}/set/label", b'{"event": "x", "verdict": "perhaps"}', qos=1).wait_for_publish(5)
    client.publish(f"am/{ROOM}/{RULE}/set/label", json.dumps({"event": other["id"], "verdict": "right"}),
                   qos=1).wait_for_publish(5)
    wait_until(lambda: saved(live["labels"] / "positive"), 15, "the label sent over MQTT")
    (wav,) = saved(live["labels"] / "positive")
    side = json.loads(wav.with_suffix(".json").read_text())
    assert (side["event"], side["verdict"], side["origin"]) == (other["id"], "positive", "mqtt")
    assert side["score"] == pytest.approx(other["score"], abs=1e-4)
    assert np.array_equal(sf.read(wav, dtype="float32")[0], sf.read(other["clip"], dtype="float32")[0])
    line = live["daemon"].wait_log("ignored label on am/test_node/loud/set/label", timeout=5)
    assert "verdict" in line and len([x for x in live["daemon"].lines if "ignored label" in x]) == 1

    # the page counts them per rule, with the threshold's hits on them (threshold 0: every score reaches it)
    labels = f"#labels-{ROOM}-{RULE}"
    wait_until(lambda: page.get_attribute(labels, "data-positive") == "1"
               and page.get_attribute(labels, "data-negative") == "1", 10, "the page's label counts")
    text = page.text_content(labels)
    assert "1 of 1 scored positives reach it (hits)" in text and "1 of 1 negatives reach it (false alarms)" in text
    assert not errors, errors
    page.context.close()


def test_it_missed_something_keeps_the_last_seconds_as_a_positive(browser, live):  # noqa: F811
    errors: list[str] = []
    page = open_page(browser, live["url"], errors)
    page.wait_for_selector(f"#missed-{ROOM}")
    time.sleep(max(0.0, live["listening_since"] + 6 - time.monotonic()))  # the ring holds 5 s (run alone too)
    before = set(saved(live["labels"]))
    page.fill(f"#missed-seconds-{ROOM}", "5")
    page.click(f"#missed-{ROOM}")
    page.wait_for_selector(f'#missed-result-{ROOM}[data-status="200"]', timeout=15_000)
    (wav,) = set(saved(live["labels"])) - before
    assert wav.parent.name == "positive" and wav.name.endswith("_missed.wav")
    audio, _ = sf.read(wav, dtype="float32")
    assert len(audio) == 5 * 16_000  # the ring holds 30 s
    start = where_in(live["source"], audio)  # the room's own audio, as captured
    assert np.array_equal(live["source"][start:start + len(audio)], audio)
    side = json.loads(wav.with_suffix(".json").read_text())
    assert side["event"] is None and side["score"] is None and side["question"] == QUESTION
    assert not errors, errors
    page.context.close()


def test_labels_that_must_not_be_saved_are_refused_and_save_nothing(live):
    url, folder = live["url"], live["labels"]
    sub = live["sub"]
    labelled = {json.loads(p.read_text())["event"] for p in folder.rglob("*.json")}
    fresh = lambda: [e for e in on_events(sub) if e["id"] not in labelled]  # noqa: E731
    wait_until(lambda: len(fresh()) >= 2, 60, "two alerts not labelled yet")
    first, gone = fresh()[-1], fresh()[-2]
    body = {"room": ROOM, "rule": RULE, "event": first["id"], "verdict": "wrong"}
    before = saved(folder)

    # another site's page (its Origin, or without the page's own header) cannot label
    assert post(url, body, {"Origin": "http://evil.example", "X-Audio-Monitor": "1"})[0] == 403
    assert post(url, body, {"Sec-Fetch-Site": "cross-site", "X-Audio-Monitor": "1"})[0] == 403
    assert post(url, body, {})[0] == 403
    assert post(url, {**body, "verdict": "maybe"})[0] == 400
    # an alert whose clip retention deleted: 410, said in one line, nothing else saved in its place
    Path(gone["clip"]).unlink()
    status, text = post(url, {**body, "event": gone["id"]})
    assert status == 410 and "is gone" in text and text.count("\n") == 1
    assert post(url, {**body, "event": "0" * 32})[0] == 404
    # muted: nothing is kept, neither an alert nor a miss
    sub.client.publish(f"am/{ROOM}/set/mute", b"ON", qos=1).wait_for_publish(5)
    live["daemon"].wait_log("muted: no questions asked", timeout=10)
    try:
        status, text = post(url, body)
        assert status == 409 and "muted" in text
        assert post(url, {"room": ROOM, "rule": RULE, "missed_seconds": 10})[0] == 409
    finally:
        sub.client.publish(f"am/{ROOM}/set/mute", b"OFF", qos=1).wait_for_publish(5)
    live["daemon"].wait_log("unmuted: listening again", timeout=10)
    assert saved(folder) == before
    status, _ = post(url, body)  # unmuted: the same label is saved
    assert status == 200 and len(saved(folder)) == len(before) + 1


def test_the_page_shows_the_last_comparison_written_where_compare_puts_it_by_default(live):
    """`audio-monitor compare` on the labels just made (tiny model) writes under state_dir/compare/ by default;
    the page's per-rule line names its best phrasing and AUC (from the next label on, or within 30 s)."""
    proc = subprocess.run([sys.executable, "-m", "monitor", "compare", RULE, "-c", str(live["tmp"] / "monitor.yaml"),
                           "-q", "--ask", "Is anything audible? Answer yes or no."],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((live["tmp"] / "state" / "compare" / ROOM / f"compare-{RULE}" / "report.json").read_text())
    assert post(live["url"], {"room": ROOM, "rule": RULE, "missed_seconds": 3})[0] == 200

    def shown() -> dict | None:
        state = json.loads(urllib.request.urlopen(live["url"] + "api/state", timeout=5).read())
        return state["rooms"][0]["labels"][RULE]["compare"]

    wait_until(lambda: shown() is not None, 10, "the comparison on the page")
    best = max(report["phrasings"], key=lambda p: p["auc"])
    assert shown()["best"]["ask"] == best["ask"] and shown()["best"]["auc"] == best["auc"]
    assert shown()["current_auc"] == report["phrasings"][0]["auc"]


def test_an_alert_from_before_a_restart_can_still_be_labelled(live):
    """A phone notification outlives the daemon that sent it: "right" pressed after a restart still finds the
    alert's clip, score and question (state_dir/recent-alerts.jsonl)."""
    sub, folder = live["sub"], live["labels"]
    labelled = {json.loads(p.read_text())["event"] for p in folder.rglob("*.json")}
    fresh = lambda: [e for e in on_events(sub) if e["id"] not in labelled and Path(e["clip"]).is_file()]  # noqa: E731
    wait_until(fresh, 60, "an alert not labelled yet")
    alert = fresh()[-1]
    live["daemon"].stop()
    live["outputs"].append(live["daemon"].output)
    live["daemon"] = DaemonProcess(live["config"])
    live["daemon"].wait_log("listening:", timeout=120)
    before = set(saved(folder))
    sub.client.publish(f"am/{ROOM}/{RULE}/set/label", json.dumps({"event": alert["id"], "verdict": "right"}),
                       qos=1).wait_for_publish(5)
    wait_until(lambda: set(saved(folder)) - before, 15, "the label of an alert from before the restart")
    (wav,) = set(saved(folder)) - before
    side = json.loads(wav.with_suffix(".json").read_text())
    assert (side["event"], side["verdict"], side["question"]) == (alert["id"], "positive", QUESTION)
    assert side["score"] == pytest.approx(alert["score"], abs=1e-4)
    assert np.array_equal(sf.read(wav, dtype="float32")[0], sf.read(alert["clip"], dtype="float32")[0])
