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
from protocol.process import Runtime, UserError, common_parser, load_config, run_process

Body = Callable[[Runtime, Engine, Task, object], Awaitable[int]]


def load_task_or_fail(spec: str, options: dict) -> Task:
    try:
        return load_task(spec, **options)
    except ValueError as e:
        raise UserError(str(e)) from None


Loop = Callable[[object, Runtime, Engine, Task, object], Awaitable[int]]


def inference_main(
    process: str, doc: str | None, config_cls: type, loop: Loop, argv: list[str] | None
) -> int:
    """The whole entry point of gpo-actor / gpo-estimator: flags, config, engine, loop."""
    parser = common_parser(f"gpo-{process}", doc)
    parser.add_argument("--model", help=f"base model directory (overrides {process}.engine.model)")
    parser.add_argument(
        "--engine", choices=["transformers", "vllm"], help=f"overrides {process}.engine.kind"
    )
    args = parser.parse_args(argv)
    if args.model:
        args.set.append(f"{process}.engine.model={args.model!r}")
    if args.engine:
        args.set.append(f"{process}.engine.kind={args.engine!r}")

    async def configured() -> int:
        cfg, redis_cfg = load_config(args, process, config_cls)
        rt_args = (redis_cfg, args.name or "", args.metrics_port, args.metrics_host)
        return await run_with_engine(
            process,
            cfg.engine,
            cfg.task,
            cfg.task_options,
            rt_args,
            lambda rt, engine, task, tokenizer: loop(cfg, rt, engine, task, tokenizer),
        )

    return run_process(configured(), process, args.log_level)


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
