"""The alerts a label may name, kept across restarts (monitor.labels.recent): real files in a temporary state_dir."""

from __future__ import annotations

import json
import logging

from monitor.labels.recent import FILE, Heard, RecentAlerts


def heard(i: int, room: str = "kitchen") -> Heard:
    return Heard(f"event-{i}", room, "fall", 1_790_000_000.0 + i, f"/state/clips/{room}/{i}.wav", 0.5 + i / 1000,
                 "Did someone fall? Answer yes or no.", 8.0)


def test_an_alert_is_known_after_a_restart_and_only_the_newest_are_kept(tmp_path):
    alerts = RecentAlerts(tmp_path, limit=5)
    for i in range(8):
        alerts.add(heard(i))
    alerts.close()
    again = RecentAlerts(tmp_path, limit=5)  # the daemon started again
    assert len(again) == 5
    assert again.get("event-2") is None and again.get("event-7") == heard(7)
    assert again.get("event-3") == heard(3)  # every field as it was: the clip, the score, the question, the window


def test_the_file_is_rewritten_with_the_newest_when_it_holds_twice_the_limit(tmp_path):
    alerts = RecentAlerts(tmp_path, limit=3)
    for i in range(6):
        alerts.add(heard(i))
    assert len((tmp_path / FILE).read_text().splitlines()) == 6
    alerts.add(heard(6))  # the seventh line would pass 2 x 3: rewritten with the newest 3
    lines = [json.loads(line) for line in (tmp_path / FILE).read_text().splitlines()]
    assert [line["event"] for line in lines] == ["event-4", "event-5", "event-6"]
    alerts.add(heard(7))  # and appended to again
    alerts.close()
    assert [h for h in (RecentAlerts(tmp_path, limit=3).get(f"event-{i}") for i in range(8)) if h] == \
        [heard(5), heard(6), heard(7)]
    assert not (tmp_path / (FILE + ".part")).exists()


def test_lines_cut_short_by_a_crash_or_not_alerts_are_skipped_and_said_once(tmp_path, caplog):
    alerts = RecentAlerts(tmp_path)
    alerts.add(heard(1))
    alerts.add(heard(2))
    alerts.close()
    with open(tmp_path / FILE, "a") as f:
        f.write('{"event": "event-4", "room": "kitchen", "rule": "fall", "time": "yesterday", "window_s": 8}\n')  # by hand
        f.write('["not", "an", "alert"]\n')
        f.write('{"event": "event-3", "room": "kitch')  # the power went mid-line
    with caplog.at_level(logging.WARNING, logger="monitor.labels.recent"):
        again = RecentAlerts(tmp_path)
    assert again.get("event-1") == heard(1) and again.get("event-2") == heard(2)
    assert again.get("event-3") is None and again.get("event-4") is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "skipped 3 unreadable line" in warnings[0] and str(tmp_path / FILE) in warnings[0]


def test_an_unwritable_state_dir_is_said_once_and_the_alerts_are_still_known_until_the_end(tmp_path, caplog):
    folder = tmp_path / "state"
    folder.mkdir()
    (folder / FILE).mkdir()  # a folder where the file should be: open() fails, as on a read-only or full disk
    with caplog.at_level(logging.INFO, logger="monitor.labels.recent"):
        alerts = RecentAlerts(folder)
        for i in range(3):
            alerts.add(heard(i))
        assert all(alerts.get(f"event-{i}") == heard(i) for i in range(3))
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "cannot write" in errors[0] and "not full" in errors[0]
        (folder / FILE).rmdir()  # room again: the next alert is written, and that is said
        alerts.add(heard(3))
        alerts.close()
    assert any("written again" in r.getMessage() for r in caplog.records)
    assert RecentAlerts(folder).get("event-3") == heard(3)
