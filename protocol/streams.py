"""Stream names, key layout and the Redis connection with explicit reconnects.

Key layout (contract, DESIGN.md section 2): everything of a run lives under `gpo:<run_id>:`.
A work stream is `gpo:<run_id>:{<name>}`; its dead-letter stream `...{<name>}:dead` and its
produced/acked counters `...{<name>}:produced|acked` carry the same Redis Cluster hash tag,
so an ack, its counter and a dead-letter write run atomically in one script on one slot.

A `redis+cluster://` (or `rediss+cluster://`) URL points at a Redis Cluster: the client is
then redis-py's `RedisCluster`, started from that one node, and nothing else changes. Every
multi-key operation (scripts, MGET) names keys of one hash tag, so of one slot; adapter
chunks are single-key commands (UNLINK of many is split per slot by the client).

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
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from protocol.config import RedisConfig
from protocol.metrics import TransportMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")

FIELD = b"m"  # the one field of a stream entry: the encoded message

PROMPTS = "prompts"
RESETS = "resets"
TRAJECTORIES = "trajectories"
SAMPLES = "samples"
WEIGHTS = "weights"
WORK_STREAMS = (PROMPTS, RESETS, TRAJECTORIES, SAMPLES)

GROUP_ACTORS = "actors"
GROUP_ESTIMATORS = "estimators"
GROUP_LEARNER = "learner"
GROUPS = {
    PROMPTS: GROUP_ACTORS,
    RESETS: GROUP_ACTORS,
    TRAJECTORIES: GROUP_ESTIMATORS,
    SAMPLES: GROUP_LEARNER,
}
"""The consumer group that reads each work stream."""


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

    def learner_lease(self) -> str:
        """The key the run's one learner holds (`learner.lease`)."""
        return f"{self.prefix}learner"

    def adapter_index(self) -> str:
        """Sorted set of every published chunk key, scored by version: old versions are
        deleted from it, never found by SCAN (SCAN sees one node of a cluster only)."""
        return f"{self.prefix}adapters"


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
    rex.ClusterDownError,  # a cluster failing over: its slots come back
    rex.TryAgainError,
    rex.RedisClusterException,  # only "cannot be connected" (`_is_transient`)
)
_FATAL_ERRORS = (rex.AuthenticationError, rex.AuthorizationError, rex.NoPermissionError)
_CREDENTIAL_WORDS = ("username-password", "WRONGPASS", "NOAUTH", "NOPERM", "no permissions")


def redact(url: str) -> str:
    """The URL with its password replaced, for logs and error messages."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


CLUSTER_SCHEMES = {"redis+cluster://": "redis://", "rediss+cluster://": "rediss://"}


def cluster_url(url: str) -> str | None:
    """For a `redis+cluster://` or `rediss+cluster://` URL, the plain URL of its start node."""
    for scheme, plain in CLUSTER_SCHEMES.items():
        if url.startswith(scheme):
            return plain + url[len(scheme) :]
    return None


def make_client(cfg: RedisConfig) -> aioredis.Redis | RedisCluster:
    """A redis-py asyncio client: no automatic retries, RESP2, bounded timeouts."""
    kwargs = dict(
        socket_timeout=cfg.socket_timeout,
        socket_connect_timeout=cfg.connect_timeout,
        retry=Retry(NoBackoff(), 0),
        protocol=2,
        decode_responses=False,
        health_check_interval=0,
    )
    if cfg.url.startswith(("rediss://", "rediss+cluster://")):
        if cfg.tls_ca_file:
            kwargs["ssl_ca_certs"] = cfg.tls_ca_file
        if cfg.tls_cert_file:
            kwargs["ssl_certfile"] = cfg.tls_cert_file
        if cfg.tls_key_file:
            kwargs["ssl_keyfile"] = cfg.tls_key_file
    if (start := cluster_url(cfg.url)) is not None:
        # MOVED/ASK redirects are followed inside the client whatever `retry` says; with
        # retries 0 a lost connection still surfaces here, to `Link.call`.
        return RedisCluster.from_url(start, **kwargs)
    return aioredis.Redis.from_url(cfg.url, retry_on_timeout=False, **kwargs)


async def close_client(client: aioredis.Redis | RedisCluster) -> None:
    """Close a client and every pooled connection (the cluster client owns its pools)."""
    if isinstance(client, RedisCluster):
        await client.aclose()
    else:
        await client.aclose(close_connection_pool=True)


class Link:
    """One process's connection to Redis. `call` runs an operation, reconnecting on loss.

    A call that fails with a connection error is retried after the reconnect. The caller
    must be fine with that: XADDs carry producer ids that consumers deduplicate, reads that
    were lost are found again in the own pending list, and acks are idempotent.

    A call Redis refuses at `maxmemory` (OOM) is backpressure, not a crash: Redis refuses a
    command (or a script, at its first write) before it changes anything, so the call is
    simply retried after a backoff, counted, and logged once per episode. Acks and trims are
    not refused (they free memory), so consumers keep draining meanwhile. While refused, the
    process also runs its *reliefs* (`add_oom_relief`: each consumer registers its trim), so
    entries every group has acknowledged are freed even when no ack comes (every process
    may be waiting on a write, and trims otherwise follow acks): without them, a Redis full
    of acknowledged but untrimmed entries deadlocks the run.
    """

    def __init__(self, cfg: RedisConfig, metrics: TransportMetrics | None = None):
        self.cfg = cfg
        self.metrics = metrics
        self.client = make_client(cfg)
        self.closed = asyncio.Event()
        self.oom_since: float | None = None
        """Monotonic time since which Redis refuses writes at maxmemory (None: it does not)."""
        self.give_up_at: float | None = None
        """Set when the process is stopping: reconnect attempts end at this monotonic time,
        so SIGTERM cannot hang on an unreachable Redis (unacked work is redelivered)."""
        self._reliefs: list[Callable[[], Awaitable[object]]] = []
        self._relieving = False

    def add_oom_relief(self, relief: Callable[[], Awaitable[object]]) -> None:
        """Run `relief` (a trim: it must free memory without writing) while Redis refuses
        writes at maxmemory."""
        self._reliefs.append(relief)

    async def _relieve(self) -> None:
        if self._relieving:  # a relief's own calls never start another round
            return
        self._relieving = True
        try:
            for relief in self._reliefs:
                try:
                    await relief()
                except Exception as e:  # best effort: the refused call is retried anyway
                    log.debug("OOM relief %r failed: %s", relief, e)
        finally:
            self._relieving = False

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
                _check_cluster_start(e, self.cfg.url)
                last = e
                await self._reset_client()
                await asyncio.sleep(min(0.5 * 2**i, self.cfg.reconnect_backoff_max))
        raise RedisFatalError(f"cannot reach Redis at {redact(self.cfg.url)}: {last}")

    async def call(self, op: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run `op(client)`; on a lost connection, reconnect with backoff and run it again.

        Once the process is stopping (`give_up_at` set), a call that failed is not tried
        again past that deadline: LinkClosed. A call Redis answers always goes through, so
        in-flight work that outlasts the grace (a long update) still commits."""
        delay = oom_delay = 0.1
        failed = False
        while True:
            if self.closed.is_set():
                raise LinkClosed("link closed")
            if failed and self.give_up_at is not None and time.monotonic() > self.give_up_at:
                raise LinkClosed("stopping, and Redis has not answered within the grace period")
            failed = True  # until the call below returns
            try:
                result = await op(self.client)
                if self.oom_since is not None and oom_delay > 0.1:
                    log.info(
                        "Redis accepts writes again after %.1fs at maxmemory",
                        time.monotonic() - self.oom_since,
                    )
                    self.oom_since = None
                return result
            except rex.OutOfMemoryError as e:
                if self.oom_since is None:
                    self.oom_since = time.monotonic()
                    log.warning(
                        "Redis is at maxmemory and refuses writes (%s); waiting and retrying: "
                        "raise maxmemory or lower redis.backlog_limit if this persists",
                        e,
                    )
                if self.metrics:
                    self.metrics.oom_waits.inc()
                await self._relieve()
                await self._sleep(oom_delay * (0.5 + random.random()))
                oom_delay = min(oom_delay * 2, self.cfg.reconnect_backoff_max)
            except _FATAL_ERRORS as e:
                raise RedisFatalError(f"Redis at {redact(self.cfg.url)}: {e}") from None
            except _RECONNECT_ERRORS as e:
                if not _is_transient(e):
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
            await close_client(old)

    async def close(self) -> None:
        self.closed.set()
        await close_client(self.client)


def _is_transient(e: Exception) -> bool:
    """A reconnect error worth retrying (RuntimeError and RedisClusterException also report
    programming errors: a closed event loop, keys of one call in different slots)."""
    if isinstance(e, rex.RedisClusterException):
        return "cannot be connected" in str(e)
    if isinstance(e, RuntimeError):
        text = str(e).lower()
        return any(w in text for w in ("transport", "closed", "connection"))
    return True


def _check_cluster_start(e: Exception, url: str) -> None:
    """The cluster client wraps start-up failures in RedisClusterException: a refused login
    or a node without cluster mode is a user mistake, not something to wait out."""
    if not isinstance(e, rex.RedisClusterException):
        return
    text = str(e)
    if any(w in text for w in _CREDENTIAL_WORDS):
        raise RedisFatalError(f"Redis at {redact(url)} refused the credentials: {text}") from None
    if "not enabled" in text:
        raise RedisFatalError(f"{redact(url)} is not a Redis Cluster node: {text}") from None
    if not _is_transient(e):
        raise e


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
