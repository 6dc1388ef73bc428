"""Where Arrow's buffers come from while the sync and the lake export work: the C library's malloc.

pyarrow's default pool, its bundled mimalloc, keeps memory it freed mapped for reuse. The sync
frees a batch's buffers every few seconds and the export a group's: a 200,000-job sync peaked
at 416 MB with mimalloc and 368 MB with malloc, and a million-job ``rebuild_lake()`` alone at
362 MB and 309-319 MB, each at the same speed. What Arrow's C++ allocates from its own default
pool, out of pyarrow's reach (the Parquet writer's column encoders), is on malloc too where
pipelines was imported before pyarrow (the package sets ARROW_DEFAULT_MEMORY_POOL, see
pipelines/__init__.py); where pyarrow came first, it stays on mimalloc.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa


@contextmanager
def arrow_on_malloc() -> Iterator[None]:
    """Arrow allocates from malloc for the block; the process's pool is back after, also on error.

    The pool is the process's: other threads' Arrow work meanwhile allocates from malloc too,
    which is harmless (a buffer goes back to the pool that allocated it). Blocks nest."""
    usual = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(usual)
