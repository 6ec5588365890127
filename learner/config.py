"""`LearnerConfig`: every knob of `gpo-learner` (TOML section `[learner]`), checked once.

Its parts have their own tables: the adapter (`[learner.lora]`), the optimizer and loss
(`[learner.ppo]`), the held-out evaluation (`[learner.eval]`) and the prompt feeder
(`[learner.feeder]`); what stays in `[learner]` is the model, the advantages, the batch
composition, staleness, checkpoints and the run's plumbing. Invariants are checked in each
`__post_init__` (a violation is a `ConfigError` naming the field): positive sizes and rates,
`reset_fraction` in [0, 1], the feeder's target <= its bound, minibatches <= batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from learner.composition import BatchMode, batch_targets
from protocol.config import ConfigError, RedisConfig
from protocol.streams import SAMPLES

AdvantageMode = Literal["gae", "mc", "group"]
ResetBaseline = Literal["loo", "value"]


@dataclass(frozen=True)
class LoraSettings:
    """TOML table `[learner.lora]`: the adapter the learner trains and broadcasts."""

    rank: int = 8
    """LoRA rank r."""
    alpha: float = 16.0
    """LoRA alpha (the update is scaled by alpha / r)."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    """Module names that get a LoRA adapter (lora_dropout is always 0)."""
    publish_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """dtype the adapter is broadcast in: `bf16` halves the bytes each actor and estimator
    fetches per version. The learner trains and checkpoints in fp32 either way; engines
    cast what they load to their model's dtype."""

    def __post_init__(self) -> None:
        if self.rank < 1 or not self.alpha > 0:
            raise ConfigError("learner.lora.rank must be >= 1 and learner.lora.alpha > 0")
        if not self.target_modules:
            raise ConfigError("learner.lora.target_modules must name at least one module")


@dataclass(frozen=True)
class PpoSettings:
    """TOML table `[learner.ppo]`: the optimizer and the clipped PPO loss."""

    lr: float = 1e-4
    """AdamW learning rate of the LoRA (and value head) parameters."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip per optimizer step; 0 turns it off."""
    epochs: int = 1
    """Passes over each batch."""
    minibatches: int = 1
    """Optimizer steps per epoch: the batch is split into this many minibatches."""
    clip_eps: float = 0.2
    """PPO ratio clip width (r in [1 - eps, 1 + eps])."""
    tis_cap: float = 2.0
    """Cap of the truncated importance weight pi_old / mu against the actors' logprobs."""
    kl_coef: float = 0.0
    """Weight of the k3 KL to the reference (adapter disabled); 0 skips the reference pass."""
    value_coef: float = 0.5
    """Weight of the clipped value loss (`gae` mode)."""
    value_clip: float = 0.2
    """Value clip width in reward units (`gae` mode)."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.minibatches < 1:
            raise ConfigError("learner.ppo.epochs and learner.ppo.minibatches must be >= 1")
        for name in ("lr", "clip_eps", "tis_cap"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"learner.ppo.{name} must be > 0")
        for name in ("kl_coef", "max_grad_norm", "weight_decay", "value_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"learner.ppo.{name} must be >= 0")


@dataclass(frozen=True)
class EvalSettings:
    """TOML table `[learner.eval]`: the held-out evaluation inside the learner."""

    every: int = 0
    """Updates between held-out evaluations; 0 turns evaluation off."""
    count: int = 64
    """Held-out prompts per evaluation (the first n of the task's held-out split)."""
    max_new_tokens: int = 64
    """Longest completion sampled during evaluation, in tokens."""
    batch: int = 32
    """Prompts decoded together during evaluation."""

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ConfigError("learner.eval.every must be >= 0")
        for name in ("count", "max_new_tokens", "batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"learner.eval.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class FeederSettings:
    """TOML table `[learner.feeder]`: how the learner keeps the `prompts` stream topped up."""

    backlog_target: int = 64
    """The feeder tops the `prompts` backlog (produced - acked) up to this many."""
    backlog_bound: int = 256
    """The feeder never lets the `prompts` backlog pass this many."""

    def __post_init__(self) -> None:
        if not 1 <= self.backlog_target <= self.backlog_bound:
            raise ConfigError(
                "need 1 <= learner.feeder.backlog_target <= learner.feeder.backlog_bound"
            )


@dataclass(frozen=True)
class LearnerConfig:
    """What the learner trains, how, and how it checkpoints, evaluates and feeds prompts."""

    model: str = ""
    """Base model: a local directory written by `save_pretrained` (or a cached hub id)."""
    base_model_id: str = ""
    """Identifier put in every AdapterPointer; empty means `model`."""
    dtype: Literal["fp32", "bf16"] = "fp32"
    """Dtype of the frozen base weights; LoRA weights, logprobs and the value head stay fp32."""
    device: str = "cpu"
    """Torch device (`cpu`, `cuda`); with torch.distributed, `cuda` means `cuda:<local rank>`."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """`[learner.lora]`: the adapter's rank, alpha and target modules."""
    ppo: PpoSettings = field(default_factory=PpoSettings)
    """`[learner.ppo]`: the optimizer, the epochs and minibatches, the clipped loss."""
    eval: EvalSettings = field(default_factory=EvalSettings)
    """`[learner.eval]`: the held-out evaluation's cadence and size."""
    feeder: FeederSettings = field(default_factory=FeederSettings)
    """`[learner.feeder]`: the prompts backlog the feeder keeps."""
    advantage: AdvantageMode = "mc"
    """`mc`: the Sample's per-token advantages (fresh samples); `group`: reward - mean reward
    of the group in the batch, a group being a prompt's fresh rollouts; `gae`: a value head
    on the policy and GAE. Reset samples in `mc` and `group` mode: see `reset_baseline`."""
    reset_baseline: ResetBaseline = "loo"
    """Baseline of a reset rollout's reward (`mc` and `group` modes). `loo`: leave-one-out
    over the other rollouts from the same reset state in the batch and the K MC continuations
    drawn from it; `value`: V(s_m) alone, the estimate that chose the step (biased upward on
    failed trajectories, shared by all siblings)."""
    whiten_advantages: bool = True
    """Normalise advantages to zero mean, unit variance over the batch's trained tokens."""
    gamma: float = 1.0
    """GAE discount per token (`gae` mode)."""
    lam: float = 0.95
    """GAE lambda (`gae` mode)."""
    temperature: float = 1.0
    """Sampling temperature of the actors; logprobs are recomputed under the same one."""
    token_budget: int = 4096
    """Most tokens (rows x padded length) in one micro-batch; gradients accumulate across them."""
    max_sample_tokens: int = 0
    """Longest sample (prompt and completion, in tokens) the learner trains; a longer one is
    dead-lettered alone at admission (reason `too_long`). 0: the model's context
    (`max_position_embeddings`)."""
    batch_size: int = 64
    """`share` mode: samples per update; `fresh` mode: fresh samples per update."""
    batch_mode: BatchMode = "share"
    """`share`: `batch_size` samples, exactly round(reset_fraction * batch_size) resets;
    `fresh`: `batch_size` fresh samples plus resets on top, up to the share `reset_fraction`
    of the batch (the paper's buffer). A kind that is not there when the stream runs dry or
    the buffer is full is filled by the other kind (counted, logged); see
    `learner.composition`."""
    reset_fraction: float = 0.5
    """Share of reset samples in a batch (`batch_mode`). 0 for runs without resets (plain
    PPO), or the learner reads ahead for resets that never come."""
    read_ahead: int = 256
    """Most admitted samples held in the buffer while a batch is composed (pending in Redis,
    leases kept); at least the largest batch. The buffer also counts as full when it and
    the trained-but-uncommitted samples reach the `samples` backlog limit (producers then
    wait for the learner)."""
    compose_patience: float = 10.0
    """Most seconds the learner waits for the missing kind once it holds `batch_size`
    samples; then the other kind fills the batch (counted and logged)."""
    max_policy_lag: int = 4
    """Samples generated more than this many updates behind the current weights are dropped
    as stale. Counted in steps along the lineage of the weights, not in versions: a restart
    that rolls back uncommitted updates publishes a new version holding an earlier step, and
    ages no pending sample (`learner/lineage.py`)."""
    lease_seconds: float = 6.0
    """TTL of the run's learner lease (renewed every third of it): a second learner of the
    run is refused, and a learner restarted after a crash waits at most this long."""
    checkpoint_dir: str = "checkpoints/learner"
    """Directory of checkpoints (`step-<n>/`, `latest`) and of the run log."""
    checkpoint_every: int = 1
    """Updates between checkpoints. A checkpoint is the commit point: samples are acked
    only after the checkpoint that contains them, so the samples backlog limit must allow
    `checkpoint_every` x the largest batch pending entries (checked at start)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (older ones are deleted)."""
    task: str = "arithmetic"
    """Task plugin spec (`module:Class` or a built-in name); gives prompts and the verifier."""
    task_options: dict = field(default_factory=dict)
    """Keyword options of the task class."""
    seed: int = 0
    """Seed of the feeder order, minibatch order, value head init and evaluation sampling."""
    adapter_keep: int = 3
    """Adapter versions whose chunks stay in Redis."""
    read_count: int = 64
    """Most samples taken from the stream per read."""
    log_sample_ids: bool = False
    """Write the ids of each update's samples, and of samples dropped as stale, into the run
    log (audits and fault tests)."""
    tensorboard_dir: str = ""
    """Also write every update's and evaluation's numbers as TensorBoard scalars here
    (`update/<name>`, `eval/<name>`, against the update step); needs the `tensorboard` extra
    (`pip install 'gpo[tensorboard]'`). Empty: none."""

    def __post_init__(self) -> None:
        positive = (
            "token_budget",
            "batch_size",
            "checkpoint_every",
            "keep_checkpoints",
            "adapter_keep",
            "read_count",
            "read_ahead",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"learner.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("temperature", "lease_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"learner.{name} must be > 0")
        if self.compose_patience < 0:
            raise ConfigError("learner.compose_patience must be >= 0")
        if not 0.0 <= self.reset_fraction <= 1.0:
            raise ConfigError("learner.reset_fraction must lie in [0, 1]")
        if not (0.0 < self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
            raise ConfigError("learner.gamma must lie in (0, 1] and learner.lam in [0, 1]")
        if self.max_policy_lag < 0 or self.max_sample_tokens < 0:
            raise ConfigError("learner.max_policy_lag and learner.max_sample_tokens must be >= 0")
        if self.batch_mode not in ("share", "fresh"):
            raise ConfigError(f"learner.batch_mode must be share or fresh, got {self.batch_mode!r}")
        if self.batch_mode == "fresh" and self.reset_fraction >= 1.0:
            raise ConfigError("learner.batch_mode = 'fresh' needs learner.reset_fraction < 1")
        if self.read_ahead < self.largest_batch:
            raise ConfigError(
                f"learner.read_ahead ({self.read_ahead}) must hold the largest batch "
                f"({self.largest_batch} samples)"
            )
        if self.reset_baseline not in ("loo", "value"):
            raise ConfigError(
                f"learner.reset_baseline must be loo or value, got {self.reset_baseline!r}"
            )
        if self.ppo.minibatches > self.batch_size:
            raise ConfigError("learner.ppo.minibatches must not exceed learner.batch_size")

    @property
    def largest_batch(self) -> int:
        """Samples in a full batch (`batch_mode` with its resets)."""
        return sum(batch_targets(self.batch_mode, self.batch_size, self.reset_fraction))

    @property
    def base_id(self) -> str:
        """The base model identifier published with each adapter."""
        return self.base_model_id or self.model


def check_samples_room(cfg: LearnerConfig, redis_cfg: RedisConfig) -> None:
    """Producers stop at the samples backlog limit, and the learner holds the samples of
    `checkpoint_every` updates unacked (the last one read while the others wait for the
    checkpoint): a limit below that leaves the learner waiting for samples that no producer
    may send."""
    held = cfg.checkpoint_every * cfg.largest_batch
    limit = redis_cfg.backlog_limit_for(SAMPLES)
    if limit < held:
        raise ConfigError(
            f"the samples backlog limit ({limit}, redis.backlog_limits.samples or "
            f"redis.backlog_limit) must hold learner.checkpoint_every x the largest batch "
            f"({cfg.checkpoint_every} x {cfg.largest_batch} = {held} samples held unacked)"
        )
