"""The labelled set on disk: saving a label (WAV + sidecar), refusals, the size cap, reading it back."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from monitor.labels.settings import LabelSettings
from monitor.labels.store import Label, LabelStore, counts, load_audio, read_labels, verdict_of
from tests.conftest import need

T0 = 1_796_000_000.0  # a fixed time: file names never depend on when the test runs


def _audio(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16_000)) * 0.1).astype(np.float32)


def _label(**kw) -> Label:
    base = {"room": "kitchen", "rule": "glass", "verdict": "negative", "audio": _audio(), "time": T0,
            "event": "1a2b3c4d-0000-4000-8000-000000000001", "question": "Is glass breaking? Answer yes or no.",
            "model": "tiny", "score": 0.8123456789, "window": (1.0, 3.0), "origin": "page"}
    return Label(**{**base, **kw})


def test_a_label_is_a_float_wav_equal_to_the_audio_and_a_sidecar(tmp_path):
    store = LabelStore(tmp_path / "labels", clock=lambda: T0 + 60)
    label = _label()
    saved = store.save(label)
    assert saved.ok and saved.reason == ""
    assert saved.wav.parent == tmp_path / "labels" / "kitchen" / "glass" / "negative"
    assert saved.wav.name.endswith("_1a2b3c4d.wav") and saved.sidecar == saved.wav.with_suffix(".json")
    audio, rate = sf.read(saved.wav, dtype="float32")
    assert rate == 16_000 and np.array_equal(audio, label.audio)  # the exact samples: scoring it again gives the same
    side = json.loads(saved.sidecar.read_text())
    assert side["event"] == label.event and side["question"] == label.question and side["model"] == "tiny"
    assert side["score"] == pytest.approx(0.812346) and side["window"] == {"start": 1.0, "end": 3.0}
    assert (side["room"], side["rule"], side["verdict"], side["origin"], side["format"]) == \
        ("kitchen", "glass", "negative", "page", 1)
    assert side["ts"] == T0 and side["duration"] == 3.0 and side["sample_rate"] == 16_000
    assert side["time"].startswith("20") and side["labelled_at"] != side["time"]
    assert not list(saved.wav.parent.glob(".*"))  # no partial files left


def test_reading_back_and_counting(tmp_path):
    store = LabelStore(tmp_path)
    store.save(_label(verdict="positive", event="e1", time=T0))
    store.save(_label(verdict="positive", event=None, window=None, time=T0 + 1, origin="mqtt"))  # it missed something
    store.save(_label(event="e3", time=T0 + 2, audio=_audio(2.0)))
    store.save(_label(room="porch", rule="dog", event="e4", time=T0 + 3))
    clips = read_labels(tmp_path)
    assert [(c.room, c.rule, c.verdict) for c in clips] == [("kitchen", "glass", "positive")] * 2 + \
        [("kitchen", "glass", "negative"), ("porch", "dog", "negative")]
    assert clips[1].path.name.endswith("_missed.wav") and clips[1].window is None
    assert clips[0].window == (1.0, 3.0) and clips[2].duration == 2.0 and clips[0].info["event"] == "e1"
    assert clips[0].name == f"kitchen/glass/positive/{clips[0].path.name}"
    assert [c.room for c in read_labels(tmp_path, room="porch")] == ["porch"]
    assert read_labels(tmp_path, room="attic") == [] and read_labels(tmp_path / "none") == []
    assert counts(tmp_path, "kitchen") == {"glass": {"positive": 2, "negative": 1}}
    assert np.array_equal(load_audio(clips[0], 1.0, 2.0), _audio()[16_000:32_000])


def test_a_hand_added_clip_without_a_sidecar_and_another_rate_counts(tmp_path):
    folder = tmp_path / "kitchen" / "glass" / "positive"
    folder.mkdir(parents=True)
    sf.write(folder / "mine.wav", np.zeros((44_100, 2), dtype=np.float32), 44_100)
    (folder / "broken.wav").write_bytes(b"not audio")
    (folder / "mine.json").write_text("{not json")
    clips = read_labels(tmp_path)
    assert [c.path.name for c in clips] == ["mine.wav"] and clips[0].info == {} and clips[0].sample_rate == 44_100
    assert abs(len(load_audio(clips[0])) - 16_000) <= 1


@pytest.mark.parametrize("kw, muted, kind, why", [
    ({}, True, "yes_no", "room kitchen is muted"),
    ({}, False, "text", "a text rule, whose audio is speech"),
    ({}, False, "match", "a match rule"),
    ({"room": "../etc"}, False, "yes_no", "room '../etc' is not an id"),
    ({"verdict": "right"}, False, "yes_no", "verdict 'right' is not one of positive, negative"),
    ({"audio": np.zeros(0, dtype=np.float32)}, False, "yes_no", "no audio"),
])
def test_refusals_save_nothing_and_say_why(tmp_path, kw, muted, kind, why):
    saved = LabelStore(tmp_path).save(_label(**kw), muted=muted, rule_kind=kind)
    assert not saved.ok and why in saved.reason and saved.reason.startswith("label not saved: ")
    assert "\n" not in saved.reason
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_the_answers_people_press():
    assert [verdict_of(a) for a in ("right", "wrong", "missed", "positive", "negative", "maybe")] == \
        ["positive", "negative", "positive", "positive", "negative", None]


def test_labelling_an_event_again_replaces_its_earlier_label(tmp_path):
    store = LabelStore(tmp_path)
    first = store.save(_label(verdict="positive"))
    other = store.save(_label(verdict="positive", event="1a2b3c4d-ffff", time=T0))  # same 8 chars, another event
    again = store.save(_label(verdict="negative"))
    assert again.ok and again.replaced == 1
    assert not first.wav.exists() and not first.sidecar.exists() and other.wav.exists()
    assert [(c.verdict, c.info["event"]) for c in read_labels(tmp_path)] == \
        [("positive", "1a2b3c4d-ffff"), ("negative", _label().event)]
    # an id with other characters than letters and digits: its file name keeps only those, and it is found again
    first = store.save(_label(event="k-9/x", room="porch"))
    assert first.wav.name.endswith("_k9x.wav") and store.save(_label(event="k-9/x", room="porch")).replaced == 1


def test_the_size_cap_deletes_the_oldest_first_never_the_new_one(tmp_path):
    one = 3 * 16_000 * 4 + 1000  # a 3 s float clip and its sidecar, about
    store = LabelStore(tmp_path, LabelSettings(max_mb=2.5 * one / (1024 * 1024)))
    paths = []
    for i in range(4):
        saved = store.save(_label(event=f"e{i}", time=T0 + i))
        os.utime(saved.wav, (T0 + i, T0 + i))  # mtimes in label order, whatever the file system's resolution
        paths.append(saved)
    assert [p.wav.exists() for p in paths] == [False, False, True, True]
    assert not paths[0].sidecar.exists() and paths[3].pruned == 1
    # a cap smaller than one clip still keeps the label just saved
    tiny = LabelStore(tmp_path / "t", LabelSettings(max_mb=0.001))
    assert tiny.save(_label()).wav.exists()


def test_a_full_disk_loses_no_label_already_kept(tmp_path):
    """A real full file system (tmpfs): one line, nothing half-written, the earlier labels intact."""
    need(os.geteuid() == 0 and subprocess.run(["which", "mount"], capture_output=True).returncode == 0,
         "root and mount (a small tmpfs that fills up)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], check=True)
    try:
        store = LabelStore(mnt)
        kept = store.save(_label(event="e0", audio=_audio(2.0)))  # 128 kB
        assert kept.ok
        before = kept.wav.read_bytes()
        saved = store.save(_label(event="e1", time=T0 + 1, audio=_audio(10.0)))  # 640 kB: does not fit
        assert not saved.ok and "No space left on device" in saved.reason and "\n" not in saved.reason
        assert kept.wav.read_bytes() == before and kept.sidecar.exists()
        assert sorted(p.name for p in mnt.rglob("*") if p.is_file()) == sorted([kept.wav.name, kept.sidecar.name])
        # relabelling the kept event while the disk is full keeps the old verdict rather than losing both
        again = store.save(_label(event="e0", verdict="positive", audio=_audio(10.0)))
        assert not again.ok and kept.wav.exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
