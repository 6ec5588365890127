"""Stream names, key layout and the Redis connection with explicit reconnects.

Key layout (contract, DESIGN.md section 2): everything of a run lives under `gpo:<run_id>:`.
A work stream is `gpo:<run_id>:{<name>}`; its dead-letter stream `...{<name>}:dead` and its
produced/acked counters `...{<name>}:produced|acked` carry the same Redis Cluster hash tag,
so an ack, its counter and a dead-letter write run atomically in one script on one slot.

The client runs with redis-py's automatic retries off and RESP2 (`protocol=2`): retries
duplicate XADDs and hide XREADGROUP deliveries, and redis-py 8.1 under RESP3 fails the first
command after a server restart (RELIABILITY.md). `Link.call` is the one place that
reconnects, with exponential backoff, on a lost connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from protocol.config import RedisConfig
from protocol.metrics import TransportMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")

PROMPTS = "prompts"
RESETS = "resets"
TRAJECTORIES = "trajectories"
SAMPLES = "samples"
WEIGHTS = "weights"
WORK_STREAMS = (PROMPTS, RESETS, TRAJECTORIES, SAMPLES)

GROUP_ACTORS = "actors"
GROUP_ESTIMATORS = "estimators"
GROUP_LEARNER = "learner"


class Keys:
    """Every Redis key name of one run."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.prefix = f"gpo:{run_id}:"

    def stream(self, name: str) -> str:
        return f"{self.prefix}{{{name}}}"

    def dead(self, name: str) -> str:
        return self.stream(name) + ":dead"

    def produced(self, name: str) -> str:
        return self.stream(name) + ":produced"

    def acked(self, name: str) -> str:
        return self.stream(name) + ":acked"

    def adapter_chunk(self, version: int, index: int) -> str:
        return f"{self.prefix}adapter:{version}:{index}"


class RedisFatalError(RuntimeError):
    """A Redis problem that retrying cannot fix (wrong password, missing permission)."""


class LinkClosed(RuntimeError):
    """The link was closed (the process is stopping) while a call waited to reconnect."""


# Errors after which the connection is dropped and rebuilt. uvloop and asyncio report a
# transport closed under our feet as RuntimeError (RELIABILITY.md).
_RECONNECT_ERRORS = (
    rex.ConnectionError,
    rex.TimeoutError,
    OSError,
    asyncio.TimeoutError,
    RuntimeError,
)
_FATAL_ERRORS = (rex.AuthenticationError, rex.AuthorizationError, rex.NoPermissionError)


def redact(url: str) -> str:
    """The URL with its password replaced, for logs and error messages."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def make_client(cfg: RedisConfig) -> aioredis.Redis:
    """A redis-py asyncio client: no automatic retries, RESP2, bounded timeouts."""
    kwargs = dict(
        socket_timeout=cfg.socket_timeout,
        socket_connect_timeout=cfg.connect_timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        protocol=2,
        decode_responses=False,
        health_check_interval=0,
    )
    if cfg.url.startswith("rediss://"):
        if cfg.tls_ca_file:
            kwargs["ssl_ca_certs"] = cfg.tls_ca_file
        if cfg.tls_cert_file:
            kwargs["ssl_certfile"] = cfg.tls_cert_file
        if cfg.tls_key_file:
            kwargs["ssl_keyfile"] = cfg.tls_key_file
    return aioredis.Redis.from_url(cfg.url, **kwargs)


class Link:
    """One process's connection to Redis. `call` runs an operation, reconnecting on loss.

    A call that fails with a connection error is retried after the reconnect. The caller
    must be fine with that: XADDs carry producer ids that consumers deduplicate, reads that
    were lost are found again in the own pending list, and acks are idempotent.
    """

    def __init__(self, cfg: RedisConfig, metrics: TransportMetrics | None = None):
        self.cfg = cfg
        self.metrics = metrics
        self.client = make_client(cfg)
        self.closed = asyncio.Event()

    async def connect(self, attempts: int = 3) -> None:
        """Check the server answers (PING), failing fast with a clear message if not."""
        last: Exception | None = None
        for i in range(attempts):
            try:
                await self.client.ping()
                return
            except _FATAL_ERRORS as e:
                raise RedisFatalError(
                    f"Redis at {redact(self.cfg.url)} refused the credentials: {e}"
                ) from None
            except rex.ResponseError as e:
                if "NOAUTH" in str(e) or "WRONGPASS" in str(e):
                    raise RedisFatalError(
                        f"Redis at {redact(self.cfg.url)} needs a password: {e}"
                    ) from None
                raise
            except _RECONNECT_ERRORS as e:
                last = e
                await self._reset_client()
                await asyncio.sleep(min(0.5 * 2**i, self.cfg.reconnect_backoff_max))
        raise RedisFatalError(f"cannot reach Redis at {redact(self.cfg.url)}: {last}")

    async def call(self, op: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run `op(client)`; on a lost connection, reconnect with backoff and run it again."""
        delay = 0.1
        while True:
            if self.closed.is_set():
                raise LinkClosed("link closed")
            try:
                return await op(self.client)
            except _FATAL_ERRORS as e:
                raise RedisFatalError(f"Redis at {redact(self.cfg.url)}: {e}") from None
            except _RECONNECT_ERRORS as e:
                if isinstance(e, RuntimeError) and not _is_transport_error(e):
                    raise
                log.warning(
                    "redis connection lost (%s: %s); reconnecting in %.1fs",
                    type(e).__name__,
                    e,
                    delay,
                )
                if self.metrics:
                    self.metrics.reconnects.inc()
                await self._reset_client()
                await self._sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.cfg.reconnect_backoff_max)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.closed.wait(), timeout=seconds)
        except TimeoutError:
            return
        raise LinkClosed("link closed")

    async def _reset_client(self) -> None:
        """Drop every pooled connection: after a server restart none of them is usable."""
        old, self.client = self.client, make_client(self.cfg)
        with contextlib.suppress(Exception):  # the old pool is dead anyway; nothing to report
            await old.aclose(close_connection_pool=True)

    async def close(self) -> None:
        self.closed.set()
        await self.client.aclose(close_connection_pool=True)


def _is_transport_error(e: RuntimeError) -> bool:
    text = str(e).lower()
    return any(w in text for w in ("transport", "closed", "connection"))


def is_nogroup(e: BaseException) -> bool:
    return isinstance(e, rex.ResponseError) and "NOGROUP" in str(e)


def run_async(main: Awaitable[T], use_uvloop: bool = True) -> T:
    """Run a process's main coroutine, on uvloop when it is installed."""
    factory = None
    if use_uvloop:
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
