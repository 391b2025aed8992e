"""Real network faults for tests: a loopback TCP relay in front of a service that can go down on cue."""

from __future__ import annotations

import socket
import threading


class Relay:
    """Forwards 127.0.0.1:`port` to `target` byte for byte. `down()` closes the listener and every open connection
    (clients get refused or reset: the service has stopped answering); `up()` listens again on the same port.
    `cut_after` > 0 takes it down by itself once that many bytes have come back from the service (mid-stage)."""

    def __init__(self, target: tuple[str, int], cut_after: int = 0):
        self.target, self.cut_after = target, cut_after
        self.bytes_back = 0  # service -> client, since this relay was made
        self.port = 0
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def up(self) -> Relay:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            for sock in [*self._open, *([listener] if listener else [])]:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by down()
                return
            try:
                service = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close(), service.close()
                    return
                self._open |= {client, service}
            threading.Thread(target=self._pipe, args=(client, service, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(service, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, back: bool) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
                if back:
                    with self._lock:
                        self.bytes_back += len(data)
                        cut = self.cut_after and self.bytes_back >= self.cut_after
                    if cut:
                        self.down()
                        return
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
