"""A scripted stochastic policy: an Engine with known step values, for tests and benchmarks.

A `ScriptedProblem` is a T-step reasoning task over a toy vocabulary. Every step is
`1 + (j % 3)` filler words, a verdict (`ok` or `no`) and a newline, for example `w3 w1 ok\\n`;
after T steps comes EOS. The hidden state after a step is its verdict: `ok` means the
solution is still correct. Step j is `ok` with probability `stay_correct[j]` from a correct
state and `recover` from a wrong one (self-correction). The reward is 1 when the last step is
`ok`. One step has a much lower `stay_correct`: the designed pivotal step.

Because the process is a known Markov chain, the exact V(s_i) of any trajectory is computable
(`ScriptedProblem.exact_values`), and so is the true critical step (`oracle_critical_step`):
the ground truth the MC estimators are measured against.

`ScriptedEngine` implements `actors.engines.base.Engine` over one problem: temperature and
top-p reshape every token distribution, logprobs are those of the reshaped distribution, stop
strings and stop ids are honoured, and sample j of a request with seed s is a function of
(s, j, prompt) only, so batches can be split or merged without changing any completion.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from actors.critical import choose_critical_step, step_advantages
from actors.engines.base import Completion, GenerationRequest, GenerationResult

BOS, EOS, NEWLINE, GOOD, BAD = 0, 1, 2, 3, 4
NUM_FILLERS = 8
FIRST_FILLER = 5
VOCAB: tuple[str, ...] = ("", "", "\n", "ok", "no") + tuple(f"w{k} " for k in range(NUM_FILLERS))
"""Token id -> text. BOS and EOS decode to nothing."""


def decode(token_ids: Sequence[int]) -> str:
    """Text of toy token ids (the `decode` that `find_critical_step` needs)."""
    return "".join(VOCAB[t] for t in token_ids)


def step_spans(completion_token_ids: Sequence[int]) -> list[tuple[int, int]]:
    """Token spans [start, end) of the steps of a toy completion: each ends at a newline.

    Tokens after the last newline (EOS, or a truncated step) belong to no span.
    """
    spans, start = [], 0
    for i, t in enumerate(completion_token_ids):
        if t == NEWLINE:
            spans.append((start, i + 1))
            start = i + 1
    return spans


@lru_cache(maxsize=4096)
def sampling_distribution(probs: tuple[float, ...], temperature: float, top_p: float) -> tuple:
    """The distribution actually sampled from: p^(1/temperature) renormalised, then the
    smallest set of most likely outcomes (ties by index) whose mass reaches top_p.

    probs: shape (n,), summing to 1. Returns shape (n,), summing to 1.
    """
    if temperature <= 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature > 0 and top_p in (0, 1], got {temperature}, {top_p}")
    w = [p ** (1.0 / temperature) if p > 0 else 0.0 for p in probs]
    total = sum(w)
    w = [x / total for x in w]
    keep, mass = set(), 0.0
    for i in sorted(range(len(w)), key=lambda i: -w[i]):
        if mass >= top_p - 1e-12 or w[i] == 0.0:
            break
        keep.add(i)
        mass += w[i]
    return tuple(w[i] / mass if i in keep else 0.0 for i in range(len(w)))


@dataclass(frozen=True, slots=True)
class ScriptedProblem:
    """One toy task instance; also the `prompt` object that `ScriptedTask.score` reads."""

    stay_correct: tuple[float, ...]
    """P(step j is `ok` | correct before it), one entry per step; T = len."""
    recover: float = 0.0
    """P(step j is `ok` | wrong before it): the chance to fix an earlier mistake."""

    @property
    def num_steps(self) -> int:
        return len(self.stay_correct)

    @property
    def pivotal_step(self) -> int:
        """The designed pivotal step: where `stay_correct` drops lowest."""
        return int(np.argmin(self.stay_correct))

    @property
    def prompt_token_ids(self) -> list[int]:
        return [BOS]

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        *,
        steps: tuple[int, int] = (4, 12),
        easy: tuple[float, float] = (0.85, 1.0),
        hard: tuple[float, float] = (0.15, 0.6),
        recover: tuple[float, float] = (0.0, 0.1),
    ) -> ScriptedProblem:
        """An instance with T uniform in `steps` (inclusive), easy steps' `stay_correct`
        uniform in `easy`, one uniform pivotal step with `stay_correct` uniform in `hard`."""
        t = int(rng.integers(steps[0], steps[1] + 1))
        p = rng.uniform(*easy, size=t)
        p[rng.integers(t)] = rng.uniform(*hard)
        return cls(tuple(float(x) for x in p), float(rng.uniform(*recover)))

    def verdict_distribution(self, step: int, correct: bool, temperature: float, top_p: float):
        """(P(ok), P(no)) sampled at `step` from the given state."""
        p = self.stay_correct[step] if correct else self.recover
        return sampling_distribution((p, 1.0 - p), temperature, top_p)

    def state_values(self, temperature: float = 1.0, top_p: float = 1.0) -> np.ndarray:
        """Exact success probability from every state.

        Returns shape (T + 1, 2): [i, 1] = V after i steps in a correct state, [i, 0] in a
        wrong one; row T is (0, 1), the reward itself.
        """
        t = self.num_steps
        v = np.zeros((t + 1, 2))
        v[t] = (0.0, 1.0)
        for j in range(t - 1, -1, -1):
            for correct in (0, 1):
                ok, no = self.verdict_distribution(j, bool(correct), temperature, top_p)
                v[j, correct] = ok * v[j + 1, 1] + no * v[j + 1, 0]
        return v

    def exact_values(self, completion_token_ids: Sequence[int], temperature: float = 1.0):
        """True V(s_0..s_T) along a complete trajectory; shape (T + 1,)."""
        verdicts = [t for t in completion_token_ids if t in (GOOD, BAD)]
        if len(verdicts) != self.num_steps:
            raise ValueError(f"trajectory has {len(verdicts)} steps, want {self.num_steps}")
        table = self.state_values(temperature)
        states = [1] + [int(t == GOOD) for t in verdicts]
        return np.asarray([table[i, c] for i, c in enumerate(states)])

    def oracle_critical_step(self, completion_token_ids: Sequence[int]) -> int | None:
        """argmax |A| of the exact values: the step a perfect estimator would choose."""
        adv = step_advantages(self.exact_values(completion_token_ids))
        return choose_critical_step(adv, "advantage")

    def oracle_margin(self, completion_token_ids: Sequence[int]) -> float:
        """Largest exact |A| minus the second largest (0 when T = 1 has no runner-up)."""
        a = np.sort(np.abs(step_advantages(self.exact_values(completion_token_ids))))[::-1]
        return float(a[0] - a[1]) if a.shape[0] > 1 else float(a[0])


class ScriptedTask:
    """Scores toy completions: 1.0 when there are exactly T steps and the last is `ok`."""

    name = "scripted"

    def score(self, prompt: ScriptedProblem, completion_text: str) -> float:
        lines = completion_text.split("\n")[:-1]  # the part after the last newline is no step
        ok = len(lines) == prompt.num_steps and lines[-1].endswith("ok")
        return 1.0 if ok else 0.0


class ScriptedEngine:
    """`Engine` over one `ScriptedProblem`; no model, no adapter (version stays 0).

    `rollouts` counts completions generated and `calls` counts `generate` calls, so benchmarks
    can check what a search spent. Prompts must start with BOS; prompt plus kept steps can
    stop anywhere, also inside a step.
    """

    def __init__(self, problem: ScriptedProblem, seed: int = 0):
        self.problem = problem
        self.rollouts = 0
        self.calls = 0
        self._unseeded = random.Random(seed)  # streams for requests without a seed

    @property
    def policy_version(self) -> int:
        return 0

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.calls += 1
        results = []
        for req in requests:
            prefix = list(req.prompt_token_ids)
            if not prefix or prefix[0] != BOS or not all(0 <= t < len(VOCAB) for t in prefix):
                raise ValueError("prompt must start with BOS and use the toy vocabulary")
            comps = [self._sample(prefix, req, j) for j in range(req.n)]
            self.rollouts += req.n
            results.append(GenerationResult(completions=comps, policy_version=0))
        return results

    async def load_adapter(
        self, version: int, config: dict, safetensors_bytes: bytes | bytearray
    ) -> None:
        """No weights to load: the scripted policy never changes."""

    async def close(self) -> None:
        """Nothing to release."""

    def _sample(self, prefix: list[int], req: GenerationRequest, j: int) -> Completion:
        s = req.sampling
        if s.seed is None:
            seed = self._unseeded.getrandbits(63)
        else:
            # int and int-tuple hashes are stable across processes (no PYTHONHASHSEED).
            seed = hash((s.seed, j, tuple(prefix)))
        rng = random.Random(seed)
        tokens: list[int] = []
        logprobs: list[float] = []
        text = ""
        for tok, lp in self._continue(prefix, rng, s.temperature, s.top_p):
            if len(tokens) == s.max_new_tokens:
                return Completion(tokens, logprobs, "length", text)
            tokens.append(tok)
            logprobs.append(lp)
            text += VOCAB[tok]
            if tok == EOS or tok in s.stop_token_ids or any(text.endswith(x) for x in s.stop):
                return Completion(tokens, logprobs, "stop", text)
        raise AssertionError("the scripted policy always ends with EOS")

    def _continue(
        self, prefix: list[int], rng: random.Random, temperature: float, top_p: float
    ) -> Iterator[tuple[int, float]]:
        """Tokens and their logprobs from `prefix` on, through EOS."""
        p = self.problem
        done = prefix.count(NEWLINE)
        last_nl = max((i for i, t in enumerate(prefix) if t == NEWLINE), default=0)
        tail = prefix[last_nl + 1 :] if done else prefix[1:]
        verdicts = [t for t in prefix if t in (GOOD, BAD)]
        correct = not verdicts or verdicts[-1] == GOOD
        fillers = sampling_distribution((1.0 / NUM_FILLERS,) * NUM_FILLERS, temperature, top_p)
        for step in range(done, p.num_steps):
            partial = tail if step == done else []
            if not any(t in (GOOD, BAD) for t in partial):
                for _ in range(max(0, 1 + step % 3 - len(partial))):
                    k = _draw(fillers, rng)
                    yield FIRST_FILLER + k, math.log(fillers[k])
                dist = p.verdict_distribution(step, correct, temperature, top_p)
                k = _draw(dist, rng)
                correct = k == 0
                yield (GOOD if correct else BAD), math.log(dist[k])
            yield NEWLINE, 0.0
        yield EOS, 0.0


def _draw(dist: Sequence[float], rng: random.Random) -> int:
    u, acc = rng.random(), 0.0
    for k, q in enumerate(dist):
        acc += q
        if u < acc:
            return k
    return max(k for k, q in enumerate(dist) if q > 0)  # u within rounding of 1
