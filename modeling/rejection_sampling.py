"""Rejection sampling (Llama 2, section 3.2.3): K answers a prompt, the best by the reward model kept.

A round samples K answers to every prompt from a pool of models (`modeling.sampling`: the latest
model, or every model of the rounds before, as Llama 2 did from RLHF-V3 on), scores each answer
with the reward models, and keeps per prompt the answer with the highest selection reward; the
round's model is fine-tuned on the kept answers with the SFT objective (the flow does that).

Selection rewards (`selection_rewards`): one reward model's scores (`helpfulness`, `safety`), or
`gated`, PPO's safety-gated score (`modeling.ppo.gated_scores`: the safety score where the prompt
is tagged unsafe or the safety model is not confident the answer is safe, the helpfulness score
elsewhere). Only usable answers compete: ended with EOS (an answer cut by `max_new_tokens` is not
a whole answer to train on) and not blank (an empty turn is no dialogue to fine-tune on). A prompt
without one is dropped, `no_usable_answer`, and counted, so `prompts = selected + dropped`. Ties go to the earliest sample in stage order (deterministic).

The paper's figure 7 plots the max and the median reward among N samples against N, averaged over
the prompts: how much rejection sampling can gain from more samples. `reward_vs_k` gives, per k,
the exact expectation over the k-subsets of each prompt's samples (order statistics of its
sorted rewards), so it depends on no draw and no sample order, and uses every sample for every k.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import comb
from typing import Literal

import numpy as np

Selection = Literal["helpfulness", "safety", "gated"]
SELECTIONS: tuple[Selection, ...] = ("helpfulness", "safety", "gated")
NO_USABLE_ANSWER = "no_usable_answer"
SAFETY_THRESHOLD = 0.15  # Llama 2: below it the safety model's sigmoid decides (RECIPE.md, PPO)


def needed_reward_models(selection: Selection) -> tuple[str, ...]:
    return ("helpfulness", "safety") if selection == "gated" else (selection,)


def selection_rewards(rewards: Mapping[str, np.ndarray], unsafe: Sequence[bool] | np.ndarray, selection: Selection,
                      safety_threshold: float = SAFETY_THRESHOLD) -> np.ndarray:
    """(N,) the reward each of N answers competes with, from each reward model's (N,) scores."""
    missing = [name for name in needed_reward_models(selection) if name not in rewards]
    if missing:
        raise ValueError(f"selection {selection!r} needs the {' and '.join(missing)} reward model's scores; "
                         f"scored by {sorted(rewards) or 'none'}")
    if selection != "gated":
        return np.asarray(rewards[selection], dtype=np.float64)
    import torch

    from modeling.ppo import gated_scores

    gated, _ = gated_scores(torch.tensor(np.asarray(rewards["helpfulness"]), dtype=torch.float64),
                            torch.tensor(np.asarray(rewards["safety"]), dtype=torch.float64),
                            torch.as_tensor(np.asarray(unsafe, dtype=bool)), threshold=safety_threshold)
    return gated.numpy()


@dataclass(frozen=True)
class Choice:
    """A prompt's outcome: the index (into the samples scored) of its best usable answer, or why none."""

    prompt_id: str
    best: int | None
    reward: float | None
    candidates: int  # usable answers that competed
    dropped: str | None = None


def best_per_prompt(prompt_ids: Sequence[str], rewards: np.ndarray, usable: Sequence[bool]) -> list[Choice]:
    """One Choice per prompt, in order of first appearance: the usable answer of the highest reward
    (the earliest on a tie), or dropped `no_usable_answer`."""
    if not len(prompt_ids) == len(rewards) == len(usable):
        raise ValueError(f"{len(prompt_ids)} prompt ids, {len(rewards)} rewards, {len(usable)} usable flags")
    if np.isnan(rewards).any():
        raise ValueError(f"{int(np.isnan(rewards).sum())} rewards are NaN: a reward model gave no score")
    best: dict[str, Choice] = {}
    for index, (prompt_id, reward, done) in enumerate(zip(prompt_ids, rewards, usable)):
        current = best.setdefault(prompt_id, Choice(prompt_id, None, None, 0, NO_USABLE_ANSWER))
        if not done:
            continue
        if current.best is None or reward > current.reward:
            best[prompt_id] = Choice(prompt_id, index, float(reward), current.candidates + 1)
        else:
            best[prompt_id] = Choice(prompt_id, current.best, current.reward, current.candidates + 1)
    return list(best.values())


def expected_max_and_median(rewards: Sequence[float] | np.ndarray, k: int) -> tuple[float, float]:
    """E[max] and E[median] of the rewards of k answers drawn without replacement from these n.

    With the rewards sorted ascending, v_i is the j-th smallest of a random k-subset with probability
    C(i-1, j-1) C(n-i, k-j) / C(n, k); the median of an even k is the mean of its two middle values.
    """
    values = np.sort(np.asarray(rewards, dtype=np.float64))
    n = len(values)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n} for {n} rewards, got {k}")
    subsets = comb(n, k)

    def expected_order_statistic(j: int) -> float:
        weights = [comb(i - 1, j - 1) * comb(n - i, k - j) for i in range(1, n + 1)]
        return float(np.dot(values, np.array(weights, dtype=np.float64)) / subsets)

    middle = [(k + 1) // 2] if k % 2 else [k // 2, k // 2 + 1]
    median = sum(expected_order_statistic(j) for j in middle) / len(middle)
    return expected_order_statistic(k), median


def reward_vs_k(prompt_ids: Sequence[str], rewards: np.ndarray, ks: Sequence[int] | None = None) -> list[dict]:
    """[{"k", "max", "median", "prompts"}]: the expected max and median reward of k samples, averaged
    over the prompts with at least k samples; ks default to 1..the most samples any prompt has."""
    by_prompt: dict[str, list[float]] = {}
    for prompt_id, reward in zip(prompt_ids, rewards):
        by_prompt.setdefault(prompt_id, []).append(float(reward))
    if not by_prompt:
        raise ValueError("reward_vs_k needs at least one scored sample")
    most = max(len(values) for values in by_prompt.values())
    curve = []
    for k in ks if ks is not None else range(1, most + 1):
        stats = [expected_max_and_median(values, k) for values in by_prompt.values() if len(values) >= k]
        if stats:
            curve.append({"k": k, "max": float(np.mean([s[0] for s in stats])),
                          "median": float(np.mean([s[1] for s in stats])), "prompts": len(stats)})
    return curve


def reward_distribution(rewards: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """Summary of a round's kept rewards, to follow their drift across rounds."""
    values = np.asarray(rewards, dtype=np.float64)
    if not values.size:
        return {"count": 0}
    q10, q50, q90 = np.quantile(values, [0.1, 0.5, 0.9])
    return {"count": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
            "p10": float(q10), "median": float(q50), "p90": float(q90)}


# ---------------------------------------------------------------------------------- the selection stage

SELECTED_FILE = "selected.jsonl"  # the kept dialogues, in the `messages` form dialogue ingest reads
SCORES_FILE = "scores.jsonl"  # every sample's rewards and whether it was kept
REPORT_FILE = "selection.json"


def select_best(sample_stage: str, reward_models: Mapping[str, str], out_dir: str, *, selection: Selection,
                safety_threshold: float = SAFETY_THRESHOLD, batch_size: int = 16, gpus: float = 0) -> dict:
    """Score every sample of a finished sample stage with the reward models (name -> reward model
    folder, a `reward` run's or its hf/ export) and keep each prompt's best usable answer; returns
    the report (`REPORT_FILE`). Each reward model scores in a Ray task of its own (holding `gpus`
    GPUs, its model then on the GPU). A folder stage made in one go: redone only when the samples,
    the reward models' files or the selection changed."""
    from modeling.model_folders import model_digest
    from modeling.sampling import read_samples, sample_manifest
    from modeling.sft import base_model_folder
    from tasks.executor import fingerprint, run_once, run_tasks
    from tasks.storage import resolve

    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    needed = needed_reward_models(selection)
    missing = [name for name in needed if name not in reward_models]
    if missing:
        raise ValueError(f"selection {selection!r} needs the {' and '.join(missing)} reward model; given "
                         f"{sorted(reward_models) or 'none'}")
    folders = {name: str(base_model_folder(reward_models[name])) for name in needed}
    expected = fingerprint({"samples": sample_manifest(sample_stage)["fingerprint"], "selection": selection,
                            "safety_threshold": safety_threshold,
                            "reward_models": {name: model_digest(folder) for name, folder in folders.items()}})
    folder = resolve(out_dir)

    def work() -> dict:
        samples = list(read_samples(sample_stage))
        if not samples:
            raise ValueError(f"{sample_stage}: the sample stage holds no samples")
        names = sorted(folders)
        scored = run_tasks(score_samples_with, [(folders[name],) for name in names],
                           shared=(samples, batch_size, "cuda" if gpus else "cpu"), num_gpus=gpus,
                           label="scoring samples")
        rewards = dict(zip(names, scored))
        chosen = selection_rewards(rewards, [s.unsafe for s in samples], selection, safety_threshold)
        choices = best_per_prompt([s.prompt_id for s in samples], chosen, [usable(s) for s in samples])
        return write_selection(folder, samples, rewards, chosen, choices,
                               {"selection": selection, "reward_models": folders})

    summary = run_once(folder, expected, work)
    return folder.join(REPORT_FILE).read_json() | {"digest": summary["digest"]}


def usable(sample) -> bool:
    """Whether a sampled answer may be kept: whole (ended with EOS) and not blank."""
    return sample.finished and bool(sample.answer.strip())


def score_samples_with(samples: Sequence, batch_size: int, device: str, reward_model_folder: str) -> np.ndarray:
    """(N,) one reward model's scores of the samples' answers (as `modeling.chat_eval` scores them)."""
    from modeling.chat_eval import score_answers
    from modeling.reward import load_reward_hf
    from tasks.dialogues.prompts import ChatPrompt
    from tasks.tokenizer import Tokenizer

    model = load_reward_hf(reward_model_folder, device=device)
    tokenizer = Tokenizer.load(f"{reward_model_folder}/tokenizer.model")
    prompts = [ChatPrompt(s.prompt_id, tuple(s.messages)) for s in samples]
    return score_answers(model, tokenizer, prompts, [s.answer for s in samples], batch_size=batch_size)


def write_selection(folder, samples: Sequence, rewards: Mapping[str, np.ndarray], chosen: np.ndarray,
                    choices: Sequence[Choice], about: Mapping[str, object]) -> dict:
    """The kept dialogues, every sample's scores and the report (`about` saying how they were
    chosen); returns the report."""
    import json

    from tasks.storage import atomic_output, write_json_atomic

    kept = {c.best for c in choices if c.best is not None}
    with atomic_output(folder.join(SELECTED_FILE)) as out:
        for choice in choices:
            if choice.best is None:
                continue
            sample = samples[choice.best]
            messages = [{"role": m.role, "content": m.content} for m in sample.messages]
            record = {"messages": [*messages, {"role": "assistant", "content": sample.answer}],
                      "prompt_id": sample.prompt_id, "model": sample.model, "sample": sample.sample,
                      "reward": choice.reward}
            out.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
    with atomic_output(folder.join(SCORES_FILE)) as out:
        for index, sample in enumerate(samples):
            record = {"prompt_id": sample.prompt_id, "model": sample.model, "sample": sample.sample,
                      "finished": sample.finished, "usable": usable(sample), "selection_reward": float(chosen[index]), "kept": index in kept,
                      **{f"reward_{name}": float(scores[index]) for name, scores in sorted(rewards.items())}}
            out.write((json.dumps(record) + "\n").encode())
    dropped: dict[str, int] = {}
    for choice in choices:
        if choice.dropped:
            dropped[choice.dropped] = dropped.get(choice.dropped, 0) + 1
    kept_by_model: dict[str, int] = {}
    for index in sorted(kept):
        kept_by_model[samples[index].model] = kept_by_model.get(samples[index].model, 0) + 1
    report = {
        **about,
        "prompts": len(choices), "selected": len(kept), "dropped": dropped, "samples": len(samples),
        "finished_samples": int(sum(s.finished for s in samples)),
        "usable_samples": int(sum(usable(s) for s in samples)),
        "reward_vs_k": reward_vs_k([s.prompt_id for s in samples], chosen),
        "kept_rewards": reward_distribution([c.reward for c in choices if c.reward is not None]),
        "all_rewards": reward_distribution(chosen),
        "kept_by_model": kept_by_model,
        "mean_reward_by_model": {model: float(np.mean([chosen[i] for i, s in enumerate(samples) if s.model == model]))
                                 for model in sorted({s.model for s in samples})},
    }
    if report["prompts"] != report["selected"] + sum(dropped.values()):
        raise RuntimeError(f"the selection does not reconcile (prompts != selected + dropped): {report}")
    write_json_atomic(folder.join(REPORT_FILE), report)
    return report
