"""Hostile paging: between two pages of one listing, a job of the listed set disappears and
another appears, back-dated into the requested window."""

from __future__ import annotations

import random

import numpy as np

from .listing import select
from .params import ListParams
from .table import COLUMNS, DAY_MS, JobTable


def hostile_mutation(
    table: JobTable, project: int, params: ListParams, app_user: str | None, now_ms: int, rnd: random.Random
) -> dict | None:
    """Delete one listed job of the requested set and back-date a new one into its window.

    The victim is sometimes on a page already served (rank < offset), sometimes not yet; the
    new job copies the victim's attributes so it matches the same filters, and gets a creation
    (and update) time inside the requested window. Returns ``{"deleted": job_id, "created":
    job_id | None}`` or None when the set is empty.
    """
    count, ordered = select(table, project, params, app_user, everything=True)
    if count == 0:
        return None
    if params.offset > 0 and (params.offset >= count or rnd.random() < 0.5):
        rank = rnd.randrange(min(params.offset, count))
    else:
        rank = rnd.randrange(min(params.offset, count - 1), count)
    victim = int(ordered[rank])
    creates = table.cols["create_ms"][ordered]
    victim_id = table.job_id(victim)
    table.delete(np.array([victim]))
    new_row = (
        None
        if params.job_id is not None
        else _backdate(table, victim, params, int(creates.min()), int(creates.max()), now_ms, rnd)
    )
    return {"deleted": victim_id, "created": None if new_row is None else table.job_id(new_row)}


def _backdate(
    table: JobTable, template: int, params: ListParams, first: int, last: int, now: int, rnd: random.Random
) -> int | None:
    """Append a copy of row ``template`` created inside the request's window (between ``first``
    and ``last`` where the request leaves it open) and updated within its update window."""
    c_lo = params.create_since if params.create_since is not None else first
    c_hi = min(params.create_until if params.create_until is not None else last, now)
    u_lo = params.update_since if params.update_since is not None else c_lo
    u_hi = min(params.update_until if params.update_until is not None else now, now)
    c_hi = min(c_hi, u_hi)
    if c_lo > c_hi:
        return None
    create = rnd.randint(c_lo, c_hi)
    low = max(create, u_lo)
    if low > u_hi:
        return None
    update = rnd.randint(low, min(u_hi, max(low, create + 3 * DAY_MS)))
    row = {name: table.cols[name][template] for name in COLUMNS}
    row.update(
        id_hi=rnd.getrandbits(64),
        id_lo=rnd.getrandbits(64),
        salt=rnd.getrandbits(63),
        create_ms=create,
        update_ms=update,
        secs=False,
        deleted=False,
    )
    rows = table.append({name: np.array([value], dtype=COLUMNS[name]) for name, value in row.items()})
    return int(rows[0])
