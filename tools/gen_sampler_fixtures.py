#!/usr/bin/env python3
"""Sampler fixtures: Hugging Face's own logits processors on random logit vectors.

Run (from the repo root, by hand; not in CI):
    /tmp/torchenv/bin/python tools/gen_sampler_fixtures.py
Needs: torch (CPU, tested 2.15), transformers (tested 5.24; the four classes used are unchanged since 4.31), numpy.
Writes tests/data/sampler_cases.json.

For each case the pipeline of `generate(do_sample=True)` is applied in HF's order, each step only when
enabled exactly as `_get_logits_warper` does: RepetitionPenaltyLogitsProcessor (penalty != 1),
TemperatureLogitsWarper (temperature != 1), TopKLogitsWarper (top_k != 0), TopPLogitsWarper (top_p < 1).
Recorded: the input logits (f32), the parameters, the context ids, the probabilities (softmax of the processed
scores; exactly 0 for removed ids), the kept ids, and the greedy argmax after the repetition penalty alone
(what `do_sample=False` picks, lowest index on ties as torch.argmax).
"""
import json
import os

import numpy as np
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "sampler_cases.json")


def f32(x):
    return float(np.float32(x))


def run_case(logits, temperature, top_k, top_p, penalty, context):
    scores = torch.tensor([logits], dtype=torch.float32)  # [1, V]
    ids = torch.tensor([context if context else [0]], dtype=torch.long)  # [1, T]
    if penalty != 1.0 and context:
        scores = RepetitionPenaltyLogitsProcessor(penalty=f32(penalty))(ids, scores)
    greedy = int(torch.argmax(scores[0]).item())
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature=f32(temperature))(ids, scores)
    if top_k != 0:
        scores = TopKLogitsWarper(top_k=top_k)(ids, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p=f32(top_p))(ids, scores)
    probs = torch.softmax(scores, dim=-1)[0]
    kept = [i for i in range(len(logits)) if scores[0, i].item() != float("-inf")]
    return [float(p) for p in probs.tolist()], kept, greedy


def main():
    rng = np.random.default_rng(20240607)
    cases = []

    def add(name, logits, temperature=1.0, top_k=0, top_p=1.0, penalty=1.0, context=()):
        logits = [f32(x) for x in logits]
        temperature, top_p, penalty = f32(temperature), f32(top_p), f32(penalty)
        probs, kept, greedy = run_case(logits, temperature, top_k, top_p, penalty, list(context))
        # Shortest decimals that round-trip through f32 (the Rust side parses f32): half the file size.
        short = lambda xs: [float(str(np.float32(x))) for x in xs]
        cases.append(dict(name=name, logits=short(logits), temperature=temperature, top_k=top_k, top_p=top_p,
                          repetition_penalty=penalty, context=list(context), probs=short(probs), kept=kept,
                          greedy=greedy))

    def randn(v, scale=2.0):
        return (rng.standard_normal(v) * scale).tolist()

    # Qwen-7B-Chat defaults: top_p 0.8, top_k 0, repetition_penalty 1.1.
    add("qwen_chat_defaults", randn(64), top_p=0.8, penalty=1.1, context=rng.integers(0, 64, 20).tolist())
    add("plain_softmax", randn(10))
    add("temperature_low", randn(32), temperature=0.3)
    add("temperature_high", randn(32), temperature=1.7)
    add("top_k_5", randn(50), top_k=5)
    add("top_k_larger_than_v", randn(8), top_k=20)
    add("top_p_0.5", randn(100, 3.0), top_p=0.5)
    add("top_p_0.95_t0.7", randn(200), temperature=0.7, top_p=0.95)
    add("all_combined", randn(300), temperature=0.8, top_k=40, top_p=0.9, penalty=1.3,
        context=rng.integers(0, 300, 50).tolist())
    # Penalty both ways on negative and positive logits; context with repeats and ids at the edges.
    neg = randn(16)
    add("penalty_negative_logits", [-abs(x) for x in neg], penalty=1.5, context=[0, 3, 3, 3, 7, 15, 15])
    add("penalty_reward", randn(16), penalty=0.7, context=[1, 2, 2, 5, 9])
    # Ties: greedy must pick the lowest index; top-k keeps every logit equal to the k-th.
    add("ties_top_k", [1.0, 3.0, 2.0, 3.0, 2.0, 2.0, -1.0, 3.0, 0.5, 2.0], top_k=4)
    add("ties_greedy_penalty", [0.5, 2.0, 1.0, 2.0, 2.0, -3.0], penalty=1.2, context=[1])
    # A tie straddling the top-p boundary: ascending stable order removes the lower id first.
    add("ties_top_p", [0.0, 1.0, 1.0, 1.0, 1.0, 2.0, 0.0, 1.0], top_p=0.6)
    add("top_p_tiny_keeps_one", randn(40), top_p=0.01)
    add("negative_only", [-abs(x) - 1.0 for x in randn(24)], temperature=0.5, top_p=0.7, penalty=1.2,
        context=[2, 4, 6, 8, 10])
    add("large_v", randn(5000, 4.0), temperature=0.9, top_k=100, top_p=0.8, penalty=1.1,
        context=rng.integers(0, 5000, 200).tolist())

    # V above the sampler's TOP_P_HEAD (2048, src/sampler.rs) with top-p alone: a peaked vector, where the mass
    # outside the 2048 largest is <= 1 - top_p (the fast path), and a flat one, where it is not (full sort).
    for name, scale, top_p, fast in [("top_p_head_fast_path", 5.0, 0.9, True), ("top_p_head_flat", 0.3, 0.9, False)]:
        logits = [f32(x) for x in randn(3000, scale)]
        p = torch.softmax(torch.tensor(logits), dim=-1).sort().values
        rest = float(p[: len(logits) - 2048].double().sum())
        assert (rest <= 1 - top_p) == fast, (name, rest)
        add(name, logits, top_p=top_p)

    with open(OUT, "w") as f:
        json.dump({"generator": "tools/gen_sampler_fixtures.py", "cases": cases}, f, separators=(",", ":"))
    print(f"wrote {len(cases)} cases to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
