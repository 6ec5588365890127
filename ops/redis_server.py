"""A private redis-server: free loopback port, own directory, optional AOF, password, TLS.

Tests kill it (`kill9`), freeze it (`pause`/`resume`: SIGSTOP/SIGCONT) and restart it
on the same port and directory, so they can check what survives and who recovers.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        directory / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")
    )
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
        "-days",
        "2",
        "-subj",
        "/CN=gpo-test-ca",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/CN=127.0.0.1",
    )
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    return TlsFiles(ca=ca, cert=cert, key=key)


class RedisServer:
    """One redis-server process the test owns."""

    def __init__(
        self,
        directory: Path,
        *,
        aof: bool = False,
        password: str | None = None,
        username: str | None = None,
        tls: TlsFiles | None = None,
        aclfile: Path | None = None,
        extra: tuple[str, ...] = (),
    ):
        """`aclfile`: start with this ACL file (`username`/`password` then name the user that
        `url` and `client()` log in as); otherwise `username` gets a generated one."""
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.aof, self.password, self.username, self.tls, self.extra = (
            aof,
            password,
            username,
            tls,
            extra,
        )
        self.aclfile = aclfile
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f"{self.username or ''}:{self.password}@" if self.password else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not on PATH (Debian: apt-get install redis-server)")
        # secrets go in files only readable by us, never on the command line (ps shows it)
        secret_conf = []
        if self.password and not self.username and not self.aclfile:
            conf = self.dir / "auth.conf"
            _write_private(conf, f"requirepass {self.password}\n")
            secret_conf = [str(conf)]  # a config file must be redis-server's first argument
        args = [
            exe,
            *secret_conf,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.dir / "redis.log"),
            "--appendonly",
            "yes" if self.aof else "no",
            "--appendfsync",
            "everysec",
        ]
        if self.tls:
            args += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.tls.cert),
                "--tls-key-file",
                str(self.tls.key),
                "--tls-ca-cert-file",
                str(self.tls.ca),
                "--tls-auth-clients",
                "no",
            ]
        else:
            args += ["--port", str(self.port)]
        if self.aclfile:
            args += ["--aclfile", str(self.aclfile)]
        elif self.username:  # an ACL user with every right on the run's keys; the default user off
            acl = self.dir / "users.acl"
            _write_private(
                acl, f"user default off\nuser {self.username} on >{self.password} ~gpo:* &* +@all\n"
            )
            args += ["--aclfile", str(acl)]
        return args + list(self.extra)

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start redis-server in its own session (a Ctrl-C at the terminal reaches the
        launcher and its workers, which drain into a Redis that is still up) and wait for
        its PING; a server that does not answer in time is killed, never left behind."""
        self.proc = subprocess.Popen(
            self.args(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.dir / "redis.log"
                raise RuntimeError(
                    "redis-server exited: " + (log.read_text()[-2000:] if log.is_file() else "")
                )
            try:
                if self.client().ping():
                    return self
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError):
                time.sleep(0.05)
        self.proc.kill()
        self.proc.wait(10)
        raise RuntimeError(f"redis-server did not answer PING within {timeout:g} s")

    def cmdline(self) -> list[str]:
        """The running server's command line, as every user of the machine sees it."""
        assert self.proc is not None
        return Path(f"/proc/{self.proc.pid}/cmdline").read_bytes().decode().split("\0")

    def client(self, **kw) -> redis.Redis:
        """A synchronous client for test assertions (short timeouts, RESP2)."""
        kw.setdefault("socket_timeout", 5)
        kw.setdefault("socket_connect_timeout", 2)
        if self.tls:
            kw.setdefault("ssl_ca_certs", str(self.tls.ca))
        return redis.Redis.from_url(self.url, protocol=2, **kw)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> RedisServer:
        """kill -9 and start again on the same port and directory."""
        if self.proc and self.proc.poll() is None:
            self.kill9()
        return self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _write_private(path: Path, text: str) -> None:
    """Write `text` to a file only the owner can read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def is_memory_size(value: str) -> bool:
    """A size redis-server takes (maxmemory): a whole number, optionally with b, k, kb, m,
    mb, g or gb; it refuses anything else at start."""
    return re.fullmatch(r"[1-9]\d*(b|[kmg]b?)?", value, re.IGNORECASE) is not None
