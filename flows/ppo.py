"""`ppo`: Llama 2's PPO (section 3.2.3) from a chat model and its reward models, iteration by iteration.

Iteration i of a run (`modeling.ppo_training.PPOConfig`: `init` the chat model, which is also the
frozen reference; `value_init` the reward model the value model starts from):

1. draws `batch_samples` prompts from the prompt sets (seeded by `prompt_seed` and i; only prompts
   with room for `max_new_tokens` in the run's sequence), written as the iteration's prompt set;
2. samples one answer to each from the policy (`modeling.sampling`, Ray actors): `init` for
   i = 0, then the export of the iteration before, at the run's `temperature`;
3. scores them with every role as Ray tasks, each loading its own model (`modeling.rollouts.score_role`:
   the policy's and the reference's log-probs, the value model's values, the helpfulness and safety
   reward models' scores) and writes the iteration's rollouts: the safety-gated, whitened score,
   per-token KL penalty, GAE advantages and returns; an iteration whose mean KL or answer length
   is beyond its bound stops the run with what to change;
4. trains on them through the shared training path (`flows.training.train`: a Ray Train job of
   that one iteration, `through_iteration` i, resuming from the run's checkpoint of iteration i - 1,
   one optimizer step per mini-batch) and exports the policy (and the value model under value/).

Everything lives under `workspace`: `prompts/`, `samples/iteration-NNNN/`, `rollouts/iteration-NNNN/`
(the run's data); the run folder under `training.output`. A rerun resumes at the first iteration
whose training job did not finish. After each iteration the flow publishes `ppo-iterations` (a table:
rewards helpful, safety and gated, KL, answer length, the share gated to safety, clip fractions,
value loss) and `ppo-progress` (their curves), so a run is followed as it goes.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flows.figures import png_bytes, pyplot
from flows.training import run_config_of_parameters, stop_job_on_cancellation, train
from modeling.ppo_training import PPOConfig, debug_run
from modeling.run_config import with_overrides
from tasks.settings import default_data_root

ITERATION_COLUMNS = ("reward_helpful", "reward_safety", "reward_gated", "kl", "kl_per_token", "response_length",
                     "safety_share")
TRAINING_COLUMNS = ("loss", "policy_loss", "value_loss", "clip_fraction", "value_clip_fraction", "approx_kl")


class PPOFlowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompts: list[str] = Field(default_factory=lambda: [f"{default_data_root()}/demo/raw/prompts/prompts.jsonl"],
                               description="Prompt sets (JSON lines of {\"messages\": [...]} ending with a user turn, "
                                           "optionally \"unsafe\": true)")
    reward_models: dict[str, str] = Field(default_factory=lambda: {
        "helpfulness": f"{default_data_root()}/demo/runs/demo-reward"},
        description="Reward model folders (a reward run or its hf/ export): helpfulness, and safety (without it "
                    "the helpfulness score is the reward everywhere)")
    workspace: str = Field(default_factory=lambda: f"{default_data_root()}/demo/ppo",
                           description="Where the iterations' prompts, samples and rollouts go")
    max_new_tokens: int = Field(24, ge=1, description="Tokens an answer has at most")
    top_p: float | None = Field(None, gt=0, le=1)
    prompt_seed: int = Field(0, ge=0, description="Seed of each iteration's draw of prompts")
    batch_size: int = Field(16, ge=1, description="Prompts decoded, sequences scored at once")
    actors: int = Field(1, ge=1, description="Ray actors sampling in parallel, each holding the policy")
    gpus: float = Field(0, ge=0, description="GPUs each sampling actor and each role's scoring task holds (its "
                                             "model then runs on the GPU); 0: CPU")
    training: PPOConfig = Field(default_factory=debug_run, description="The PPO run; its data is set to the "
                                                                       "workspace's rollouts")

    @model_validator(mode="after")
    def _reward_models(self) -> PPOFlowConfig:
        unknown = sorted(set(self.reward_models) - {"helpfulness", "safety"})
        if unknown or "helpfulness" not in self.reward_models:
            raise ValueError(f"reward_models must name a helpfulness model (and may a safety one); got "
                             f"{sorted(self.reward_models)}")
        return self

    def run_config(self) -> PPOConfig:
        """The run, its rollouts in the workspace and its value model from the helpfulness reward model
        unless given (Llama 2 initialises it from the reward model)."""
        update: dict[str, Any] = {"data": f"{self.workspace.rstrip('/')}/rollouts"}
        if self.training.value_init is None:
            update["value_init"] = self.reward_models["helpfulness"]
        return PPOConfig.model_validate(self.training.model_dump() | update).with_absolute_paths()

    def prompts_file(self, iteration: int) -> str:
        return f"{self.workspace.rstrip('/')}/prompts/iteration-{iteration:04d}.jsonl"

    def samples_stage(self, iteration: int) -> str:
        return f"{self.workspace.rstrip('/')}/samples/iteration-{iteration:04d}"


# ---------------------------------------------------------------------------------- the steps


def policy_folders(run: PPOConfig, iteration: int) -> tuple[str, str]:
    """The policy and the value model iteration `iteration` samples and scores with."""
    from modeling.ppo_training import VALUE_EXPORT
    from modeling.ray_job import HF_EXPORT

    if iteration == 0:
        return run.init, run.value_init
    export = f"{run.run_uri}/{HF_EXPORT}"
    return export, f"{export}/{VALUE_EXPORT}"


def trained_through(run: PPOConfig) -> int:
    """Iterations whose training job finished (its export written): 0 for a new run."""
    from modeling.ray_job import SUMMARY_FILE

    summary = Path(run.run_uri) / SUMMARY_FILE
    if not summary.is_file():
        return 0
    return json.loads(summary.read_text())["steps"] // run.steps_per_iteration


@task
def check(config: PPOFlowConfig, run: PPOConfig) -> list:
    """Before any work: the prompt sets, the models, and the prompts with room in the run's sequence."""
    from modeling.chat_eval import prompts_that_fit
    from modeling.model_folders import folder_checkpoints
    from modeling.reward import reward_model_folder
    from tasks.dialogues.prompts import read_prompts
    from tasks.tokenizer import Tokenizer

    if run.init is None:
        raise ValueError("training.init: PPO starts from a chat model (its policy and its reference)")
    for name, folder in config.reward_models.items():
        reward_model_folder(folder, name)
    checkpoint = folder_checkpoints(run.init, tokenizer=run.tokenizer)[0]
    tokenizer = Tokenizer.load(checkpoint.tokenizer)
    prompts = [prompt for path in config.prompts for prompt in read_prompts(path)[0]]
    unsafe = [p.where for p in prompts if p.unsafe]
    if unsafe and "safety" not in config.reward_models:
        raise ValueError(f"{len(unsafe)} prompts are tagged unsafe (e.g. {unsafe[0]}) but no safety reward model is "
                         f"given to judge their answers")
    fitting, _, skipped = prompts_that_fit(tokenizer, prompts, run.seq_len + 1, config.max_new_tokens, "skip")
    if not fitting:
        raise ValueError(f"no prompt of {config.prompts} leaves room for {config.max_new_tokens} new tokens within "
                         f"the run's seq_len {run.seq_len}")
    print(f"PPO {run.run_name}: {len(fitting)} of {len(prompts)} prompts fit {run.seq_len + 1} tokens with "
          f"{config.max_new_tokens} new ({len(skipped)} too long); {run.iterations} iterations of "
          f"{run.batch_samples} samples, {run.steps_per_iteration} steps each")
    return fitting


@task
def draw_prompts(config: PPOFlowConfig, run: PPOConfig, prompts: list, iteration: int) -> str:
    """The iteration's `batch_samples` prompts (without repeats while the set lasts), as a prompt set."""
    from tasks.storage import atomic_output, resolve

    rng = np.random.default_rng([config.prompt_seed, iteration])
    rounds = -(-run.batch_samples // len(prompts))
    order = np.concatenate([rng.permutation(len(prompts)) for _ in range(rounds)])[:run.batch_samples]
    path = config.prompts_file(iteration)
    with atomic_output(resolve(path)) as out:
        for index in order:
            prompt = prompts[int(index)]
            record = {"messages": prompt.as_dicts(), "unsafe": prompt.unsafe, "drawn_from": prompt.where}
            out.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
    return path


@task
def sample(config: PPOFlowConfig, run: PPOConfig, iteration: int, prompts_file: str) -> dict[str, Any]:
    from modeling.sampling import SamplingConfig, sample_stage

    policy, _ = policy_folders(run, iteration)
    sampling = SamplingConfig(models=[policy], samples_per_prompt=1, max_new_tokens=config.max_new_tokens,
                              temperature=run.temperature, top_p=config.top_p, seed=run.seed * 10_000 + iteration,
                              batch_size=config.batch_size, actors=config.actors, gpus_per_actor=config.gpus,
                              tokenizer=run.tokenizer)
    manifest = sample_stage([prompts_file], sampling, config.samples_stage(iteration))
    if manifest["samples"] != run.batch_samples:
        raise RuntimeError(f"PPO iteration {iteration}: {manifest['samples']} samples, not batch_samples "
                           f"{run.batch_samples} (skipped: {manifest['prompts_skipped']})")
    return manifest


def score_role_task(samples: list, temperature: float, batch_size: int, device: str, role: str, folder: str):
    from modeling.rollouts import score_role

    return score_role(samples, role, folder, temperature=temperature, batch_size=batch_size, device=device)


@task
def score(config: PPOFlowConfig, run: PPOConfig, iteration: int) -> dict[str, Any]:
    """Every role's scores of the iteration's samples (Ray tasks), made into its rollouts."""
    from modeling.model_folders import folder_checkpoints
    from modeling.rollouts import RolloutSample, assemble_rollouts, finished_rollouts, write_rollouts
    from modeling.sampling import read_samples, sample_manifest
    from tasks.chat_format import encode_prompt
    from tasks.dialogues.prompts import ChatPrompt
    from tasks.executor import run_tasks
    from tasks.tokenizer import Tokenizer

    sampled = sample_manifest(config.samples_stage(iteration))["fingerprint"]
    done = finished_rollouts(run.data, iteration)
    if done is not None and done["provenance"].get("samples_fingerprint") == sampled:
        return done  # the rollouts of these very samples
    tokenizer = Tokenizer.load(folder_checkpoints(run.init, tokenizer=run.tokenizer)[0].tokenizer)
    samples = []
    for drawn in read_samples(config.samples_stage(iteration)):
        prompt = ChatPrompt(drawn.prompt_id, drawn.messages, unsafe=drawn.unsafe)
        samples.append(RolloutSample(prompt, encode_prompt(tokenizer, prompt.as_dicts()), drawn.answer_ids,
                                     unsafe=drawn.unsafe))
    policy, value = policy_folders(run, iteration)
    roles = {"policy": policy, "reference": run.init, "value": value, **config.reward_models}
    names = sorted(roles)
    scored = dict(zip(names, run_tasks(score_role_task, [(name, str(roles[name])) for name in names],
                                       shared=(samples, run.temperature, config.batch_size,
                                               "cuda" if config.gpus else "cpu"), num_gpus=config.gpus,
                                       label=f"PPO iteration {iteration}: scoring")))
    settings = run.rollout_settings()
    rollouts = assemble_rollouts(samples, scored["policy"], scored["reference"], scored["value"],
                                 scored["helpfulness"], scored.get("safety"), settings)
    manifest = write_rollouts(run.data, iteration, rollouts, settings,
                              provenance={"samples": config.samples_stage(iteration), "samples_fingerprint": sampled,
                                          **{k: str(v) for k, v in roles.items()}})
    print(f"PPO iteration {iteration}: reward helpful {manifest['reward_helpful']:.3f}, gated "
          f"{manifest['reward_gated']:.3f}, KL {manifest['kl']:.3f} nats, answers {manifest['response_length']:.1f} "
          f"tokens")
    return manifest


def iteration_rows(run: PPOConfig, manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per iteration: its rollouts' figures and its training steps' means."""
    from modeling.ray_job import read_metrics

    steps = [e for e in read_metrics(run.run_uri) if "event" not in e and "loss" in e]
    rows = []
    for manifest in manifests:
        i = manifest["iteration"]
        trained = [e for e in steps if i * run.steps_per_iteration < e["step"] <= (i + 1) * run.steps_per_iteration]
        rows.append({"iteration": i, **{name: manifest.get(name) for name in ITERATION_COLUMNS},
                     **{name: float(np.mean([e[name] for e in trained])) if trained and name in trained[0] else None
                        for name in TRAINING_COLUMNS}})
    return rows


@task
def publish(config: PPOFlowConfig, run: PPOConfig, manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = iteration_rows(run, manifests)
    create_table_artifact(key="ppo-iterations", table=rows,
                          description=f"{run.run_name}: each iteration's rewards, KL, answer length and training")
    png = base64.b64encode(iterations_png(rows, run.run_name)).decode()
    create_markdown_artifact(key="ppo-progress", markdown=f"# PPO {run.run_name}: {len(rows)} of {run.iterations} "
                                                          f"iterations\n\n![PPO curves](data:image/png;base64,{png})\n",
                             description=f"{run.run_name}: reward, KL, answer length and clip fraction by iteration")
    return rows


def iterations_png(rows: list[dict[str, Any]], title: str) -> bytes:
    plt = pyplot()
    figure, axes = plt.subplots(1, 4, figsize=(14, 3.2), dpi=100)
    x = [row["iteration"] for row in rows]
    panels = [("reward", ("reward_helpful", "reward_safety", "reward_gated")), ("KL to the reference", ("kl",)),
              ("answer tokens", ("response_length",)), ("training", ("clip_fraction", "value_loss", "approx_kl"))]
    for axis, (name, columns) in zip(axes, panels):
        for column in columns:
            points = [(i, row[column]) for i, row in zip(x, rows) if row[column] is not None]
            if points:
                axis.plot(*zip(*points), "o-", markersize=3, label=column)
        axis.set_title(name)
        axis.set_xlabel("iteration")
        axis.legend(fontsize=7)
    figure.suptitle(title)
    return png_bytes(figure)


# ---------------------------------------------------------------------------------- the flow


run_config_of = run_config_of_parameters(PPOFlowConfig, PPOFlowConfig.run_config)


@flow(name="ppo", log_prints=True, on_cancellation=[stop_job_on_cancellation(run_config_of)])
def ppo(config: PPOFlowConfig = PPOFlowConfig(), overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """`overrides` changes single fields of `config` at run time, e.g. {"prompts": ["/data/prompts.jsonl"]} or
    {"training": {"iterations": 200, "kl_beta": 0.005}}."""
    config = with_overrides(config, overrides)
    run = config.run_config()
    prompts = check(config, run)
    manifests, summary = [], None
    done = trained_through(run)
    for iteration in range(run.iterations):
        if iteration >= done:
            sample(config, run, iteration, draw_prompts(config, run, prompts, iteration))
        manifests.append(score(config, run, iteration))
        if iteration >= done:
            summary = train(run.model_copy(update={"through_iteration": iteration}))
        rows = publish(config, run, manifests)
    return {"run_dir": run.run_uri, "iterations": rows, "training": summary}
