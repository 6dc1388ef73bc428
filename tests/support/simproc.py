"""The simulator in a process of its own: a test tool, not part of the product.

An in-process ``SimulatorServer`` shares the interpreter lock with the sync it serves: on a
busy machine an answer can then wait behind the sync's own Python work long enough to look
like a timeout, a retry the test did not inject. In its own process the simulator answers as
a real source does, independently of the client. Tests start one through the simulator
factory (:mod:`tests.support.simulators`)::

    sim = make_simulator(own_process=True, **config)
    settings = sim_settings(sim, data_dir)      # sim.url, sim.state.config as on SimulatorServer
    ...
    sim.stats["faults"]                          # read over the admin API
    sim.state.truth(project_id)

Only what the tests read is offered: ``url``, ``state.config``, ``state.truth()``, ``stats``
and ``configure()`` (admin calls over HTTP, with the child's admin token).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import httpx

from pipelines.simulator import SimulatorConfig, SimulatorServer
from pipelines.simulator.server import ADMIN_TOKEN_HEADER

REPO = Path(__file__).resolve().parents[2]
_CHILD = "from tests.support.simproc import _child; _child()"


def _child() -> None:
    """The child's side: the pickled config on stdin, one JSON line out, then serve until stdin closes."""
    config = pickle.load(sys.stdin.buffer)
    with SimulatorServer(config) as server:
        print(json.dumps({"url": server.url, "token": server.admin_token}), flush=True)
        sys.stdin.buffer.read()  # EOF: the parent is done (or gone)


class _RemoteState:
    def __init__(self, owner: SimulatorProcess) -> None:
        self._owner = owner
        self.config = owner.config

    def truth(self, project_id: str | None = None) -> list[dict]:
        return self._owner._admin("GET", "/_sim/truth", params={"project_id": project_id} if project_id else None)


class SimulatorProcess:
    """``with SimulatorProcess(config) as sim:`` a SimulatorServer serving from a child process."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.state = _RemoteState(self)
        self.url = ""
        self._token = ""
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> SimulatorProcess:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self._process = subprocess.Popen([sys.executable, "-c", _CHILD], cwd=REPO, env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            self._process.stdin.write(pickle.dumps(self.config))
            self._process.stdin.flush()
            line = self._process.stdout.readline()  # blocks until the child serves or dies
            started = json.loads(line)
        except (OSError, ValueError):
            self.__exit__()
            raise RuntimeError("the simulator process did not start") from None
        self.url, self._token = started["url"], started["token"]
        return self

    def __exit__(self, *exc_info) -> None:
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

    def _admin(self, method: str, path: str, params: dict | None = None, body: dict | None = None):
        headers = {ADMIN_TOKEN_HEADER: self._token} if body is not None else {}
        response = httpx.request(method, self.url + path, params=params, json=body, headers=headers, timeout=60)
        response.raise_for_status()
        return response.json()

    @property
    def stats(self) -> dict:
        """``{"requests", "by_status", "faults", ...}`` as SimulatorServer.stats (status keys are strings)."""
        return self._admin("GET", "/_sim/stats")

    def configure(self, **changes) -> None:
        self._admin("POST", "/_sim/config", body=changes)
