"""Multi-process training through torch.distributed (launch with `torchrun`).

Rank 0 is the learner process that talks to Redis; every other rank only trains. For each
update rank 0 broadcasts the batch as codec bytes (the same msgpack the streams carry: no
pickle, unlike `broadcast_object_list`), every rank decodes the same list, and `ppo_update`
splits the micro-batches between ranks. An empty broadcast tells the other ranks to stop.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from learner.train import World
from protocol.codec import CodecLimits, decode, encode
from protocol.messages import Sample


def init_world(device: str) -> World:
    """Join the process group that torchrun describes in the environment (or run alone)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    return World(dist.get_rank(), dist.get_world_size())


def rank_device(device: str, world: World) -> str:
    """`cuda` becomes `cuda:<local rank>` under torchrun; anything else is left as is."""
    if device == "cuda" and world.size > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', world.rank))}"
    return device


def broadcast_samples(world: World, samples: Sequence[Sample] | None) -> list[Sample] | None:
    """Rank 0 sends `samples` (None = stop); every rank returns the same list (or None)."""
    if world.size == 1:
        return None if samples is None else list(samples)
    if world.rank == 0:
        blobs = [encode(s) for s in samples or []]
        header = torch.tensor([-1 if samples is None else len(blobs)], dtype=torch.int64)
        lengths = torch.tensor([len(b) for b in blobs], dtype=torch.int64)
        payload = torch.from_numpy(np.frombuffer(b"".join(blobs) or b"\0", dtype=np.uint8).copy())
    else:
        header = torch.zeros(1, dtype=torch.int64)
    dist.broadcast(header, 0)
    n = int(header)
    if n < 0:
        return None
    if world.rank != 0:
        lengths = torch.zeros(n, dtype=torch.int64)
    dist.broadcast(lengths, 0)
    if world.rank != 0:
        payload = torch.zeros(max(int(lengths.sum()), 1), dtype=torch.uint8)
    dist.broadcast(payload, 0)
    if world.rank == 0:
        return list(samples)
    raw, out, at = payload.numpy().tobytes(), [], 0
    limits = CodecLimits(max_bytes=max(int(lengths.max()) if n else 1, 1))
    for length in lengths.tolist():
        out.append(decode(raw[at : at + length], limits))
        at += length
    return out
