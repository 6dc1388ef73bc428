"""voicejobs: Huawei Cloud MetaStudio voice-training jobs into a DuckDB warehouse and a Parquet lake."""

import sys

# httpx imports its command-line client whenever it is imported (click, rich and pygments: about
# 0.09 s, a sixth of a one-day sync's imports), and nothing here runs it. With that module marked
# absent before httpx is first imported, httpx defines its own stub instead, as it does for an
# install without its "cli" extra. Only this process is affected: the `httpx` command runs in
# one of its own, and where httpx was imported first this changes nothing.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
