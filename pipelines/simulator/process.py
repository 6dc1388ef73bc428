"""The simulator in a process of its own, for the demo and the tests.

A ``SimulatorServer`` in the sync's own process shares the interpreter lock with it: every
answer then waits behind the sync's Python work, as no real source does, and the two share
one core. In a child process the simulator answers on the machine's other core::

    with SimulatorProcess(SimulatorConfig(jobs=20_000)) as sim:
        sim.url, sim.admin_token, sim.state.config, sim.state.now

The child gets its configuration (with ``now`` fixed by the parent, so both agree on the
simulated clock) on stdin, answers with one JSON line, and serves until its stdin closes:
a parent that ends, however it ends, takes the child with it.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime

from .config import SimulatorConfig


def _child() -> None:
    """The child's side: the pickled (config, warm) on stdin, one JSON line out, then serve until
    stdin closes. With ``warm`` it renders every job right after answering, while the parent
    opens its warehouse, a few thousand at a time between the requests it serves."""
    from .server import SimulatorServer  # here only: the parent never serves

    config, warm = pickle.load(sys.stdin.buffer)
    with SimulatorServer(config) as server:
        print(json.dumps({"url": server.url, "token": server.admin_token}), flush=True)
        if warm:
            server.state.warm()
        sys.stdin.buffer.read()  # EOF: the parent is done (or gone)
        # Nothing is left to answer or to write: the process ends here, its sockets closed by
        # the system. Shutting the server's threads down and freeing every rendered job one by
        # one kept the parent waiting (a tenth of a second at 20,000 jobs).
        sys.stdout.flush()
        os._exit(0)


class _State:
    """What a caller reads of the child's state without asking it: its configuration and clock."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config

    @property
    def now(self) -> datetime:
        return self.config.now


class SimulatorProcess:
    """``with SimulatorProcess(config) as sim:`` a SimulatorServer serving from a child process."""

    #: How the child is started: this module's _child() in a fresh interpreter.
    command: tuple[str, ...] = (sys.executable, "-m", "pipelines.simulator.process")

    def __init__(self, config: SimulatorConfig, *, warm: bool = False) -> None:
        self.warm = warm
        if config.now is None:
            config = replace(config, now=datetime.now(UTC).replace(microsecond=0))
        self.config = config
        self.state = _State(config)
        self.url = ""
        self.admin_token = ""
        self._process: subprocess.Popen | None = None

    def start(self, **popen) -> SimulatorProcess:
        """Start the child and wait until it serves."""
        return self.spawn(**popen).wait_ready()

    def spawn(self, **popen) -> SimulatorProcess:
        """Start the child without waiting for it: the caller can do its own start-up meanwhile."""
        self._process = subprocess.Popen(list(self.command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, **popen)
        try:
            self._process.stdin.write(pickle.dumps((self.config, self.warm)))
            self._process.stdin.flush()
        except OSError:
            self.stop()
            raise RuntimeError("the simulator process did not start") from None
        return self

    def wait_ready(self) -> SimulatorProcess:
        """Wait until the spawned child serves; its URL and admin token are then known."""
        try:
            started = json.loads(self._process.stdout.readline())  # blocks until it serves or dies
        except (OSError, ValueError):
            self.stop()
            raise RuntimeError("the simulator process did not start") from None
        self.url, self.admin_token = started["url"], started["token"]
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.stdin.close()  # the child's read ends: it stops serving and exits
        except OSError:
            pass
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


if __name__ == "__main__":
    _child()
