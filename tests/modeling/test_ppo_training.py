"""PPO through the training core: the run's config and presets, the export (policy and value
model), learning shown on a reward whose answer is known (the share of answer tokens from a
small set), the KL to the reference bounded, and exact resume across an iteration boundary."""

from __future__ import annotations

import copy
import datetime
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist

from modeling.checkpoints import load_hf, save_hf
from modeling.generate import Sampling, generate
from modeling.ppo_training import PPOConfig, PolicyAndValue, debug_run, llama2_7b_chat_run
from modeling.reward import load_reward_hf, save_reward_hf
from modeling.rollouts import (
    RolloutSample,
    answer_logprobs_of,
    answer_values,
    assemble_rollouts,
    write_rollouts,
)
from modeling.train import Trainer
from tasks.dialogues.prompts import ChatPrompt
from tasks.dialogues.records import Message
from tests.modeling.helpers import random_model, spawn_two_ranks, tiny_config

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning"),
]
GOOD_TOKENS = 12  # the reward of an answer is the share of its tokens with ids below this
PROMPT_TOKENS, ANSWER_TOKENS = 4, 6


def ppo_config(tmp_path, name: str, iterations: int, **overrides) -> PPOConfig:
    settings = dict(run_name=name, output=str(tmp_path / "runs"), data=str(tmp_path / name / "rollouts"),
                    model=tiny_config(), iterations=iterations, batch_samples=32, mini_batch_samples=8,
                    micro_batch_rows=4, seq_len=PROMPT_TOKENS + ANSWER_TOKENS - 1, kl_beta=0.05, max_mean_kl=30.0,
                    optimizer={"lr": 5e-3, "weight_decay": 0.0}, export_hf=False, seed=3)
    return PPOConfig.model_validate(settings | overrides)


def known_reward(samples: list[RolloutSample]) -> np.ndarray:
    return np.array([np.mean(np.asarray(s.answer_ids) < GOOD_TOKENS) for s in samples])


def write_iteration(config: PPOConfig, model: PolicyAndValue, reference, iteration: int) -> dict:
    """Iteration `iteration`'s rollouts as a flow makes them: sample from the policy, score with
    every role (the helpfulness "model" the known rule, the safety one content with every answer)."""
    rng = np.random.default_rng([config.seed, iteration])
    prompt_ids = [rng.integers(GOOD_TOKENS, 96, PROMPT_TOKENS).tolist() for _ in range(config.batch_samples)]
    answers = generate(model.policy, prompt_ids, max_new_tokens=ANSWER_TOKENS, sampling=Sampling(temperature=1.0),
                       seed=iteration)
    samples = [RolloutSample(ChatPrompt(f"p:{n}", (Message("user", "q"),)), p, a)
               for n, (p, a) in enumerate(zip(prompt_ids, answers))]
    settings = config.rollout_settings()
    rollouts = assemble_rollouts(samples, answer_logprobs_of(model.policy, samples),
                                 answer_logprobs_of(reference, samples), answer_values(model.value, samples),
                                 helpful=known_reward(samples), safety=np.full(len(samples), 3.0), settings=settings)
    return write_rollouts(config.data, iteration, rollouts, settings)


def run_ppo(config: PPOConfig, iterations: int, *, trainer_per_iteration: bool) -> tuple[list[dict], list[dict]]:
    """Each iteration's rollout manifest (and one more of the final policy) and the training metrics.
    trainer_per_iteration: a new Trainer each iteration, resuming from the run folder, as the flow does."""
    torch.manual_seed(config.seed)
    model = config.new_model()  # what a Trainer starts from without init: the same seed, the same draw
    reference = copy.deepcopy(model.policy)
    manifests, history, trainer = [], [], None
    for iteration in range(iterations):
        manifests.append(write_iteration(config, model, reference, iteration))
        if trainer is None or trainer_per_iteration:
            trainer = Trainer(config)
            assert trainer.step == config.steps_per_iteration * iteration
        history += trainer.train(until=config.steps_per_iteration * (iteration + 1))
        model = trainer.model
    manifests.append(write_iteration(config, model, reference, iterations))
    return manifests, history


def test_ppo_raises_a_known_reward_while_the_kl_penalty_holds_the_policy_near_the_reference(tmp_path):
    iterations = 10
    started = time.perf_counter()
    runs = {beta: run_ppo(ppo_config(tmp_path, f"beta-{beta}", iterations, kl_beta=beta), iterations,
                          trainer_per_iteration=True) for beta in (0.05, 0.5)}
    rewards = {beta: [round(m["reward_helpful"], 3) for m in manifests] for beta, (manifests, _) in runs.items()}
    kls = {beta: [round(m["kl"], 3) for m in manifests] for beta, (manifests, _) in runs.items()}
    manifests, history = runs[0.05]
    print(f"PPO on a known reward, 2 x {len(history)} steps in {time.perf_counter() - started:.1f} s: mean reward by "
          f"iteration {rewards}, KL to the reference {kls}, value loss {history[0]['value_loss']:.3f} -> "
          f"{history[-1]['value_loss']:.3f}, clip fraction at most {max(m['clip_fraction'] for m in history):.2f}")
    first = history[0]
    # The first mini-batch is scored by the very policy that sampled it: ratio 1, nothing clipped.
    assert first["approx_kl"] < 1e-6 and first["clip_fraction"] == 0
    assert first["loss_tokens"] == 8 * ANSWER_TOKENS and len(history) == iterations * 4
    assert rewards[0.05][0] < 0.2  # chance: 12 of 96 tokens
    assert rewards[0.05][-1] > rewards[0.05][0] + 0.3  # 0.13 -> 0.67 when written
    assert all(0 <= kl < 30.0 for run in kls.values() for kl in run)  # within the run's max_mean_kl
    # The stronger penalty keeps the policy closer to the reference, for less reward.
    assert kls[0.5][-1] < 0.5 * kls[0.05][-1] and rewards[0.5][-1] < rewards[0.05][-1]
    assert history[-1]["value_loss"] < history[0]["value_loss"]


def test_a_run_resumed_at_each_iteration_trains_exactly_as_one_never_stopped(tmp_path):
    straight_manifests, straight = run_ppo(ppo_config(tmp_path, "straight", 2), 2, trainer_per_iteration=False)
    resumed_manifests, resumed = run_ppo(ppo_config(tmp_path, "resumed", 2), 2, trainer_per_iteration=True)
    assert [m["loss"] for m in resumed] == [m["loss"] for m in straight]
    assert [m["approx_kl"] for m in resumed] == [m["approx_kl"] for m in straight]
    assert [m["kl"] for m in resumed_manifests] == [m["kl"] for m in straight_manifests]


def test_the_next_iteration_must_exist_before_it_is_trained(tmp_path):
    config = ppo_config(tmp_path, "missing", 2)
    with pytest.raises(FileNotFoundError, match="no finished rollouts of PPO iteration 0"):
        Trainer(config)
    torch.manual_seed(config.seed)
    model = config.new_model()
    write_iteration(config, model, copy.deepcopy(model.policy), 0)
    trainer = Trainer(config)
    trainer.train(until=4)
    with pytest.raises(FileNotFoundError, match="iteration-0001: no finished rollouts of PPO iteration 1"):
        trainer.train_step()
    with pytest.raises(ValueError, match="holds 32 rollouts, the run takes batch_samples 64"):
        Trainer(ppo_config(tmp_path, "missing", 2, batch_samples=64))


def test_a_job_of_one_iteration_stops_and_checkpoints_at_its_end(tmp_path):
    """The rlhf flow trains iteration i as its own job, `through_iteration` i, after writing its rollouts."""
    config = ppo_config(tmp_path, "jobs", 3, through_iteration=0)
    assert (config.stop_step, config.total_steps) == (4, 12)
    torch.manual_seed(config.seed)
    model = config.new_model()
    write_iteration(config, model, copy.deepcopy(model.policy), 0)
    first = Trainer(config)
    assert len(first.train()) == 4 and first.run_folder.checkpoint_steps() == [4]
    with pytest.raises(FileNotFoundError, match="no finished rollouts of PPO iteration 1"):
        Trainer(config.model_copy(update={"through_iteration": 1}))
    write_iteration(config, first.model, copy.deepcopy(model.policy), 1)
    second = Trainer(config.model_copy(update={"through_iteration": 1}))
    assert second.step == 4 and len(second.train()) == 4 and second.step == 8
    with pytest.raises(ValueError, match="through_iteration 3 is past the run's last iteration"):
        ppo_config(tmp_path, "jobs", 3, through_iteration=3)


def test_the_config_is_a_step_a_mini_batch_and_a_checkpoint_an_iteration(tmp_path):
    config = ppo_config(tmp_path, "c", 3)
    assert config.kind == "ppo" and config.steps_per_iteration == 4 and config.total_steps == 12
    assert config.global_batch_rows == 8 and config.accumulation_steps(1) == 2
    assert config.checkpoint.interval_steps == 4
    assert (config.peak_lr, config.warmup_steps, config.schedule.final_lr_ratio) == (5e-3, 0, 1.0)
    plain = PPOConfig(run_name="plain", model="debug", iterations=2, seq_len=255)  # the paper's constant lr by default
    assert (plain.peak_lr, plain.warmup_steps, plain.schedule.final_lr_ratio, plain.clip_ratio) == (1e-6, 0, 1.0, 0.2)
    assert (plain.batch_samples, plain.mini_batch_samples, plain.gamma, plain.lam) == (512, 64, 1.0, 0.95)
    with pytest.raises(ValueError, match="not a whole number of mini-batches"):
        ppo_config(tmp_path, "c", 3, batch_samples=30)
    with pytest.raises(ValueError, match="must divide the 4 steps of an iteration"):
        ppo_config(tmp_path, "c", 3, checkpoint={"interval_steps": 3})
    with pytest.raises(ValueError, match="length is its iterations"):
        ppo_config(tmp_path, "c", 3, steps=5)
    paper = llama2_7b_chat_run()
    assert (paper.batch_samples, paper.mini_batch_samples, paper.steps_per_iteration, paper.iterations) == (512, 64, 8, 200)
    assert (paper.peak_lr, paper.schedule.final_lr_ratio, paper.warmup_steps) == (1e-6, 1.0, 0)
    assert (paper.clip_ratio, paper.kl_beta, paper.rollout_settings().beta) == (0.2, 0.01, 0.01)
    assert paper.accumulation_steps(8) == 4 and paper.global_batch_rows == 64
    # The policy and the value model are trained together: both count against the GPUs' memory.
    shape = paper.model_shape
    assert paper.trained_parameters() == 2 * shape.n_params - shape.vocab_size * shape.dim + shape.dim
    with pytest.raises(ValueError, match=r"the run trains 13\.35B parameters: .* need at least 4 GPUs of 80 GiB"):
        llama2_7b_chat_run(scaling={"num_workers": 2, "use_gpu": True, "gpu_memory_gib": 80})
    debug = debug_run()
    assert (debug.batch_samples, debug.mini_batch_samples, debug.steps_per_iteration) == (32, 8, 4)
    assert not debug.scaling.use_gpu and debug.model_name == "debug"


def test_the_run_starts_from_the_chat_and_reward_models_and_exports_both(tmp_path):
    shape = tiny_config()
    chat = random_model(shape, seed=4)
    save_hf(chat, tmp_path / "chat")
    reward = PolicyAndValue(shape, value_seed=9).value
    save_reward_hf(reward, tmp_path / "reward")
    config = ppo_config(tmp_path, "init", 1, init=str(tmp_path / "chat"), value_init=str(tmp_path / "reward"))
    weights = config.initial_weights()
    model = config.new_model()
    model.load_state_dict(weights)
    assert all(torch.equal(model.policy.state_dict()[k], v) for k, v in chat.state_dict().items())
    assert all(torch.equal(model.value.state_dict()[k], v) for k, v in reward.state_dict().items())
    exported = config.save_hf(model, tmp_path / "export")
    assert all(torch.equal(load_hf(exported).state_dict()[k], v) for k, v in chat.state_dict().items())
    assert all(torch.equal(load_reward_hf(exported / "value").state_dict()[k], v)
               for k, v in reward.state_dict().items())
    # Through the core: a Trainer starts from both and exports both.
    write_iteration(config, model, chat, 0)
    trainer = Trainer(config, initial_weights=weights)
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in weights.items())
    through_core = trainer.export_hf(tmp_path / "through-core")
    assert all(torch.equal(load_reward_hf(through_core / "value").state_dict()[k], v)
               for k, v in reward.state_dict().items())
    assert config.reference_folder() == tmp_path / "chat"
    # Without a reward model the value model is the chat model's backbone under a seeded score head.
    backbone_only = ppo_config(tmp_path, "init", 1, init=str(tmp_path / "chat")).initial_weights()
    assert torch.equal(backbone_only["value.backbone.layers.0.attention.wq.weight"],
                       chat.state_dict()["layers.0.attention.wq.weight"])


def test_activation_checkpointing_reaches_both_models_blocks_and_changes_no_loss(tmp_path):
    config = ppo_config(tmp_path, "plain", 1)
    torch.manual_seed(config.seed)
    model = config.new_model()
    write_iteration(config, model, copy.deepcopy(model.policy), 0)
    plain = Trainer(config).train_step()
    checkpointed_config = ppo_config(tmp_path, "checkpointed", 1, data=config.data,
                                     parallelism={"activation_checkpointing": "all"})
    checkpointed = Trainer(checkpointed_config)
    wrapped = [type(block).__name__ for block in (*checkpointed.model.policy.layers, *checkpointed.model.value.layers)]
    assert wrapped == ["CheckpointWrapper"] * 4
    metrics = checkpointed.train_step()
    assert metrics["loss"] == pytest.approx(plain["loss"], rel=1e-6, abs=1e-7)
    assert metrics["value_loss"] == pytest.approx(plain["value_loss"], rel=1e-6)


def _ddp_worker(rank: int, rendezvous: str, settings: dict, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        trainer = Trainer(PPOConfig.model_validate(settings))
        history = trainer.train(until=2)
        if rank == 0:
            torch.save({"history": history, "weights": trainer.model.state_dict()}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_two_ddp_ranks_train_as_one_process_on_the_whole_mini_batch(tmp_path, monkeypatch):
    config = ppo_config(tmp_path, "one", 1)
    torch.manual_seed(config.seed)
    model = config.new_model()
    write_iteration(config, model, copy.deepcopy(model.policy), 0)
    out = str(tmp_path / "ddp.pt")
    settings = config.model_dump() | {"run_name": "two"}
    spawn_two_ranks(_ddp_worker, (settings, out), tmp_path, monkeypatch)
    distributed = torch.load(out)
    one = Trainer(config)
    history = one.train(until=2)
    for got, expected in zip(distributed["history"], history):
        for name in ("loss", "value_loss", "approx_kl", "clip_fraction", "loss_tokens"):
            assert got[name] == pytest.approx(expected[name], rel=1e-5, abs=1e-7), name
    for name, tensor in one.model.state_dict().items():
        assert torch.allclose(distributed["weights"][name], tensor, atol=1e-5), name
