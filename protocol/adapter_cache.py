"""One fetch per host: the adapter versions one process of a machine fetched, for the others.

Every actor and estimator follows the `weights` stream. Fetching each version from Redis in
every process makes Redis egress grow with processes (8 GPUs, 8 actors: 8 copies of every
version). With a host cache it grows with machines: for each version, the first process
to want it takes the version's lock (an `flock`, which the kernel drops if its holder dies),
fetches it from Redis, writes it to `<root>/<scope>/<version>-<sha256>.safetensors` (a
temporary file renamed into place, so a reader never sees a partial file) and lets go;
every other process waits for the lock, then reads the file.

A file is verified on every read, against the pointer's size and sha256; one that fails
(torn by a crash, changed on disk) is deleted and the version fetched again. So the cache
needs no fsync and trusts nothing it did not check.

`scope` is a hash of the Redis address and run id: two runs, or two test servers that both
call their run `t`, never share files. Each write keeps the newest `keep` versions of its
scope and deletes the scopes nobody wrote to for a day.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from protocol.messages import AdapterPointer
from protocol.streams import redact

log = logging.getLogger(__name__)

STALE_SCOPE_SECONDS = 24 * 3600


def default_root() -> Path:
    """`<tmp>/gpo-adapters-<uid>`: one per user, so no user reads another's directory."""
    return Path(tempfile.gettempdir()) / f"gpo-adapters-{os.getuid()}"


class HostCache:
    """Adapter files shared by the processes of one machine, for one run on one Redis."""

    def __init__(self, root: Path, scope: str, keep: int = 3, lock_timeout: float = 120.0):
        self.root, self.dir = root, root / scope
        self.keep, self.lock_timeout = keep, lock_timeout

    @classmethod
    def for_run(cls, setting: str, redis_url: str, run_id: str) -> HostCache | None:
        """The cache `fetch.host_cache` names (`auto`, a directory, or `off`: None)."""
        if setting == "off":
            return None
        root = default_root() if setting == "auto" else Path(setting).expanduser()
        scope = hashlib.sha256(f"{redact(redis_url)}\n{run_id}".encode()).hexdigest()[:16]
        return cls(root, scope)

    def path(self, pointer: AdapterPointer) -> Path:
        return self.dir / f"{pointer.version:010d}-{pointer.sha256}.safetensors"

    async def get_or_fetch(
        self, pointer: AdapterPointer, fetch: Callable[[], Awaitable[memoryview]]
    ) -> tuple[memoryview | bytearray, str]:
        """The blob of `pointer` and where it came from: `hit` (a verified file), `fetched`
        (this process called `fetch` and shared the result), or `bad` (a file failed
        verification, so this process fetched the version again)."""
        try:
            blob, outcome = await asyncio.to_thread(self.read, pointer)
            if blob is not None:
                return blob, outcome
            lock = await self._lock(pointer)
        except OSError as e:  # an unusable directory costs sharing, never the version
            log.warning("host cache %s unusable (%s); fetching from Redis", self.dir, e)
            return await fetch(), "fetched"
        try:
            again = "miss"
            if lock is not None:  # whoever held the lock may have fetched it meanwhile
                try:
                    blob, again = await asyncio.to_thread(self.read, pointer)
                except OSError:
                    blob = None
                if blob is not None:
                    return blob, again
            outcome = "bad" if "bad" in (outcome, again) else "fetched"
            blob = await fetch()
            try:
                await asyncio.to_thread(self.write, pointer, blob)
            except OSError as e:  # a full or read-only disk costs sharing, never the version
                log.warning("host cache: cannot write %s: %s", self.path(pointer), e)
            return blob, outcome
        finally:
            if lock is not None:
                os.close(lock)  # releases the flock

    def read(self, pointer: AdapterPointer) -> tuple[bytearray | None, str]:
        """The verified file of `pointer`, or None with `miss`, or `bad` when a file was
        there and failed verification (it is deleted)."""
        path = self.path(pointer)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                blob = bytearray(size) if size == pointer.size else None
                ok = blob is not None and f.readinto(blob) == size
        except FileNotFoundError:
            return None, "miss"
        if ok and hashlib.sha256(blob).hexdigest() == pointer.sha256:
            return blob, "hit"
        log.warning("host cache: %s failed verification; fetching it again", path)
        path.unlink(missing_ok=True)
        return None, "bad"

    def write(self, pointer: AdapterPointer, blob: memoryview | bytearray | bytes) -> None:
        """Write `blob` as `pointer`'s file (temporary file, then rename), then prune."""
        self._mkdir()
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, self.path(pointer))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._prune(pointer.version - self.keep)

    async def _lock(self, pointer: AdapterPointer) -> int | None:
        """An fd holding the version's flock, or None after `lock_timeout` (its holder hangs:
        this process then fetches on its own)."""
        self._mkdir()
        path = self.path(pointer).with_suffix(".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    log.warning(
                        "host cache: %s held for %.0fs; fetching alone", path, self.lock_timeout
                    )
                    return None
                await asyncio.sleep(0.01)

    def _mkdir(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.dir.mkdir(mode=0o700, exist_ok=True)

    def _prune(self, newest_to_delete: int) -> None:
        now = time.time()
        for path in self.dir.iterdir():
            version = path.name.partition("-")[0]
            old = version.isdigit() and int(version) <= newest_to_delete
            try:  # a partial file left by a process killed while writing it
                orphan = path.name.startswith(".partial-") and now - path.stat().st_mtime > 3600
            except OSError:
                continue
            if old or orphan:
                path.unlink(missing_ok=True)
        for scope in self.root.iterdir():
            try:
                stale = scope != self.dir and now - scope.stat().st_mtime > STALE_SCOPE_SECONDS
            except OSError:
                continue
            if stale and scope.is_dir():
                shutil.rmtree(scope, ignore_errors=True)
