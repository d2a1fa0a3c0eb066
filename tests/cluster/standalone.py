"""A Spark standalone cluster on loopback, started from the installed pyspark: one master and
N workers, each its own JVM in its own process group, logs and work dirs under one folder.

    with StandaloneCluster(tmp_path / "cluster", workers=2, cores=1, memory="1g") as cluster:
        subprocess.run(["spark-submit", "--master", cluster.master_url, ...])
        cluster.state()["completedapps"]

The pyspark wheel ships ``bin/spark-class`` but not the ``sbin/start-*.sh`` scripts, so the
daemons are started with ``spark-class org.apache.spark.deploy.{master.Master,worker.Worker}``,
which is what those scripts run underneath.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyspark

SPARK_HOME = Path(pyspark.__file__).resolve().parent
HOST = "127.0.0.1"


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that were free on loopback a moment ago."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@dataclass
class Daemon:
    name: str
    process: subprocess.Popen
    log: Path
    webui_port: int


@dataclass
class StandaloneCluster:
    """Args:
        root: where every daemon's log, the workers' work dirs and Spark's scratch space go.
        workers: number of Worker daemons.
        cores: cores each worker offers (one executor per worker takes them all).
        memory: memory each worker offers to its executors, e.g. "1g".
        startup_timeout: seconds to wait for the master and every worker to register.
    """

    root: Path
    workers: int = 2
    cores: int = 1
    memory: str = "1g"
    startup_timeout: float = 120.0
    daemons: list[Daemon] = field(default_factory=list)
    master_url: str = ""
    webui_url: str = ""

    def __enter__(self) -> "StandaloneCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        master_port, master_ui, *worker_ports = free_ports(2 + 2 * self.workers)
        self.master_url = f"spark://{HOST}:{master_port}"
        self.webui_url = f"http://{HOST}:{master_ui}"
        self._spawn("master", master_ui, "org.apache.spark.deploy.master.Master",
                    "--host", HOST, "--port", str(master_port), "--webui-port", str(master_ui))
        self._wait(lambda: self.state().get("status") == "ALIVE", "the master to come up")
        for i in range(self.workers):
            port, ui = worker_ports[2 * i], worker_ports[2 * i + 1]
            work_dir = self.worker_dir(i)
            work_dir.mkdir(parents=True, exist_ok=True)
            self._spawn(f"worker-{i}", ui, "org.apache.spark.deploy.worker.Worker",
                        "--host", HOST, "--port", str(port), "--webui-port", str(ui),
                        "--cores", str(self.cores), "--memory", self.memory,
                        "--work-dir", str(work_dir), self.master_url)
        self._wait(lambda: len(self.alive_workers()) == self.workers, f"{self.workers} workers to register")

    def worker_dir(self, i: int) -> Path:
        """The work dir of worker ``i``: ``<app-id>/<executor-id>/{stdout,stderr}`` per executor."""
        return self.root / f"worker-{i}" / "work"

    def state(self) -> dict[str, Any]:
        """The master's JSON status (workers, active and completed applications)."""
        return get_json(f"{self.webui_url}/json/")

    def alive_workers(self) -> list[dict[str, Any]]:
        return [w for w in self.state().get("workers", []) if w.get("state") == "ALIVE"]

    def logs(self, tail: int = 4000) -> str:
        """The end of every daemon's and executor's log, for a failure message."""
        parts = []
        for daemon in self.daemons:
            parts.append(_tail(daemon.log, f"{daemon.name} ({daemon.log})", tail))
        for i in range(self.workers):
            for path in sorted(self.worker_dir(i).glob("*/*/std*")):
                parts.append(_tail(path, f"worker-{i} executor {path.parent.name} {path.name}", tail))
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop the workers, then the master: SIGTERM to each process group, SIGKILL after 20 s."""
        for daemon in reversed(self.daemons):
            _kill_group(daemon.process, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for daemon in reversed(self.daemons):
            try:
                daemon.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # Executors and Python workers the daemon started share its group: end them too.
            _kill_group(daemon.process, signal.SIGKILL)
            daemon.process.wait()

    def _spawn(self, name: str, webui_port: int, main_class: str, *args: str) -> None:
        log = self.root / f"{name}.log"
        scratch = self.root / name / "tmp"
        scratch.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "SPARK_HOME": str(SPARK_HOME),
            "SPARK_LOCAL_IP": HOST,
            "SPARK_LOCAL_DIRS": str(scratch),
            "SPARK_LOG_DIR": str(self.root),
            "SPARK_DAEMON_MEMORY": "256m",
            "SPARK_DAEMON_JAVA_OPTS": f"-Djava.io.tmpdir={scratch}",
        }
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [str(SPARK_HOME / "bin" / "spark-class"), main_class, *args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,  # its own process group, so stop() reaches its children
            )
        self.daemons.append(Daemon(name, process, log, webui_port))

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            for daemon in self.daemons:
                if daemon.process.poll() is not None:
                    raise RuntimeError(f"{daemon.name} exited with {daemon.process.returncode} while waiting "
                                       f"for {what}\n{self.logs()}")
            with contextlib.suppress(OSError, ValueError):
                if ready():
                    return
            time.sleep(0.5)
        raise TimeoutError(f"timed out after {self.startup_timeout:.0f}s waiting for {what}\n{self.logs()}")


def _kill_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _tail(path: Path, title: str, chars: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"--- {title}: unreadable ({exc})"
    return f"--- {title} (last {min(chars, len(text))} chars)\n{text[-chars:]}"
