"""End-to-end tests of the tiny base policy: it saves, loads with Auto classes, and caches."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.tasks import load_task
from ops.tiny_policy.bootstrap import BootstrapConfig, bootstrap, main


def _fast_config(cache_dir) -> BootstrapConfig:
    """A config that trains a very small model for a few seconds (any pass@1 is in band)."""
    return BootstrapConfig(
        cache_dir=str(cache_dir),
        max_ops=2,
        n_train=200,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        batch_size=8,
        eval_every=20,
        eval_below_loss=100.0,
        eval_prompts=16,
        band_low=0.0,
        band_high=1.0,
    )


def test_bootstrap_saves_loadable_policy_and_caches(tmp_path):
    config = _fast_config(tmp_path / "cache")
    path = bootstrap(config)
    assert path == tmp_path / "cache" / config.cache_key()

    record = json.loads((path / "bootstrap.json").read_text())
    assert record["cache_key"] == config.cache_key()
    assert record["train_steps"] == 20  # the first evaluation is in the (full) band
    assert 0.0 <= record["pass_at_1"] <= 1.0 and record["in_band"]
    assert sum(record["first_wrong_step_histogram"].values()) == 16
    task = load_task(record["task"], **record["task_options"])
    assert task.heldout_prompts()[0] == config.load_task().heldout_prompts()[0]

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tokenizer("Q: 12+3\n", return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == tokenizer.bos_token_id
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == "Q: 12+3\n"
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.vocab_size == len(tokenizer)
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))

    started = time.monotonic()
    assert bootstrap(config) == path
    assert time.monotonic() - started < 1.0
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.name]  # no staging left


def test_bootstrap_is_deterministic_for_a_seed(tmp_path):
    a = bootstrap(_fast_config(tmp_path / "a"))
    b = bootstrap(_fast_config(tmp_path / "b"))
    weights_a = load_file(a / "model.safetensors")
    weights_b = load_file(b / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    record_a = json.loads((a / "bootstrap.json").read_text())
    record_b = json.loads((b / "bootstrap.json").read_text())
    assert record_a["pass_at_1"] == record_b["pass_at_1"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_default_bootstrap_lands_in_the_band(tmp_path):
    config = BootstrapConfig(cache_dir=str(tmp_path))
    record = json.loads((bootstrap(config) / "bootstrap.json").read_text())
    assert record["in_band"], record["evaluations"]
    assert config.band_low <= record["pass_at_1"] <= config.band_high
    # failures start at several different steps, not only at one
    failing = {k: v for k, v in record["first_wrong_step_histogram"].items() if k != "None"}
    assert sum(1 for v in failing.values() if v >= 3) >= 2


def test_cli_reads_toml_then_flags_and_reuses_the_cache(tmp_path, capsys):
    config = _fast_config(tmp_path / "cache")
    path = bootstrap(config)
    toml = tmp_path / "run.toml"
    toml.write_text(
        "[bootstrap]\n"
        + "".join(
            f"{k} = {json.dumps(v)}\n"
            for k, v in dataclasses.asdict(config).items()
            if k not in ("cache_dir", "seed")
        )
    )
    assert main(["--config", str(toml), "--cache-dir", str(tmp_path / "cache"), "--seed", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(path)
    assert out[1].startswith("pass@1 ")


def test_pivot_bootstrap_records_the_accuracy_of_easy_and_pivot_steps(tmp_path):
    config = dataclasses.replace(
        _fast_config(tmp_path / "cache"),
        task="pivot",
        min_steps=8,
        max_steps=8,
        easy_step_min=0.0,
        pivot_band_low=0.0,
        pivot_band_high=1.0,
    )
    path = bootstrap(config)
    record = json.loads((path / "bootstrap.json").read_text())
    assert record["task"] == "actors.tasks.pivot:Pivot" and record["in_band"]
    steps = record["step_accuracy"]
    assert steps["easy_total"] >= 16 and 0 <= steps["easy_right"] <= steps["easy_total"]
    assert 0.0 <= steps["pivot_rate"] <= 1.0 or steps["pivot_total"] == 0
    task = load_task(record["task"], **record["task_options"])
    assert task.heldout_prompts()[0] == config.load_task().heldout_prompts()[0]
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = task.heldout_prompts()[0].text
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def test_stopping_rules_and_cache_keys_by_task():
    arithmetic, pivot = BootstrapConfig(), BootstrapConfig(task="pivot")
    assert arithmetic.in_band(0.3, None) and not arithmetic.in_band(0.7, None)
    assert arithmetic.overshoot(0.7, None)
    steps = {"easy_rate": 0.98, "pivot_rate": 0.3}
    assert pivot.in_band(0.1, steps)
    assert not pivot.in_band(0.1, {**steps, "easy_rate": 0.9})  # slips on easy steps
    assert not pivot.in_band(0.1, {**steps, "pivot_rate": 0.1})  # the pivot not learned yet
    assert pivot.overshoot(0.5, {**steps, "pivot_rate": 0.6})
    # the pivot fields key pivot policies only: the arithmetic policy keeps its cache
    assert dataclasses.replace(arithmetic, max_steps=16).cache_key() == arithmetic.cache_key()
    assert dataclasses.replace(pivot, max_steps=16).cache_key() != pivot.cache_key()
    assert pivot.cache_key() != arithmetic.cache_key()
    with pytest.raises(ValueError):
        BootstrapConfig(task="chess")
    with pytest.raises(ValueError):
        BootstrapConfig(task="pivot", pivot_digits=3)
