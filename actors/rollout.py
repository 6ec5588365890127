"""From work messages to engine requests, and from engine results to Trajectory messages.

Pure apart from the engine call: a Prompt asks for `n` fresh rollouts of its prompt; a
ResetRequest asks for `reset.n` rollouts from its prefix s_m (prompt plus the kept steps),
which are scored on the kept steps plus the new text. Seeds and trajectory ids derive from
the message id, so a redelivered message reproduces the same rollouts under the same ids
(the learner deduplicates on them).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from actors.engines.base import GenerationRequest, GenerationResult, SamplingSettings
from actors.steps import StepConfig, token_spans
from actors.tasks.base import StepSplitter, Task, TaskPrompt
from protocol.messages import Prompt, ResetRequest, Trajectory


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    """How rollouts are sampled and cut into steps."""

    n: int = 4
    """Fresh rollouts per prompt (the PPO group size)."""
    temperature: float = 1.0
    """Sampling temperature (> 0)."""
    top_p: float = 1.0
    """Nucleus mass in (0, 1]."""
    max_new_tokens: int = 256
    """Longest completion, in tokens."""
    stop: tuple[str, ...] = ()
    """Extra stop strings (EOS always stops)."""
    seed: int = 0
    """Base seed; each message's seed is derived from it and the message id."""
    steps: StepConfig = field(default_factory=StepConfig)
    """Step segmentation (used when the task has no splitter of its own)."""

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1:
            raise ValueError("rollout.n and rollout.max_new_tokens must be >= 1")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise ValueError("rollout.temperature must be > 0 and rollout.top_p in (0, 1]")

    def sampling(self, seed: int) -> SamplingSettings:
        return SamplingSettings(
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            stop=self.stop,
            seed=seed,
        )


def seed_for(message_id: str, base: int) -> int:
    """A 31-bit seed from a message id: the same message always samples the same way."""
    digest = hashlib.sha256(f"{base}:{message_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def request_for(work: Prompt | ResetRequest, cfg: RolloutConfig) -> GenerationRequest:
    if isinstance(work, Prompt):
        return GenerationRequest(
            work.token_ids.tolist(), n=cfg.n, sampling=cfg.sampling(seed_for(work.id, cfg.seed))
        )
    return GenerationRequest(
        work.prefix_token_ids.tolist(), n=work.n, sampling=cfg.sampling(seed_for(work.id, cfg.seed))
    )


def trajectories_for(
    work: Prompt | ResetRequest,
    result: GenerationResult,
    task: Task,
    tokenizer,
    cfg: RolloutConfig,
    actor: str,
    gen_seconds: float,
) -> list[Trajectory]:
    """Score and segment the completions of one request into Trajectory messages."""
    splitter = task.split_steps if isinstance(task, StepSplitter) else None
    if isinstance(work, Prompt):
        prefix = work.token_ids
        prompt_len = len(prefix)
        task_prompt = TaskPrompt(id=work.id, text=work.text, answer=work.answer)
        kept: list[int] = []
        reset = dict(
            kind="fresh", parent_id=None, reset_step=None, reset_value=None, prompt_id=work.id
        )
    else:
        prefix = work.prefix_token_ids
        prompt_len = work.prompt_len
        prompt_ids = prefix[:prompt_len].tolist()
        task_prompt = TaskPrompt(
            id=work.prompt_id,
            text=tokenizer.decode(prompt_ids, skip_special_tokens=True),
            answer=work.answer,
        )
        kept = prefix[prompt_len:].tolist()
        reset = dict(
            kind="reset",
            parent_id=work.trajectory_id,
            reset_step=work.critical_step,
            reset_value=work.value,
            reset_value_count=work.value_count,
            prompt_id=work.prompt_id,
        )
    out = []
    for j, completion in enumerate(result.completions):
        text = tokenizer.decode(kept + completion.token_ids, skip_special_tokens=True)
        out.append(
            Trajectory(
                id=f"{work.id}/{j}",
                run=work.run,
                ts=time.time(),
                task=task.name,
                answer=work.answer,
                prompt_len=prompt_len,
                prefix_token_ids=prefix,
                completion_token_ids=completion.token_ids,
                logprobs=completion.logprobs,
                step_spans=token_spans(completion.token_ids, tokenizer, cfg.steps, splitter),
                reward=float(task.score(task_prompt, text)),
                policy_version=result.policy_version,
                actor=actor,
                gen_seconds=gen_seconds,
                **reset,
            )
        )
    return out


def total_tokens(trajectories: Sequence[Trajectory]) -> int:
    return sum(len(t.completion_token_ids) for t in trajectories)
