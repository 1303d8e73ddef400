"""The embedded Postgres (with pgvector) used when DATABASE_URL is not set.

pgserver ships PostgreSQL and pgvector in its wheel and runs them from a data folder.
The server process is left running on exit (``cleanup_mode=None``) so the next start
reuses it and its data; ``stop`` exists for tests.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any


def start(datadir: Path, *, keep_running: bool = True) -> tuple[str, Any]:
    """Start (or reuse) Postgres in ``datadir``; return its URL and the server handle."""
    import os

    # platformdirs (used by pgserver) warns when XDG_RUNTIME_DIR is unset, as in CI.
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    import pgserver  # heavy import; only the embedded path pays it

    datadir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(  # type: ignore[attr-defined]
        datadir, cleanup_mode=None if keep_running else "stop"
    )
    return str(server.get_uri()), server
