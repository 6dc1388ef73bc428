"""voicejobs: Huawei Cloud MetaStudio voice-training jobs into a DuckDB warehouse and a Parquet lake."""

import os
import sys

# httpx imports its command-line client whenever it is imported (click, rich and pygments: about
# 0.09 s, a sixth of a one-day sync's imports), and nothing here runs it. With that module marked
# absent before httpx is first imported, httpx defines its own stub instead, as it does for an
# install without its "cli" extra. Only this process is affected: the `httpx` command runs in
# one of its own, and where httpx was imported first this changes nothing.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

# Arrow's C++ code takes memory from its process-wide default pool wherever pyarrow passes none
# of its own: the Parquet writer's column encoders do (pyarrow hands its pool to the file writer,
# not to the columns). That pool is mimalloc, which keeps what it freed mapped: at the peak of a
# million-job sync's lake export it held 45 MB, and that phase peaked at 288-303 MB; with the C
# library's malloc instead, at 261-262 MB in the same time (in-process runs, RSS sampled every
# 20 ms). Arrow reads the variable once, when it first needs that pool, so it is set before
# pyarrow is imported; a value of one's own (jemalloc, mimalloc) is kept, and where pyarrow was
# imported first this changes nothing.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
