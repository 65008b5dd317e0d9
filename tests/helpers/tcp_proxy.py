"""A TCP relay between a client and the broker that a test can stall and cut, like a bad network.

`stall()` swallows what the client sends (the broker never sees it, the client never gets an
acknowledgement); `cut()` closes every relayed connection; new connections are accepted again
at once.
"""

from __future__ import annotations

import selectors
import socket
import threading


class Proxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.host = "127.0.0.1"
        self.stalled = threading.Event()
        self.swallowed = 0  # bytes from clients dropped while stalled
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener, selectors.EVENT_READ)
        self._stop = False
        self._cut = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tcp-proxy")
        self._thread.start()

    def stall(self) -> None:
        self.stalled.set()

    def cut(self) -> None:
        """Close all relayed connections (and stop stalling)."""
        self._cut.set()
        while self._cut.is_set():
            threading.Event().wait(0.01)
        self.stalled.clear()

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self._close_all()
        self.listener.close()

    def _close_all(self) -> None:
        for s in list(self._pairs):
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        self._pairs.clear()

    def _run(self) -> None:
        clients: set[socket.socket] = set()
        while not self._stop:
            if self._cut.is_set():
                self._close_all()
                clients.clear()
                self._cut.clear()
            for key, _ in self._sel.select(0.05):
                sock = key.fileobj
                if sock is self.listener:
                    client, _ = self.listener.accept()
                    upstream = socket.create_connection(self.target)
                    for s in (client, upstream):
                        s.setblocking(False)
                        self._sel.register(s, selectors.EVENT_READ)
                    self._pairs[client], self._pairs[upstream] = upstream, client
                    clients.add(client)
                    continue
                peer = self._pairs.get(sock)
                if peer is None:
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    for s in (sock, peer):
                        self._pairs.pop(s, None)
                        try:
                            self._sel.unregister(s)
                        except (KeyError, ValueError):
                            pass
                        s.close()
                    clients.discard(sock)
                    continue
                if sock in clients and self.stalled.is_set():
                    self.swallowed += len(data)
                    continue
                peer.setblocking(True)
                peer.sendall(data)
                peer.setblocking(False)
