"""A real vLLM OpenAI server on the CPU, a TCP gate to cut it off, and a scripted fake server.

vLLM lives in its own virtual environment (`.venv-vllm`, made by `make test`: it pins its own
torch and transformers). The server is started once per session, serving a random-weight
Qwen2-Audio written by the project's builder at the `served` size (vLLM's CPU attention needs
heads of 32 or more); it takes 60-105 s to be ready, so it is launched as soon as a test module
that needs it is collected and waited for only when a test first uses it.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.conftest import REPO, free_port, need, need_tool

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
SERVED_NAME = "audio-test"
READY_TIMEOUT = 300.0  # seconds; 60-105 s on an idle 2-core machine


def vllm_available() -> bool:
    return VLLM_PYTHON.exists()


def need_vllm() -> None:
    need(vllm_available(), "the vLLM environment .venv-vllm (`make test` creates it)")


class VllmServer:
    """`python -m vllm.entrypoints.openai.api_server` on a loopback port, with an API key."""

    def __init__(self, model_dir: Path, workdir: Path, port: int | None = None, api_key: str | None = None,
                 extra: tuple[str, ...] = ()):
        self.model_dir = model_dir
        self.port = port or free_port()
        self.api_key = api_key if api_key is not None else "sk-test-" + secrets.token_hex(12)
        self.log = workdir / f"vllm-{self.port}.log"
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.failure: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> VllmServer:
        cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
               "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(self.port),
               "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager", "--kv-cache-memory-bytes", "256M",
               "--chat-template-content-format", "string", "--logprobs-mode", "processed_logprobs",
               *(["--api-key", self.api_key] if self.api_key else []), *self.extra]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        env.pop("CI", None)
        env.pop("OMP_NUM_THREADS", None)  # tests/conftest.py pins the suite's tiny models to 1; vLLM places its own
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> VllmServer:
        """Block until /health answers; a server that failed to start fails every later call at once."""
        if self.failure is not None:
            raise RuntimeError(self.failure)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                self.failure = f"vLLM exited ({self.proc and self.proc.returncode}):\n{self.tail()}"
                raise RuntimeError(self.failure)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.failure = f"vLLM not ready after {timeout:.0f}s:\n{self.tail()}"
        raise TimeoutError(self.failure)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM to its process group (the API server and its engine core), SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass


def build_served_model(out: Path) -> Path:
    from monitor.testing.tiny.qwen2_audio import build

    return build(out, size="served")


# ---------------------------------------------------------------------------- a gate in front of the server


class Gate:
    """A TCP relay to a server that a test can take `down()` (every connection reset, new ones
    refused: what a killed server looks like to its clients) and bring `up()` again on the same port."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._sel = selectors.DefaultSelector()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._stop = False
        self.up()
        self._thread = threading.Thread(target=self._run, daemon=True, name="gate")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def up(self) -> None:
        with self._lock:
            if self._listener is None:
                self._listener = socket.create_server(("127.0.0.1", self.port))
                self._listener.setblocking(False)
                self._sel.register(self._listener, selectors.EVENT_READ)

    def down(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._sel.unregister(self._listener)
                self._listener.close()
                self._listener = None
            for s in list(self._pairs):
                self._drop(s)

    def close(self) -> None:
        self._stop = True
        self.down()
        self._thread.join(5)

    def _drop(self, sock: socket.socket) -> None:
        peer = self._pairs.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._pairs.pop(s, None)
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
            except OSError:
                pass
            s.close()

    def _run(self) -> None:
        while not self._stop:
            with self._lock:
                events = self._sel.select(0.05) if self._sel.get_map() else []
                for key, _ in events:
                    sock = key.fileobj
                    if sock is self._listener:
                        try:
                            client, _ = sock.accept()
                            upstream = socket.create_connection(self.target, timeout=2)
                        except OSError:
                            continue
                        for s in (client, upstream):
                            s.setblocking(False)
                            self._sel.register(s, selectors.EVENT_READ)
                        self._pairs[client], self._pairs[upstream] = upstream, client
                        continue
                    peer = self._pairs.get(sock)  # type: ignore[arg-type]
                    if peer is None:
                        continue
                    try:
                        data = sock.recv(1 << 16)  # type: ignore[union-attr]
                    except OSError:
                        data = b""
                    if not data:
                        self._drop(sock)  # type: ignore[arg-type]
                        continue
                    try:
                        peer.setblocking(True)
                        peer.sendall(data)
                        peer.setblocking(False)
                    except OSError:
                        self._drop(sock)  # type: ignore[arg-type]
            if not events:
                time.sleep(0.005)


# ---------------------------------------------------------------------------- a scripted fake server


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the backend opens up to model.concurrency connections at once
    daemon_threads = True


Reply = tuple[int, Any, float]  # status, JSON body, seconds to wait before answering


class FakeServer:
    """A tiny OpenAI-compatible server whose chat answers a test scripts: `chat(body) -> (status, json, delay)`.

    It serves /v1/models (one model, "fake"), /tokenize over a six-word vocabulary, and records
    every request (path, headers, body) in `seen`.
    """

    VOCAB = {"yes": 11, "Yes": 12, " yes": 13, "no": 21, "No": 22, " no": 23}

    def __init__(self, chat: Callable[[dict], Reply], api_key: str | None = None, max_logprobs: int = 20,
                 tls: tuple[Path, Path] | None = None):
        self.chat = chat
        self.scheme = "https" if tls else "http"
        self.api_key = api_key
        self.max_logprobs = max_logprobs
        self.seen: list[tuple[str, dict[str, str], Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any, delay: float = 0.0) -> None:
                if delay:
                    time.sleep(delay)
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

            def _authorised(self) -> bool:
                if outer.api_key and self.headers.get("Authorization") != f"Bearer {outer.api_key}":
                    self._reply(401, {"error": "Unauthorized"})
                    return False
                return True

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.seen.append((self.path, dict(self.headers), None))
                if self.path == "/v1/models" and self._authorised():
                    self._reply(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
                elif self.path != "/v1/models":
                    self._reply(404, {"detail": "Not Found"})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                outer.seen.append((self.path, dict(self.headers), body))
                if self.path == "/tokenize":
                    word = body.get("prompt", "")
                    self._reply(200, {"tokens": [outer.VOCAB[word]] if word in outer.VOCAB else [90, 91]})
                elif self.path == "/v1/chat/completions" and self._authorised():
                    if body.get("top_logprobs", 0) > outer.max_logprobs:
                        self._reply(400, {"error": {"message": f"Requested sample logprobs of {body['top_logprobs']}, "
                                                               f"which is greater than max allowed: {outer.max_logprobs}"}})
                        return
                    self._reply(*outer.chat(body))
                elif self.path != "/v1/chat/completions":
                    self._reply(404, {"detail": "Not Found"})

        self.server = _Server(("127.0.0.1", 0), Handler)
        if tls is not None:  # (certificate, key)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="fake-openai")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/v1"

    def chats(self) -> list[dict]:
        return [body for path, _, body in self.seen if path == "/v1/chat/completions"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_ca(folder: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate for 127.0.0.1, its key), made by openssl."""
    openssl = need_tool("openssl")
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=served test CA")
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=server")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "server.ext")
    return folder / "ca.crt", folder / "server.crt", folder / "server.key"


def logprobs_answer(top: list[tuple[str, float]], content: str = "") -> dict:
    """A chat completion whose one token came with these (token, logprob) top answers."""
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content or (top[0][0] if top else "")},
                         "logprobs": {"content": [{"token": top[0][0] if top else "", "logprob": top[0][1] if top else 0.0,
                                                   "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}]}}]}
