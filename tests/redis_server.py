"""A real ``redis-server`` on a free loopback port, for the tests of the store and the service.

No fakeredis: the tests that claim to test the cache run against Redis itself. Standard
library only (the Airflow environment's tests start one too). ``scripts/bootstrap.sh`` installs
the binary; without it a test that asks for a server fails, naming the fix.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One ``redis-server`` process: no persistence, bound to 127.0.0.1, its files in ``folder``.

    The port stays the same across :meth:`stop` and :meth:`start`, so a client given :attr:`url`
    finds the server again (empty: nothing is saved) after a restart: the fault tests stop it
    in the middle of a load and start it again.
    """

    def __init__(self, folder: Path, port: int | None = None):
        self.folder = Path(folder)
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> RedisServer:
        """Start the server and wait (at most ``timeout_s``) until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not on PATH: run `make setup` (scripts/bootstrap.sh installs it) or "
                        "`apt-get install redis-server`", pytrace=False)
        if self.running:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        log = self.folder / "redis.log"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--logfile", str(log), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.command("PING") == b"+PONG":
                return self
            time.sleep(0.02)
        text = log.read_text()[-2000:] if log.exists() else ""
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING within {timeout_s:g} s: {text}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s); a stopped server is left alone."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def flush(self) -> None:
        """Empty every database (between tests that share the server)."""
        reply = self.command("FLUSHALL")
        if reply != b"+OK":
            raise RuntimeError(f"FLUSHALL on port {self.port} answered {reply!r}")

    def command(self, *words: str) -> bytes | None:
        """Send one command, return the first line of the reply (None if the server does not answer)."""
        reply = self._reply(words)
        return None if reply is None else reply.split(b"\r\n", 1)[0]

    def get(self, key: str) -> str | None:
        """The string value of ``key`` (None when absent), for a test without a Redis client."""
        reply = self._reply(("GET", key))
        if reply is None or not reply.startswith(b"$"):
            raise RuntimeError(f"GET {key} on port {self.port} answered {reply!r}")
        head, _, body = reply.partition(b"\r\n")
        return None if head == b"$-1" else body[:int(head[1:])].decode()

    def _reply(self, words: tuple[str, ...]) -> bytes | None:
        request = f"*{len(words)}\r\n".encode() + b"".join(
            f"${len(w.encode())}\r\n".encode() + w.encode() + b"\r\n" for w in words)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as conn:
                conn.sendall(request)
                reply = b""
                while not reply.endswith(b"\r\n"):  # enough for the short replies the tests read
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
                return reply
        except OSError:
            return None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
