"""Typed configuration: TOML sections into frozen dataclasses, and the Redis settings.

Every process has one config dataclass whose fields carry a one-line docstring with the
unit. `from_mapping` builds one from a TOML table and refuses unknown keys and wrong types
with a `ConfigError` that names the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration mistake a user can fix; the message says which key and why."""


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing file or bad syntax is a ConfigError, not a traceback."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None


def parse_set_value(raw: str) -> Any:
    """The value of a `--set SECTION.KEY=VALUE` flag: TOML syntax (`3`, `true`, `"x"`,
    `[1, 2]`), else the bare word as a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_sets(data: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """Apply `--set SECTION.KEY=VALUE` items onto a loaded TOML mapping, in place (nested
    tables are made as needed); returns `data`."""
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        *path, leaf = key.split(".")
        nested_table(data, path, f"--set {key}")[leaf] = parse_set_value(raw)
    return data


def nested_table(data: dict[str, Any], path: list[str], where: str) -> dict[str, Any]:
    """The table at `path` in `data` (`["actor", "rollout"]`), made where missing; a value
    in the way is a ConfigError naming `where`."""
    table = data
    for part in path:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: {part!r} is not a table")
    return table


def from_mapping(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from a mapping, checking keys and types; nested dataclasses recurse."""
    data = dict(data or {})
    where = where or cls.__name__
    hints = typing.get_type_hints(cls, globalns=vars(sys.modules[cls.__module__]))
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"[{where}] unknown key(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    values = {}
    for name in names & set(data):
        values[name] = _coerce(hints[name], data[name], f"{where}.{name}")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[{where}] {e}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return from_mapping(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(
                f"{where}: must be one of {', '.join(map(repr, args))}, got {value!r}"
            )
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is float and type(value) is int:
        return float(value)
    if hint is dict and isinstance(value, dict):
        return value
    if type(value) is not hint:
        raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """TOML section `[metrics]`, read by every process (`--metrics-host` overrides `host`)."""

    host: str = "127.0.0.1"
    """Address the /metrics and /healthz server binds: loopback by default, so a process
    exposes nothing beyond its machine unless asked; a Prometheus on another host (a pod
    scraped by its IP) needs "0.0.0.0" or the interface's own address."""

    def __post_init__(self) -> None:
        if not self.host.strip():
            raise ConfigError("metrics.host must name an address, e.g. 127.0.0.1 or 0.0.0.0")


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """How a process talks to Redis. Shared by every process (TOML section `[redis]`)."""

    url: str = "redis://127.0.0.1:6379/0"
    """redis:// or rediss:// URL; user and password may be in it. `redis+cluster://` or
    `rediss+cluster://` names one node of a Redis Cluster (the others are discovered)."""
    run_id: str = "default"
    """Namespace of every key: `gpo:<run_id>:...`; processes of one run share it."""
    socket_timeout: float = 10.0
    """Seconds a single Redis call may take before the connection counts as lost."""
    connect_timeout: float = 5.0
    """Seconds to establish a connection."""
    block_ms: int = 2000
    """XREADGROUP BLOCK in milliseconds; must stay well below socket_timeout."""
    batch_size: int = 16
    """Most entries one read returns."""
    claim_idle: float = 60.0
    """Seconds an entry may sit unacknowledged before another consumer takes it over."""
    pending_check_interval: float = 15.0
    """Seconds between re-reads of the own pending list and XAUTOCLAIM sweeps."""
    max_deliveries: int = 5
    """Deliveries after which an entry goes to `<stream>:dead`. The learner allows
    ceil(log2 largest batch) + 1 more on `samples`: the deaths a bisection of a batch it
    keeps dying on takes (learner/bisect.py)."""
    backlog_limit: int = 1000
    """Producers wait while a stream's unacknowledged backlog is at or above this."""
    backlog_limits: dict = field(default_factory=dict)
    """Per-stream overrides of backlog_limit, e.g. `{trajectories = 64, samples = 512}`. The
    learner holds up to checkpoint_every x batch_size samples unacked: allow at least that."""
    trim_interval: float = 10.0
    """Seconds between trims of a consumed stream: its consumers delete the entries every
    group has acknowledged (XTRIM MINID at the oldest pending or undelivered entry, never
    one still to be processed), so Redis memory plateaus however long the run. 0 keeps every
    entry, for audits that read the streams afterwards (the fault tests, `gpo bench chaos`)."""
    dead_letter_maxlen: int = 10_000
    """Most entries kept in each `<stream>:dead` stream (the oldest go first; the
    `messages_dead_lettered_total` metric still counts every one)."""
    max_message_bytes: int = 16 * 1024 * 1024
    """Largest message accepted by decode."""
    reconnect_backoff_max: float = 5.0
    """Cap of the exponential backoff between reconnect attempts, in seconds."""
    tls_ca_file: str | None = None
    """CA bundle for rediss:// (default: system store)."""
    tls_cert_file: str | None = None
    """Client certificate for mutual TLS."""
    tls_key_file: str | None = None
    """Key of the client certificate."""

    def backlog_limit_for(self, stream: str) -> int:
        return self.backlog_limits.get(stream, self.backlog_limit)

    def __post_init__(self) -> None:
        schemes = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
        if not self.url.startswith(schemes):
            raise ConfigError(f"redis.url must start with {', '.join(schemes)}; got {self.url!r}")
        if not self.run_id or any(c in self.run_id for c in "{}: \t\n"):
            raise ConfigError(
                f"redis.run_id must be non-empty without braces, colons or spaces: {self.run_id!r}"
            )
        # A BLOCK that reaches the socket timeout turns every idle read into a TimeoutError
        # (redis-py 8 defaults did exactly that); keep a margin of a second or a quarter.
        margin = max(1.0, 0.25 * self.socket_timeout)
        if self.block_ms / 1000 + margin > self.socket_timeout:
            raise ConfigError(
                f"redis.block_ms ({self.block_ms} ms) must be at least {margin:.1f} s below "
                f"redis.socket_timeout ({self.socket_timeout} s)"
            )
        names = ("batch_size", "max_deliveries", "backlog_limit", "max_message_bytes")
        for name in (*names, "dead_letter_maxlen"):
            if getattr(self, name) < 1:
                raise ConfigError(f"redis.{name} must be >= 1")
        for stream, limit in self.backlog_limits.items():
            if type(limit) is not int or limit < 1:
                raise ConfigError(f"redis.backlog_limits.{stream} must be an integer >= 1")
        if self.trim_interval < 0:
            raise ConfigError("redis.trim_interval must be >= 0 (0: never trim)")
        if self.claim_idle <= 0 or self.pending_check_interval <= 0:
            raise ConfigError("redis.claim_idle and redis.pending_check_interval must be > 0")
