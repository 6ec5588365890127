"""Start-up shared by the inference processes (gpo-actor, gpo-estimator).

Both check their config before touching anything slow: the task spec loads, the model
directory exists, Redis answers; then they load the tokenizer and the engine, run their
loop, and close the engine however the loop ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from transformers import AutoTokenizer

from actors.engines.base import Engine
from actors.engines.factory import EngineConfig, build_engine, check_model_dir
from actors.tasks.base import Task, load_task
from protocol.process import Runtime, UserError

Body = Callable[[Runtime, Engine, Task, object], Awaitable[int]]


def load_task_or_fail(spec: str, options: dict) -> Task:
    try:
        return load_task(spec, **options)
    except ValueError as e:
        raise UserError(str(e)) from None


async def run_with_engine(
    process: str, engine_cfg: EngineConfig, task_spec: str, task_options: dict, rt_args, body: Body
) -> int:
    task = load_task_or_fail(task_spec, task_options)
    check_model_dir(engine_cfg.model)
    async with Runtime(process, *rt_args) as rt:
        tokenizer = AutoTokenizer.from_pretrained(engine_cfg.model)
        engine = build_engine(engine_cfg, rt.metrics.registry)
        try:
            return await body(rt, engine, task, tokenizer)
        finally:
            await engine.close()
