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
    try:
        import pgserver  # heavy import; only the embedded path pays it
    except ImportError:
        raise SystemExit(
            "DATABASE_URL is not set and the embedded Postgres is not installed: "
            "set DATABASE_URL or `pip install 'chat-server[embedded]'`"
        ) from None

    datadir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(  # type: ignore[attr-defined]
        datadir, cleanup_mode=None if keep_running else "stop"
    )
    return str(server.get_uri()), server


def stop(datadir: Path, timeout_s: float = 30.0) -> bool:
    """Fast-shutdown a Postgres left running in ``datadir``; False if none was running."""
    import os
    import signal
    import time

    pid_file = datadir / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGINT)  # SIGINT = "fast" shutdown: roll back, then exit
    except (FileNotFoundError, IndexError, ValueError, ProcessLookupError):
        return False
    deadline = time.monotonic() + timeout_s
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return True
