"""Configuration of the embedded MetaStudio simulator."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

#: Every fault kind the simulator can serve, in the order the default mix uses.
FAULT_KINDS: tuple[str, ...] = ("429", "500", "502", "503", "truncated", "stall")

#: Shapes of the generated history: ``steady`` (weekly rhythm, growth, daytime peak) or
#: ``lumpy`` (burst days, empty days, sharp business-hour peaks).
TRAFFIC_KINDS: tuple[str, ...] = ("steady", "lumpy")


@dataclass(frozen=True)
class SimulatorConfig:
    """What the simulator hosts and how it misbehaves.

    ``jobs`` jobs are generated deterministically from ``seed``, spread over ``days``
    days ending at ``now`` (default: the real time truncated to the second) across
    ``projects``, shaped by ``traffic`` (one of :data:`TRAFFIC_KINDS`): ``steady`` follows
    a weekly rhythm, a growth trend and a daytime peak; ``lumpy`` adds about 4 burst days
    per 365 (each about 20x a usual day), about 2% empty days (outages, holidays) and
    sharper peaks (most jobs created 09:00-18:00 Beijing time on weekdays); either way
    exactly ``jobs`` jobs. Credentials: IAM ``tokens`` (``expired_tokens`` answer 401
    APIGW.0307), permanent AK/SK pairs in ``credentials`` and temporary ones in
    ``temporary_credentials`` as ``AK -> (SK, security_token)``.

    Behaviour (changeable at run time through ``SimulatorServer.configure`` or
    ``POST /_sim/config`` with the server's admin token): ``latency_ms`` added to every
    API request; with probability ``fault_rate`` a list request gets one fault drawn
    uniformly from ``faults`` (kinds in :data:`FAULT_KINDS`; a ``stall`` sleeps
    ``stall_seconds`` before answering); ``rate_limit`` requests/s admitted by a token
    bucket, the excess answered 429 with ``Retry-After``; ``hostile_paging`` deletes and
    back-dates one job inside the requested window before every page after the first or
    windowed; ``quirks`` corrupt served records deterministically (see :mod:`.quirks`).
    """

    jobs: int = 20_000
    seed: int = 7
    projects: tuple[str, ...] = ("sim-project",)
    now: datetime | None = None
    days: int = 365
    traffic: str = "steady"
    tokens: frozenset[str] = frozenset({"sim-token"})
    credentials: Mapping[str, str] = field(default_factory=lambda: {"SIMULATORAK": "simulator-secret"})
    temporary_credentials: Mapping[str, tuple[str, str]] = field(
        default_factory=lambda: {"SIMTEMPAK": ("simulator-temp-secret", "sim-security-token")}
    )
    expired_tokens: frozenset[str] = frozenset({"expired-token"})
    latency_ms: float = 0.0
    fault_rate: float = 0.0
    faults: tuple[str, ...] = FAULT_KINDS
    rate_limit: float | None = None
    stall_seconds: float = 35.0
    hostile_paging: bool = False
    quirks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.jobs < 0:
            raise ValueError("jobs must be >= 0")
        if self.days < 1:
            raise ValueError("days must be >= 1")
        if self.traffic not in TRAFFIC_KINDS:
            raise ValueError(f"traffic must be one of {TRAFFIC_KINDS}, got {self.traffic!r}")
        if not self.projects:
            raise ValueError("at least one project is required")
        if len(set(self.projects)) != len(self.projects):
            raise ValueError("project ids must be unique")
        if self.now is not None and self.now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("fault_rate must be within 0..1")
        unknown = set(self.faults) - set(FAULT_KINDS)
        if unknown or not self.faults:
            raise ValueError(f"faults must be a non-empty subset of {FAULT_KINDS}")
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ValueError("rate_limit must be > 0 requests/s (or None)")
        from .quirks import QUIRKS

        if set(self.quirks) - set(QUIRKS):
            raise ValueError(f"quirks must be a subset of {QUIRKS}")
        if self.latency_ms < 0 or self.stall_seconds < 0:
            raise ValueError("latency_ms and stall_seconds must be >= 0")

    def __repr__(self) -> str:  # secrets stay out of reprs and logs
        return (
            f"SimulatorConfig(jobs={self.jobs}, seed={self.seed}, projects={self.projects!r}, "
            f"days={self.days}, traffic={self.traffic!r}, latency_ms={self.latency_ms}, "
            f"fault_rate={self.fault_rate}, rate_limit={self.rate_limit}, hostile_paging={self.hostile_paging})"
        )
