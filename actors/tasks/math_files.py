"""GSM8K- and MATH-style problems from local JSONL or parquet files, verified by math-verify.

Rows are recognised by their fields:
- GSM8K: `question`, and `answer` holding the rationale and a final `#### 42` line;
- MATH: `problem`, and `answer` (the final answer, as in MATH-500) or `solution` with a
  `\\boxed{...}` final answer.
Rows with an `id` or `unique_id` field keep it; others are named by their row number.

Held-out prompts come from `heldout_path`, or when it is empty from a share of the training
file chosen by a hash of the problem text (deterministic, disjoint). Scoring parses the
completion with `math_verify.parse` (boxed answers, `####` lines, a final number) and checks
it against the reference with `math_verify.verify`. Parquet needs pyarrow, which is optional.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from math_verify import parse, verify

from actors.tasks.base import TaskPrompt, chat_text

DEFAULT_TEMPLATE = (
    "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}.\n"
)


@dataclass
class MathFiles:
    """A math task over local files; fields are its options."""

    train_path: str = ""
    """JSONL (`.jsonl`, `.json` lines) or parquet (`.parquet`) file of training problems."""
    heldout_path: str = ""
    """File of held-out problems; empty: hold out `heldout_percent` of `train_path`."""
    format: str = "auto"
    """Row format: `gsm8k`, `math`, or `auto` (decided per row by its fields)."""
    heldout_percent: int = 5
    """Share of `train_path` held out when `heldout_path` is empty, in percent (by text hash)."""
    max_heldout: int = 0
    """Keep at most this many held-out prompts (the first in file order); 0 keeps all."""
    prompt_template: str = DEFAULT_TEMPLATE
    """Prompt text; the literal `{problem}` is replaced by the problem (no other braces)."""
    verify_timeout_s: int = 5
    """Per-call time limit of math-verify's parse and verify, in seconds (main thread only)."""
    name: str = "math"
    """Task name."""
    _cache: dict[str, list[TaskPrompt]] = field(default_factory=dict, repr=False, compare=False)
    """The prompts by split, with `prompt_template` applied (the held-out hash reads these)."""
    _tokenizer: object = field(default=None, repr=False, compare=False)
    _chat: dict[str, list[TaskPrompt]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.train_path:
            raise ValueError("MathFiles needs train_path")
        if self.format not in ("auto", "gsm8k", "math"):
            raise ValueError(f"format must be auto, gsm8k or math, got {self.format!r}")
        if "{problem}" not in self.prompt_template:
            raise ValueError("prompt_template must contain '{problem}'")

    def use_tokenizer(self, tokenizer: object) -> None:
        """Send each prompt as the user turn of `tokenizer`'s chat template from now on (a
        tokenizer without one: the prompt text as it is). The split does not change."""
        self._tokenizer = tokenizer
        self._chat.clear()

    def train_prompts(self) -> list[TaskPrompt]:
        """Problems of `train_path` (less the held-out share when there is no held-out file)."""
        return self._split("train")

    def heldout_prompts(self) -> list[TaskPrompt]:
        """Problems of `heldout_path`, or the held-out share of `train_path`."""
        return self._split("heldout")

    def _split(self, split: str) -> list[TaskPrompt]:
        if split not in self._chat:
            self._chat[split] = [
                TaskPrompt(
                    p.id, chat_text(self._tokenizer, p.text.rstrip("\n")) or p.text, p.answer
                )
                for p in self._load()[split]
            ]
        return self._chat[split]

    def score(self, prompt: TaskPrompt, completion: str) -> float:
        """1.0 if math-verify finds the completion's final answer equal to the reference."""
        return float(verified(prompt.answer, completion, self.verify_timeout_s))

    def _load(self) -> dict[str, list[TaskPrompt]]:
        if self._cache:
            return self._cache
        rows = [self._prompt(r, i, "train") for i, r in enumerate(read_rows(self.train_path))]
        if self.heldout_path:
            heldout_rows = read_rows(self.heldout_path)
            heldout = [self._prompt(r, i, "heldout") for i, r in enumerate(heldout_rows)]
            held_texts = {p.text for p in heldout}
            train = [p for p in rows if p.text not in held_texts]
        else:
            heldout = [_rename(p, "heldout") for p in rows if self._held(p.text)]
            train = [p for p in rows if not self._held(p.text)]
        if self.max_heldout:
            heldout = heldout[: self.max_heldout]
        self._cache.update(train=train, heldout=heldout)
        return self._cache

    def _held(self, text: str) -> bool:
        digest = hashlib.sha256(b"math-heldout:" + text.encode()).digest()
        return int.from_bytes(digest[:8], "big") % 100 < self.heldout_percent

    def _prompt(self, row: dict, index: int, split: str) -> TaskPrompt:
        problem, answer = problem_and_answer(row, self.format)
        key = row.get("id") or row.get("unique_id") or str(index)
        text = self.prompt_template.replace("{problem}", problem)
        return TaskPrompt(f"{self.name}:{split}:{key}", text, answer)


def verified(reference: str, text: str, timeout_s: int) -> bool:
    """Whether math-verify finds the final answer of `text` equal to `reference`."""
    # signal-based timeouts only work on the main thread; elsewhere run without them
    on_main = threading.current_thread() is threading.main_thread()
    limit = timeout_s if on_main else None
    gold = parse(f"\\boxed{{{reference}}}", parsing_timeout=limit)
    pred = parse(text, parsing_timeout=limit)
    return bool(gold) and bool(pred) and verify(gold, pred, timeout_seconds=limit)


def _rename(prompt: TaskPrompt, split: str) -> TaskPrompt:
    name, _, key = prompt.id.split(":", 2)
    return TaskPrompt(f"{name}:{split}:{key}", prompt.text, prompt.answer)


def read_rows(path: str | Path) -> list[dict]:
    """All rows of a JSONL or parquet file, as dicts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(
                f"reading {path} needs pyarrow, which is not installed "
                "(pip install pyarrow, or convert the file to JSONL)"
            ) from e
        return pq.read_table(path).to_pylist()
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def problem_and_answer(row: dict, fmt: str = "auto") -> tuple[str, str]:
    """The problem text and reference final answer of a GSM8K or MATH row."""
    if fmt == "gsm8k" or (fmt == "auto" and "question" in row):
        answer = extract_gsm8k_answer(str(row["answer"]))
        if answer is None:
            raise ValueError(f"GSM8K row without a '#### answer' line: {row!r:.200}")
        return str(row["question"]), answer
    if "problem" not in row:
        raise ValueError(f"row has neither 'question' nor 'problem': {sorted(row)}")
    if row.get("answer") not in (None, ""):
        return str(row["problem"]), str(row["answer"])
    answer = extract_boxed(str(row.get("solution", "")))
    if answer is None:
        raise ValueError(f"MATH row without 'answer' or a boxed solution: {row!r:.200}")
    return str(row["problem"]), answer


def extract_gsm8k_answer(text: str) -> str | None:
    """The final answer after the last `####`, without thousands separators."""
    if "####" not in text:
        return None
    answer = text.rsplit("####", 1)[1].strip().replace(",", "")
    return answer or None


def extract_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (6 if text.startswith("\\boxed", start) else 5)
    if text.startswith(" ", i):  # "\boxed 5": the argument is the next word
        word = text[i:].split()
        return word[0].rstrip("$.") if word else None
    if not text.startswith("{", i):
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None
