"""Building the paho-mqtt client (login, TLS, Last Will) and explaining connection failures.

Kept apart from the publisher so that credentials and TLS problems are found, and reported as one
line naming the config key to fix, before anything connects.
"""

from __future__ import annotations

import socket
import ssl
import paho.mqtt.client as mqtt

from monitor.configtypes import read_secret
from monitor.publish.settings import MqttSettings


class PublisherError(Exception):
    """A problem in the `mqtt:` settings found at start-up; the message names the key to fix."""


def read_password(settings: MqttSettings) -> str | None:
    """The broker password from `password_file` or `password_env`, or None when none is configured."""
    try:
        return read_secret(settings.password_file, settings.password_env, "mqtt", "the broker password")
    except ValueError as exc:
        raise PublisherError(str(exc)) from None


def tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    """An SSL context for the configured TLS, or None for a plain connection."""
    tls = settings.tls
    if not tls.active:
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise PublisherError(f"mqtt.tls.ca_file {tls.ca_file}: cannot load it ({_why(exc)}); give a PEM CA certificate") from None
    if tls.certfile is not None:
        try:
            ctx.load_cert_chain(str(tls.certfile), str(tls.keyfile) if tls.keyfile else None)
        except (OSError, ssl.SSLError) as exc:
            raise PublisherError(
                f"mqtt.tls.certfile {tls.certfile}: cannot load the client certificate/key ({_why(exc)}); "
                "give PEM files and an unencrypted key (mqtt.tls.keyfile)"
            ) from None
    if tls.insecure:
        ctx.check_hostname = False
    return ctx


def make_client(settings: MqttSettings, client_id: str, status_topic: str) -> mqtt.Client:
    """A configured, not yet connected paho client with its Last Will set."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311,
        reconnect_on_failure=True,
    )
    if settings.username:
        client.username_pw_set(settings.username, read_password(settings))
    ctx = tls_context(settings)
    if ctx is not None:
        client.tls_set_context(ctx)
        if settings.tls.insecure:
            client.tls_insecure_set(True)
    client.will_set(status_topic, b"offline", qos=settings.qos, retain=True)
    client.reconnect_delay_set(settings.reconnect_min, settings.reconnect_max)  # type: ignore[arg-type]
    # The publisher keeps its own window of unacknowledged events; paho must not queue behind it.
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    # A bug in a callback must not kill the network thread (and with it every later event).
    client.suppress_exceptions = True
    return client


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or str(exc)
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def describe_connect_error(exc: BaseException | None, settings: MqttSettings) -> str:
    """One line saying why the broker could not be reached and which setting to check."""
    where = f"{settings.host}:{settings.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"mqtt: TLS to broker {where} failed: {_why(exc)}; check mqtt.tls.ca_file "
                "(the CA that signed the broker's certificate) and that mqtt.host matches the certificate")
    if isinstance(exc, ssl.SSLError):
        return f"mqtt: TLS handshake with broker {where} failed: {_why(exc)}; check mqtt.tls and the broker's TLS listener"
    if isinstance(exc, socket.gaierror):
        return f"mqtt: cannot resolve broker host {settings.host!r}: {exc.strerror or exc}; check mqtt.host"
    if isinstance(exc, ConnectionRefusedError):
        return f"mqtt: broker {where} refused the TCP connection (is it running?); check mqtt.host and mqtt.port"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"mqtt: connecting to broker {where} timed out; check mqtt.host, mqtt.port and the network"
    if isinstance(exc, OSError):
        return f"mqtt: cannot connect to broker {where}: {_why(exc)}; check mqtt.host and mqtt.port"
    return f"mqtt: cannot connect to broker {where}"


def describe_refusal(reason: object, settings: MqttSettings) -> str:
    """One line for a CONNACK that refused us (bad login, not authorised, ...)."""
    where = f"{settings.host}:{settings.port}"
    low = str(reason).lower()
    if "not authori" in low:
        # mosquitto answers a wrong password with "not authorized"
        low += " (wrong user name or password?)"
        hint = "check mqtt.username and mqtt.password_file / mqtt.password_env"
    elif "password" in low or "user name" in low:
        hint = "check mqtt.username and mqtt.password_file / mqtt.password_env"
    elif "identifier" in low:
        hint = "check mqtt.client_id"
    elif "unavailable" in low:
        hint = "the broker is not accepting clients now"
    else:
        hint = "check the broker's log"
    return f"mqtt: broker {where} refused the connection: {low}; {hint}"
