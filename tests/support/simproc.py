"""The simulator in a process of its own, as tests use it: the product's
:class:`pipelines.simulator.process.SimulatorProcess` plus admin reads.

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

import os
from pathlib import Path

import httpx

from pipelines.simulator.process import SimulatorProcess as _ProductProcess
from pipelines.simulator.process import _State
from pipelines.simulator.server import ADMIN_TOKEN_HEADER

REPO = Path(__file__).resolve().parents[2]


class _RemoteState(_State):
    def __init__(self, owner: SimulatorProcess) -> None:
        super().__init__(owner.config)
        self._owner = owner

    def truth(self, project_id: str | None = None) -> list[dict]:
        return self._owner._admin("GET", "/_sim/truth", params={"project_id": project_id} if project_id else None)


class SimulatorProcess(_ProductProcess):
    """The product's SimulatorProcess, plus what tests read over the admin API."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.state = _RemoteState(self)

    def __enter__(self) -> SimulatorProcess:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        return self.start(cwd=REPO, env=env)

    def _admin(self, method: str, path: str, params: dict | None = None, body: dict | None = None):
        headers = {ADMIN_TOKEN_HEADER: self.admin_token} if body is not None else {}
        response = httpx.request(method, self.url + path, params=params, json=body, headers=headers, timeout=60)
        response.raise_for_status()
        return response.json()

    @property
    def stats(self) -> dict:
        """``{"requests", "by_status", "faults", ...}`` as SimulatorServer.stats (status keys are strings)."""
        return self._admin("GET", "/_sim/stats")

    def configure(self, **changes) -> None:
        self._admin("POST", "/_sim/config", body=changes)
