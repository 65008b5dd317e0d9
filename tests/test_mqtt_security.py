"""Login and TLS against a real mosquitto, with credentials and a CA made here by openssl."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import pytest
from conftest import free_port, need_tool, wait_port
from helpers.mqtt_clients import Recorder, wait_for

from monitor.events import Event
from monitor.publish.client import PublisherError
from monitor.publish.publisher import Publisher
from monitor.publish.settings import MqttSettings

NODE = "hall"
EVENT_TOPIC = f"audio-monitor/{NODE}/fall/event"


def event(ident: str) -> Event:
    now = time.time()
    return Event(rule_id="fall", rule_name="Fall", kind="on", ts=now, window_start=now - 8, window_end=now,
                 score=0.9, id=ident)


def errors_from_publisher(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("monitor.publish") and r.levelno >= logging.WARNING and "lost the connection" not in r.getMessage()]


@pytest.fixture
def publishers():
    """Publisher factory; whatever a test leaves running is stopped after it."""
    made: list[Publisher] = []

    def factory(*args, **kw) -> Publisher:
        made.append(Publisher(*args, **kw))
        return made[-1]

    yield factory
    for p in made:
        p.stop(timeout=1)


def readable(path: Path) -> Path:
    """mosquitto started as root drops to its own user; let it read what the test made."""
    path.chmod(0o644)
    for parent in path.parents:
        if parent == Path("/tmp") or parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o755)
    return path


# ---------------------------------------------------------------------------- user name and password


@pytest.fixture
def password_broker(make_broker, tmp_path: Path):
    tool = need_tool("mosquitto_passwd")
    pwfile = tmp_path / "passwd"
    subprocess.run([tool, "-b", "-c", str(pwfile), "monitor", "right-secret"], check=True, capture_output=True)
    subprocess.run([tool, "-b", str(pwfile), "hub", "hub-secret"], check=True, capture_output=True)
    readable(pwfile)
    return make_broker(f"allow_anonymous false\npassword_file {pwfile}\n")


def test_password_from_file_and_env(password_broker, publishers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = password_broker
    rec = Recorder(b.host, b.port, EVENT_TOPIC, username="hub", password="hub-secret")
    try:
        pw = tmp_path / "mqtt.pw"
        pw.write_text("right-secret\n")
        pub = publishers(MqttSettings(host=b.host, port=b.port, username="monitor", password_file=pw), NODE, "Hall",
                        tmp_path / "s1")
        pub.start()
        pub.publish_event(event("via-file"))
        rec.wait_until(lambda m: any(b"via-file" in p for _, p, _ in m), what="event via password_file")
        pub.stop()

        monkeypatch.setenv("AM_MQTT_PASSWORD", "right-secret")
        pub = publishers(MqttSettings(host=b.host, port=b.port, username="monitor", password_env="AM_MQTT_PASSWORD"),
                        NODE, "Hall", tmp_path / "s2")
        pub.start()
        pub.publish_event(event("via-env"))
        rec.wait_until(lambda m: any(b"via-env" in p for _, p, _ in m), what="event via password_env")
        assert pub.connected
        pub.stop()
    finally:
        rec.close()


def test_wrong_password_one_clear_error_retries_and_keeps_events(
    password_broker, publishers, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b = password_broker
    caplog.set_level(logging.DEBUG, logger="monitor.publish")
    pw = tmp_path / "mqtt.pw"
    pw.write_text("wrong-secret\n")
    state = tmp_path / "state"
    base = {"host": b.host, "port": b.port, "username": "monitor", "reconnect_min": 0.1, "reconnect_max": 0.3}
    pub = publishers(MqttSettings(**base, password_file=pw), NODE, "Hall", state)
    pub.start()
    for i in range(5):
        pub.publish_event(event(f"kept-{i}"))
    wait_for(lambda: pub.stats.connect_failures >= 4, what="several refused attempts")
    assert not pub.connected
    assert pub.outbox_depth == 5
    problems = errors_from_publisher(caplog)
    assert len(problems) == 1, problems
    assert problems[0] == (f"mqtt: broker {b.host}:{b.port} refused the connection: not authorized (wrong user name or password?); "
                           "check mqtt.username and mqtt.password_file / mqtt.password_env; retrying, events are kept in the outbox")
    pub.stop(timeout=1)

    # the password is fixed: the same state folder delivers everything kept
    pw.write_text("right-secret\n")
    rec = Recorder(b.host, b.port, EVENT_TOPIC, username="hub", password="hub-secret")
    try:
        pub = publishers(MqttSettings(**base, password_file=pw), NODE, "Hall", state)
        pub.start()
        rec.wait_until(lambda m: len(m) >= 5, what="kept events")
        assert rec.event_ids() == [f"kept-{i}" for i in range(5)]
        wait_for(lambda: pub.outbox_depth == 0, what="outbox to empty")
        pub.stop()
    finally:
        rec.close()


def test_missing_password_file_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(PublisherError, match="mqtt.password_file"):
        Publisher(MqttSettings(username="monitor", password_file=tmp_path / "nope"), NODE, "Hall", tmp_path / "s")


# ---------------------------------------------------------------------------- TLS


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run([need_tool("openssl"), *args], check=True, capture_output=True, cwd=cwd)


def make_pki(d: Path, name: str) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    d = d / name
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", f"/CN={name} test CA", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who in ("server", "client"):
        openssl("req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN={who}", cwd=d)
        ext = ["-extfile", "server.ext"] if who == "server" else []
        openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{who}.crt", "-days", "2", *ext, cwd=d)
    for f in d.iterdir():
        readable(f)
    return d


@pytest.fixture
def tls_broker(make_broker, tmp_path: Path):
    pki = make_pki(tmp_path, "good")
    plain = free_port()
    b = make_broker(
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
        "require_certificate true\n"
        f"listener {plain} 127.0.0.1\n"  # a plain listener for the test's own subscriber
    )
    wait_port(plain)
    b.plain_port = plain
    b.pki = pki
    return b


def test_tls_with_ca_and_client_certificate(tls_broker, publishers, tmp_path: Path) -> None:
    b = tls_broker
    rec = Recorder(b.host, b.plain_port, EVENT_TOPIC)
    try:
        s = MqttSettings(host=b.host, port=b.port, tls={"ca_file": b.pki / "ca.crt", "certfile": b.pki / "client.crt",
                                                         "keyfile": b.pki / "client.key"})
        pub = publishers(s, NODE, "Hall", tmp_path / "state")
        pub.start()
        pub.publish_event(event("over-tls"))
        rec.wait_until(lambda m: any(b"over-tls" in p for _, p, _ in m), what="event over TLS")
        assert pub.connected
        pub.stop()
    finally:
        rec.close()

    # and a TLS subscriber with the same CA sees the retained state the publisher left
    tls_rec = Recorder(b.host, b.port, f"audio-monitor/{NODE}/status", ca_file=str(b.pki / "ca.crt"),
                       certfile=str(b.pki / "client.crt"), keyfile=str(b.pki / "client.key"))
    try:
        tls_rec.wait_until(lambda m: any(p == b"offline" for _, p, _ in m), what="retained offline over TLS")
    finally:
        tls_rec.close()


def test_tls_with_the_wrong_ca_one_clear_error_and_events_kept(
    tls_broker, publishers, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b = tls_broker
    caplog.set_level(logging.DEBUG, logger="monitor.publish")
    other = make_pki(tmp_path, "other")
    s = MqttSettings(host=b.host, port=b.port, reconnect_min=0.1, reconnect_max=0.3,
                     tls={"ca_file": other / "ca.crt", "certfile": other / "client.crt", "keyfile": other / "client.key"})
    pub = publishers(s, NODE, "Hall", tmp_path / "state")
    pub.start()
    pub.publish_event(event("waits"))
    wait_for(lambda: pub.stats.connect_failures >= 4, what="several failed handshakes")
    assert not pub.connected and pub.outbox_depth == 1
    problems = errors_from_publisher(caplog)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"mqtt: TLS to broker {b.host}:{b.port} failed: ")
    assert "certificate" in problems[0] and "check mqtt.tls.ca_file" in problems[0]
    assert problems[0].endswith("retrying, events are kept in the outbox")
    pub.stop(timeout=1)


def test_tls_files_that_do_not_load_fail_at_start(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(PublisherError, match="mqtt.tls.ca_file"):
        Publisher(MqttSettings(tls={"ca_file": junk}), NODE, "Hall", tmp_path / "s")
    with pytest.raises(PublisherError, match="mqtt.tls.certfile"):
        Publisher(MqttSettings(tls={"enabled": True, "certfile": junk}), NODE, "Hall", tmp_path / "s")
