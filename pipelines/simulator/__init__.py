"""An embedded MetaStudio: the voice-training job listing served over loopback HTTP.

Used by the demo, the integration and fault tests and the benchmarks::

    from pipelines.simulator import SimulatorConfig, SimulatorServer

    with SimulatorServer(SimulatorConfig(jobs=5_000)) as sim:
        sim.url          # http://127.0.0.1:<port>
        sim.state.truth("sim-project")   # what the API lists right now
        sim.state.advance(3600)          # one simulated hour later
        sim.admin("/_sim/config", {"latency_ms": 20})   # admin calls over HTTP carry
                                                        # sim.admin_token (X-Sim-Admin-Token)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from .config import FAULT_KINDS, SimulatorConfig

if TYPE_CHECKING:
    from .params import ListParams, ParamError, parse_list_params
    from .server import SimulatorServer
    from .state import SimulatorState

# The server and its state (httpx, numpy, pyarrow, the catalogue) load on first use: the demo
# names SimulatorConfig to start the simulator's own process, and that process imports them.
_LAZY = {"ListParams": ".params", "ParamError": ".params", "parse_list_params": ".params",
         "SimulatorServer": ".server", "SimulatorState": ".state"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "FAULT_KINDS",
    "ListParams",
    "ParamError",
    "SimulatorConfig",
    "SimulatorServer",
    "SimulatorState",
    "parse_list_params",
]
