"""Dev tooling: the tiny built-in base policies the demo, the tests and the benchmarks run on.

None of it is needed to run the system on a real model. `bootstrap_policy` gives the
directory of a tiny policy (the model name `bootstrap`, ops/models.py); `bootstrap.py`
builds (or reuses) one (`gpo bootstrap`) and `sft.py` trains it; `tokenizer.py` is the one
character tokenizer; `tiny_model.py` holds the one tiny-Llama shape (`llama_config`, which
the policies use too) and builds a tiny random Llama for engine tests and benchmarks.
"""

from __future__ import annotations

import functools
import json
import sys

from protocol.config import from_mapping


def bootstrap_policy(fields: dict | None = None) -> str:
    """The directory of the tiny built-in policy that `fields` (BootstrapConfig fields; none:
    the arithmetic one) describe, built once, then cached. Progress goes to stderr."""
    from ops.tiny_policy.bootstrap import BootstrapConfig, bootstrap

    say = functools.partial(print, file=sys.stderr, flush=True)
    say("tiny base policy: building or reusing the cached one (gpo bootstrap) ...")
    path = bootstrap(from_mapping(BootstrapConfig, dict(fields or {}), "launch.bootstrap"))
    record = json.loads((path / "bootstrap.json").read_text())
    say(f"tiny base policy: {path} (held-out pass@1 {record.get('pass_at_1')})")
    return str(path)
