"""The admin endpoints (``/_sim/...``): loopback clients only; calls that change state need a
JSON content type and the server's admin token.

A web page open in a browser on the same machine can send a loopback POST, but only a
"simple" one (text/plain, no custom header) unless the server allows it by CORS, which this
one never does; and it cannot learn the token.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

import orjson

from .access import error_body

if TYPE_CHECKING:
    from .server import SimulatorServer

#: Header that carries :attr:`SimulatorServer.admin_token` on admin calls that change state.
ADMIN_TOKEN_HEADER = "X-Sim-Admin-Token"
READ_ONLY_METHODS = ("GET", "HEAD")
_LOOPBACK_CLIENTS = ("127.0.0.1", "::1", "localhost")


def admin_answer(
    simulator: SimulatorServer,
    client: str,
    method: str,
    path: str,
    query: str,
    content_type: str,
    headers: Mapping[str, str],
    body: bytes,
) -> tuple[int, bytes]:
    """(status, JSON body) of one admin call from host ``client``."""
    refusal = _refusal(simulator, client, method, content_type, headers)
    if refusal is not None:
        return refusal
    args: dict = dict(parse_qsl(query, keep_blank_values=True))
    try:
        if path == "/_sim/advance" and method == "POST":
            fields = orjson.loads(body or b"{}")
            if not isinstance(fields, dict):
                raise ValueError("advance body must be a JSON object")
            args.update(fields)
            seed_step = int(args["seed_step"]) if args.get("seed_step") is not None else None
            result = simulator.state.advance(float(args.get("seconds", "0")), seed_step=seed_step)
        elif path == "/_sim/truth" and method == "GET":
            result = simulator.state.truth(args.get("project_id") or None)
        elif path == "/_sim/config" and method == "POST":
            changes = orjson.loads(body or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("config body must be a JSON object")
            simulator.configure(**changes)
            result = simulator.runtime_config()
        elif path == "/_sim/stats" and method == "GET":
            result = simulator.stats
        else:
            return 404, error_body("SIM.404", "No such admin endpoint.")
    except (ValueError, TypeError, KeyError) as exc:
        return 400, error_body("SIM.400", str(exc))
    return 200, orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS)


def _refusal(
    simulator: SimulatorServer, client: str, method: str, content_type: str, headers: Mapping[str, str]
) -> tuple[int, bytes] | None:
    """The answer refusing the call before anything is parsed or routed (so it changes nothing),
    or None when it may proceed."""
    if client not in _LOOPBACK_CLIENTS:
        return 403, error_body("SIM.403", "Admin endpoints answer loopback clients only.")
    if method in READ_ONLY_METHODS:
        return None
    if content_type != "application/json":
        return 415, error_body(
            "SIM.415", "Admin calls that change state take Content-Type: application/json."
        )
    sent = (headers.get(ADMIN_TOKEN_HEADER) or "").encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(sent, simulator.admin_token.encode()):
        return 403, error_body(
            "SIM.403",
            f"Admin calls that change state need the simulator's admin token in {ADMIN_TOKEN_HEADER}.",
        )
    return None
