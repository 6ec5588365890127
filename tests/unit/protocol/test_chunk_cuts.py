"""protocol.adapters.chunk_cuts: chunks tile the blob, none is larger than asked, and cuts fall
on tensor boundaries, so an unchanged tensor is an unchanged chunk."""

from __future__ import annotations

import torch
from safetensors.torch import save

from protocol.adapters import chunk_cuts
from protocol.safetensors_layout import layout


def tiles(cuts: list[tuple[int, int]], size: int, most: int) -> bool:
    return (
        cuts[0][0] == 0
        and cuts[-1][1] == size
        and all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))
        and all(0 < e - b <= most for b, e in cuts)
    )


def test_cuts_fall_on_tensor_starts_and_big_tensors_are_cut_from_their_own_start():
    blob = save(
        {
            "a": torch.zeros(100),  # 400 B
            "b": torch.zeros(1000),  # 4000 B: larger than a chunk
            "c": torch.zeros(10),  # 40 B
            "d": torch.zeros(300),  # 1200 B
        }
    )
    spans = layout(blob)
    cuts = chunk_cuts(blob, 1500)
    assert tiles(cuts, len(blob), 1500)
    starts = {b for b, _ in cuts}
    b = spans["b"].offset
    # b starts a chunk and is cut every 1500 bytes from there; its last 1000 bytes share a
    # chunk with c (1040 <= 1500), and d (1200) does not fit after them
    assert {b, b + 1500, b + 3000, spans["d"].offset} <= starts
    assert spans["c"].offset not in starts
    assert cuts[0] == (0, b)  # the header and a


def test_one_tensor_changed_changes_only_its_chunks():
    def blob(x: float) -> bytes:
        return save({f"t{i}": torch.full((256,), x if i == 5 else 1.0) for i in range(8)})

    old, new = blob(1.0), blob(2.0)
    cuts = chunk_cuts(old, 2048)  # 1 KiB tensors: the header with t0, then two to a chunk
    assert cuts == chunk_cuts(new, 2048)
    changed = [c for c in cuts if old[c[0] : c[1]] != new[c[0] : c[1]]]
    assert len(changed) == 1 and len(cuts) >= 4


def test_what_is_not_safetensors_is_cut_plainly():
    assert chunk_cuts(b"x" * 10, 4) == [(0, 4), (4, 8), (8, 10)]
