"""Offline GPO preference pairs (GPO.md step 7): branch at the critical step, keep one win
and one loss.

For one prompt: sample trajectories, find each one's critical step m with
`find_critical_step`, then take continuations from s_m (the MC continuations already drawn
there first, then bounded extra rounds) until one scores 1 and one scores 0. The pair shares
the prefix s_m, so the preference signal sits on the step that decided the outcome; a
whole-trajectory pair (`whole_trajectory_pairs`, the baseline) differs from the first token.

Records use the preference format of Hugging Face datasets (TRL's "standard" format):
`prompt` is the prompt text plus the kept steps, `chosen`/`rejected` are the suffixes after
it, so `prompt + chosen` is a complete correct solution. Extra fields: `critical_step` (m,
or None for baseline pairs), `step_values` (V(s_0..s_T) of the source trajectory),
`prefix_len` (completion tokens kept before s_m; 0 for baseline pairs), `prompt_id`.

Everything here talks to an `Engine`, so the scripted policy drives the tests and a
`TransformersEngine` (or vLLM) drives `gpo offline pairs`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from actors.critical import derive_seed
from actors.engines.base import Completion, Engine, GenerationRequest, SamplingSettings
from actors.mc_config import McConfig, paper_search
from actors.mc_search import Decode, ScoringTask, StepTrajectory, find_critical_step

Split = Callable[[Sequence[int]], list[tuple[int, int]]]
"""Completion token ids -> step spans [start, end) (see `StepTrajectory.step_spans`)."""


@dataclass(frozen=True, slots=True)
class PairConfig:
    """How many trajectories to search and how hard to look for a win and a loss."""

    samples: int = 4
    """Trajectories sampled per prompt; each can give at most one pair."""
    branch_n: int = 4
    """Continuations per extra round from s_m (or from the prompt, for baseline pairs)."""
    branch_rounds: int = 3
    """Extra rounds at most after the MC continuations; then the trajectory gives no pair."""
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    """Sampling of trajectories and continuations (the policy's own settings)."""
    mc: McConfig = field(default_factory=paper_search)
    """Critical-step search (the paper's: uniform K at every boundary); its `sampling` and
    `seed` are replaced per trajectory."""
    seed: int = 0
    """Base seed; every request's seed derives from it, the prompt index and the sample."""

    def __post_init__(self) -> None:
        if self.samples < 1 or self.branch_n < 1 or self.branch_rounds < 0:
            raise ValueError("need samples >= 1, branch_n >= 1, branch_rounds >= 0")


@dataclass(frozen=True, slots=True)
class PreferencePair:
    """One record of pairs.jsonl; `prompt + chosen` scores 1, `prompt + rejected` scores 0."""

    prompt: str
    """Prompt text plus the kept steps s_m, as text."""
    chosen: str
    """The correct suffix after `prompt`."""
    rejected: str
    """The wrong suffix after `prompt`."""
    critical_step: int | None
    """m in [0, T) of the source trajectory; None for whole-trajectory (baseline) pairs."""
    step_values: list[float]
    """MC V(s_0..s_T) of the source trajectory; [] for baseline pairs."""
    prefix_len: int
    """Completion tokens kept before s_m (the start of step m); 0 for baseline pairs."""
    prompt_id: str
    """The task prompt this pair came from."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


async def critical_step_pairs(
    engine: Engine,
    task: ScoringTask,
    prompt: object,
    prompt_token_ids: Sequence[int],
    prompt_id: str,
    config: PairConfig,
    *,
    decode: Decode,
    split: Split,
    index: int = 0,
) -> list[PreferencePair]:
    """Pairs that branch at the critical step of each sampled trajectory of one prompt.

    `prompt` is what `task.score` takes; `index` (the prompt's position) keeps the seeds of
    different prompts apart.
    """
    sampling = _seeded(config.sampling, derive_seed(config.seed, index, 0))
    (fresh,) = await engine.generate(
        [GenerationRequest(prompt_token_ids, config.samples, sampling)]
    )
    pairs = []
    for j, c in enumerate(fresh.completions):
        spans = split(c.token_ids)
        if not spans:
            continue
        text = decode(list(prompt_token_ids) + c.token_ids)[len(decode(prompt_token_ids)) :]
        traj = StepTrajectory(
            prompt_token_ids, c.token_ids, spans, float(task.score(prompt, text)), prompt
        )
        mc = dataclasses.replace(
            config.mc, sampling=config.sampling, seed=derive_seed(config.seed, index, j + 1)
        )
        found = await find_critical_step(engine, task, traj, mc, decode=decode)
        m = found.critical_step
        if m is None:
            continue
        kept = list(c.token_ids[: spans[m][0]])
        branches = list(zip(found.critical_completions, found.rewards[m], strict=True))
        win, loss = await _win_and_loss(
            engine, task, prompt, list(prompt_token_ids), kept, branches, config, decode, mc.seed
        )
        if win is None or loss is None:
            continue
        head = decode(list(prompt_token_ids) + kept)
        pairs.append(
            PreferencePair(
                prompt=head,
                chosen=_suffix(decode, list(prompt_token_ids) + kept, win, head),
                rejected=_suffix(decode, list(prompt_token_ids) + kept, loss, head),
                critical_step=m,
                step_values=[float(v) for v in found.values],
                prefix_len=len(kept),
                prompt_id=prompt_id,
            )
        )
    return pairs


async def whole_trajectory_pairs(
    engine: Engine,
    task: ScoringTask,
    prompt: object,
    prompt_token_ids: Sequence[int],
    prompt_id: str,
    config: PairConfig,
    *,
    decode: Decode,
    index: int = 0,
) -> list[PreferencePair]:
    """The baseline: at most one pair of full completions (one correct, one wrong) of the
    prompt, drawn in rounds of `branch_n` (`branch_rounds + 1` rounds at most)."""
    ids = list(prompt_token_ids)
    win, loss = await _win_and_loss(
        engine, task, prompt, ids, [], [], config, decode, derive_seed(config.seed, index, 0)
    )
    if win is None or loss is None:
        return []
    head = decode(ids)
    return [
        PreferencePair(
            prompt=head,
            chosen=_suffix(decode, ids, win, head),
            rejected=_suffix(decode, ids, loss, head),
            critical_step=None,
            step_values=[],
            prefix_len=0,
            prompt_id=prompt_id,
        )
    ]


async def _win_and_loss(
    engine: Engine,
    task: ScoringTask,
    prompt: object,
    prompt_ids: list[int],
    kept: list[int],
    branches: list[tuple[Completion, float]],
    config: PairConfig,
    decode: Decode,
    seed: int | None,
) -> tuple[Completion | None, Completion | None]:
    """A continuation of prompt + kept that scores 1 and one that scores 0, sampling up to
    `branch_rounds` extra rounds (one more when `branches` starts empty)."""
    rounds = config.branch_rounds + (0 if branches else 1)
    for r in range(rounds + 1):
        win = next((c for c, reward in branches if reward >= 1.0), None)
        loss = next((c for c, reward in branches if reward <= 0.0), None)
        if (win is not None and loss is not None) or r == rounds:
            return win, loss
        sampling = _seeded(config.sampling, derive_seed(seed or 0, r + 1, len(kept)))
        request = GenerationRequest(prompt_ids + kept, config.branch_n, sampling)
        (result,) = await engine.generate([request])
        for c in result.completions:
            text = decode(prompt_ids + kept + c.token_ids)[len(decode(prompt_ids)) :]
            branches.append((c, float(task.score(prompt, text))))
    raise AssertionError("unreachable")


def _seeded(sampling: SamplingSettings, seed: int) -> SamplingSettings:
    return dataclasses.replace(sampling, seed=seed)


def _suffix(decode: Decode, head_ids: list[int], c: Completion, head: str) -> str:
    """Text of `c` after the head, decoded together with it (token merges stay intact)."""
    full = decode(head_ids + c.token_ids)
    if not full.startswith(head):
        raise ValueError("decoding the continuation changed the prefix text")
    return full[len(head) :]


def write_pairs(path: str | Path, pairs: Iterable[PreferencePair]) -> int:
    """Write JSONL records; returns how many."""
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(p.to_json() + "\n")
            count += 1
    return count


def read_pairs(path: str | Path) -> list[dict]:
    """The records of a pairs.jsonl file (each has prompt, chosen, rejected)."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for i, row in enumerate(rows):
        if not all(isinstance(row.get(k), str) for k in ("prompt", "chosen", "rejected")):
            raise ValueError(f"{path}:{i + 1}: need string prompt, chosen and rejected")
    return rows
