"""The embedded Postgres (with pgvector) used when DATABASE_URL is not set.

pgserver ships PostgreSQL and pgvector in its wheel and runs them from a data folder.
The server process is left running on exit (``cleanup_mode=None``) so the next start
reuses it and its data; ``stop`` exists for tests.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

UNAVAILABLE = (
    "the embedded Postgres (pgserver) is not installed; it ships for Linux x86_64 and "
    "CPython 3.11-3.12 only: set DATABASE_URL to a Postgres with pgvector"
)


class Unavailable(RuntimeError):
    """The embedded Postgres cannot run here (not installed, or it failed to start)."""


def available() -> bool:
    return importlib.util.find_spec("pgserver") is not None


def start(datadir: Path, *, keep_running: bool = True) -> tuple[str, Any]:
    """Start (or reuse) Postgres in ``datadir``; return its URL and the server handle."""
    import os

    # platformdirs (used by pgserver) warns when XDG_RUNTIME_DIR is unset (as in CI) or
    # is not private (mode 0700), as /tmp is not.
    if "XDG_RUNTIME_DIR" not in os.environ:
        runtime = Path(tempfile.gettempdir(), f"chat-server-runtime-{os.getuid()}")
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        import pgserver  # heavy import; only the embedded path pays it
    except ImportError:
        raise Unavailable(UNAVAILABLE) from None

    try:
        datadir.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(  # type: ignore[attr-defined]
            datadir, cleanup_mode=None if keep_running else "stop"
        )
    except Exception as exc:  # initdb/pg_ctl failures, a data folder we cannot write
        detail = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
        raise Unavailable(f"the embedded Postgres in {datadir} did not start: {detail[0]}") from exc
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
