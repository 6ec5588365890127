"""Shadows the uvloop package for processes started with `GpoProcess(..., loop="asyncio")`:
importing it fails as if uvloop were not installed, so `run_async` uses asyncio."""

raise ImportError("uvloop is disabled for this test process (tests/support/no_uvloop)")
