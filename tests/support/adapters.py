"""An AdapterPointer as a publisher would write it, for tests that write chunks themselves."""

from __future__ import annotations

import hashlib
import time

from protocol.messages import AdapterPointer


def adapter_pointer(
    data: bytes,
    chunk_keys: list[str],
    version: int = 1,
    run: str = "t",
    lora_config: dict | None = None,
) -> AdapterPointer:
    """The pointer to `data` (its sha256 and size) held in `chunk_keys`."""
    return AdapterPointer(
        id=f"adapter:{version}",
        run=run,
        ts=time.time(),
        version=version,
        base_model="tiny",
        lora_config={"r": 8} if lora_config is None else lora_config,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        chunk_keys=chunk_keys,
    )
