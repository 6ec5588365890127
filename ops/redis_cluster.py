"""A private Redis Cluster on loopback: N primaries, no replicas, for tests and trials.

Each node is a `RedisServer` with `--cluster-enabled yes`, its own directory and
`nodes.conf`, and an explicit cluster-bus port (the default, port + 10000, can fall outside
the port range for the ephemeral ports tests use). `redis-cli --cluster create` spreads the
16384 slots over the nodes; `start` returns once every node reports `cluster_state:ok`.

    cluster = LocalCluster(tmp / "cluster").start()
    cluster.url        # redis+cluster://127.0.0.1:<first port>/0, what gpo processes take
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from redis.cluster import RedisCluster

from ops.redis_server import RedisServer, free_port


class LocalCluster:
    """`primaries` redis-server processes joined into one cluster."""

    def __init__(self, directory: Path, primaries: int = 3):
        self.dir = Path(directory)
        self.nodes = [
            RedisServer(
                self.dir / f"node{i}",
                extra=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                    "--cluster-port",
                    str(free_port()),
                ),
            )
            for i in range(primaries)
        ]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self, timeout: float = 30.0) -> LocalCluster:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not on PATH (Debian: apt-get install redis-tools)")
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [n.client().execute_command("CLUSTER INFO") for n in self.nodes]
            if all(_state(s) == "ok" for s in states):
                return self
            time.sleep(0.1)
        raise RuntimeError("the cluster did not reach cluster_state:ok in time")

    def client(self) -> RedisCluster:
        """A synchronous cluster client for test assertions (RESP2, short timeouts)."""
        return RedisCluster(
            host="127.0.0.1",
            port=self.nodes[0].port,
            protocol=2,
            socket_timeout=5,
            socket_connect_timeout=2,
        )

    def node_of(self, key: str) -> int:
        """Index of the node that serves `key`'s slot."""
        c = self.nodes[0].client()
        slot = int(c.execute_command("CLUSTER KEYSLOT", key))
        ports = [n.port for n in self.nodes]
        for start, end, primary, *_ in c.execute_command("CLUSTER SLOTS"):
            if int(start) <= slot <= int(end):
                return ports.index(int(primary[1]))
        raise LookupError(f"no node serves slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _state(info) -> str:
    text = info.decode() if isinstance(info, bytes) else str(info)
    if isinstance(info, dict):
        return str(info.get("cluster_state"))
    for line in text.splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return ""
