"""`llamaline`: the platform's command line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from infra.stack.commands import down, running_stack_env, status, up

app = typer.Typer(
    name="llamaline",
    help="From raw web crawl to a LLaMA chat model: Prefect flows, Ray jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()

app.command()(up)
app.command()(status)
app.command()(down)


# Without a server to talk to, flows start a temporary one; on a busy laptop its first start (a new
# database) takes longer than Prefect's default 30 s. Its telemetry would try the network: off.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def use_running_stack() -> None:
    """Send this command's flow runs to the stack `llamaline up` started, when one runs here.

    Variables the user set win; without a stack, flows use a temporary Prefect server and a
    private local Ray.
    """
    env = running_stack_env(Path(os.environ.get("LLAMALINE_STATE_DIR", ".llamaline")))
    if env is None:
        return
    for key, value in env.items():
        os.environ.setdefault(key, value)
    console.print(f"using the running stack: Prefect {os.environ['PREFECT_API_URL']}, Ray {os.environ['RAY_ADDRESS']}")


@app.command()
def demo(
    data_root: Annotated[Path, typer.Option(help="Where the demo writes its inputs and shards")] = Path("data"),
    seed: Annotated[int, typer.Option(help="Seed of the synthetic inputs")] = 0,
    source: Annotated[list[str] | None, typer.Option(help="Only these sources (repeatable; default: all)")] = None,
) -> None:
    """Generate synthetic inputs for every source, ingest them on Ray and validate the shards (the `demo` flow)."""
    use_running_stack()
    from flows.demo import DemoConfig, demo as demo_flow

    config = DemoConfig(data_root=str(data_root.resolve()), seed=seed, **({"sources": source} if source else {}))
    report = demo_flow(config)
    _print_report(report)
    if not report["valid"]:
        raise typer.Exit(code=1)


@app.command()
def ingest(
    source: Annotated[str, typer.Option(help="commoncrawl, c4, wikipedia, books or arxiv")],
    input: Annotated[list[str] | None, typer.Option("--input", help="File, folder or URI (repeatable)")] = None,
    output: Annotated[str, typer.Option(help="Data root: shards go to <output>/ingest/<source>")] = "data",
    strict: Annotated[bool, typer.Option(help="Exit non-zero when any record was quarantined")] = False,
    crawl: Annotated[str | None, typer.Option(help="commoncrawl: a crawl name, e.g. CC-MAIN-2023-23")] = None,
    segments: Annotated[int | None, typer.Option(min=1, help="With --crawl: every WET file of the first N segments")] = None,
    files: Annotated[int | None, typer.Option(min=1, help="With --crawl: the first N WET files")] = None,
    max_record_bytes: Annotated[
        int | None, typer.Option(min=1, help="Quarantine records larger than this (default: the reader's own)")
    ] = None,
) -> None:
    """Ingest one source's raw files into document shards (the `ingest` flow).

    Exit code 0: done; 1: the run failed (or, with --strict, records were quarantined); 2: bad arguments.
    """
    use_running_stack()
    from flows.ingest import IngestConfig, ingest as ingest_flow

    config = _config(
        IngestConfig,
        source=source,
        inputs=input or [],
        output=_absolute(output),
        strict=strict,
        crawl=crawl,
        crawl_segments=segments,
        crawl_files=files,
        max_record_bytes=max_record_bytes,
    )
    _run(ingest_flow, config)


@app.command("train-quality-model")
def train_quality_model(
    input: Annotated[str, typer.Option(help="The ingest stage folder (its wikipedia source is used)")] = "data/ingest",
    output: Annotated[Path, typer.Option(help="Folder for <lang>.sp.model and <lang>.arpa.bin")] = Path("data/quality_models"),
    language: Annotated[list[str] | None, typer.Option(help="Languages to train (repeatable; default: all found)")] = None,
    vocab_size: Annotated[int, typer.Option(min=100, help="SentencePiece vocabulary size")] = 65536,
) -> None:
    """Train CCNet's quality models on the ingested Wikipedia text (the `train-quality-model` flow)."""
    use_running_stack()
    from flows.quality import TrainQualityConfig, train_quality_model as train_flow

    config = TrainQualityConfig(input=_absolute(input), output=str(output.resolve()), languages=language, vocab_size=vocab_size)
    for lang, paths in _run(train_flow, config).items():
        console.print(f"{lang}: {paths['kenlm']}")


@app.command()
def curate(
    input: Annotated[str, typer.Option(help="The ingest stage folder (<data root>/ingest)")] = "data/ingest",
    output: Annotated[str, typer.Option(help="Data root for the curation stages")] = "data",
    recipe: Annotated[str, typer.Option(help="Recipe name (llama1) or a recipe YAML file")] = "llama1",
    quality_models: Annotated[
        Path | None, typer.Option(help="Quality model folder (train-quality-model's output)")
    ] = Path("data/quality_models"),
) -> None:
    """Curate ingested documents by a recipe: line dedup, filters, near-dedup, PII (the `curate` flow).

    Exit code 0: done; 1: the run failed; 2: bad arguments (a recipe that does not load).
    """
    use_running_stack()
    from flows.curate import CurateConfig, curate as curate_flow

    config = _config(
        CurateConfig,
        input=_absolute(input),
        output=_absolute(output),
        recipe=recipe,
        quality_models=str(quality_models.resolve()) if quality_models else None,
    )
    rows = _run(curate_flow, config)
    table = Table(title=f"curation ({config.recipe})")
    for column in ("stage", "source", "docs_in", "kept", "dropped", "quarantined"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("stage", "source", "docs_in", "kept", "dropped", "quarantined")))
    console.print(table)


def _config(model: type, **values):
    """A flow's typed config, or exit 2 with the reason a value is wrong."""
    from pydantic import ValidationError

    try:
        return model(**values)
    except ValidationError as exc:
        console.print(f"[red]error[/red] {exc.errors()[0]['msg']}")
        raise typer.Exit(code=2) from exc


def _run(flow_function, config):
    """Run a flow in this process (on the stack's server when one runs); exit 1 when it fails."""
    state = flow_function(config, return_state=True)
    if not state.is_completed():
        console.print(f"[red]failed[/red] {state.message}")
        raise typer.Exit(code=1)
    return state.result()


def _absolute(path_or_uri: str) -> str:
    return path_or_uri if "://" in path_or_uri else str(Path(path_or_uri).resolve())


def _name_and_path(option: str, assignment: str, form: str) -> tuple[str, str]:
    """NAME=PATH of a repeatable option, or exit 2 naming the form expected."""
    name, separator, path = assignment.partition("=")
    if not separator or not name or not path:
        console.print(f"[red]error[/red] {option} {assignment!r}: expected {form}")
        raise typer.Exit(code=2)
    return name, path


@app.command("train-tokenizer")
def train_tokenizer(
    input: Annotated[str, typer.Option(help="Stage to sample text from")] = "data/curated",
    output: Annotated[Path, typer.Option(help="Tokenizer folder")] = Path("data/tokenizer"),
    vocab_size: Annotated[int, typer.Option(min=300, help="Vocabulary size (LLaMA: 32000)")] = 32000,
    existing: Annotated[Path | None, typer.Option(help="Use this tokenizer.model (e.g. Meta's) instead")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the training sample")] = 0,
) -> None:
    """Train LLaMA's BPE tokenizer on the curated corpus and export it for transformers (the `train-tokenizer` flow)."""
    use_running_stack()
    from flows.tokenizer import TrainTokenizerConfig, train_tokenizer_flow

    config = TrainTokenizerConfig(
        input=_absolute(input), output=str(output.resolve()), vocab_size=vocab_size, seed=seed,
        existing=str(existing.resolve()) if existing else None,
    )
    summary = _run(train_tokenizer_flow, config)
    console.print(f"tokenizer with {summary['vocab_size']} pieces in {config.output}")


@app.command()
def mix(
    input: Annotated[str, typer.Option(help="Curated document stage")] = "data/curated",
    tokenizer: Annotated[str, typer.Option(help="tokenizer.model that counts the tokens")] = "data/tokenizer/tokenizer.model",
    output: Annotated[str, typer.Option(help="Data root; the mixture goes to <output>/mixed")] = "data",
    mixture: Annotated[str, typer.Option(help="Mixture name (llama1) or a mixture YAML file")] = "llama1",
) -> None:
    """Decide how much of each source training sees and write the mixed stage (the `mix` flow).

    Exit code 0: done; 1: the run failed (a source too small for its share says so); 2: bad arguments.
    """
    use_running_stack()
    from flows.mix import MixConfig, mix as mix_flow

    config = _config(MixConfig, input=_absolute(input), tokenizer=_absolute(tokenizer), output=_absolute(output),
                     mixture=mixture)
    plan = _run(mix_flow, config)["mixture"]
    table = Table(title=f"mixture {mixture}")
    for column in ("source", "epochs", "target_share", "realised_share", "realised_tokens"):
        table.add_column(column)
    for source, row in sorted(plan["sources"].items()):
        table.add_row(source, f"{row['epochs']:.2f}", f"{row['target_share']:.4f}", f"{row['realised_share']:.4f}",
                      str(row["realised_tokens"]))
    console.print(table)


@app.command()
def tokenize(
    input: Annotated[str, typer.Option(help="Document stage to tokenize")] = "data/curated",
    tokenizer: Annotated[str, typer.Option(help="tokenizer.model")] = "data/tokenizer/tokenizer.model",
    output: Annotated[str, typer.Option(help="Data root; rows go to <output>/tokens")] = "data",
    seq_len: Annotated[int, typer.Option(min=8, help="Tokens a row predicts (rows hold seq_len + 1)")] = 2048,
    seed: Annotated[int, typer.Option(help="Seed of the global shuffle")] = 0,
) -> None:
    """Tokenize documents and pack them into shuffled rows for training (the `tokenize` flow)."""
    use_running_stack()
    from flows.tokens import TokenizeConfig, tokenize as tokenize_flow

    config = _config(TokenizeConfig, input=_absolute(input), tokenizer=_absolute(tokenizer), output=_absolute(output),
                     seq_len=seq_len, seed=seed)
    manifest = _run(tokenize_flow, config)
    console.print(f"{manifest['tokens']} tokens in {manifest['rows']} rows under {config.output}/{config.stage}")


@app.command()
def pretrain(
    preset: Annotated[str, typer.Option(help="Starting point: debug (the demo's tokens, CPUs) or llama2-7b")] = "debug",
    config_file: Annotated[Path | None, typer.Option("--config", help="A PretrainConfig as JSON or YAML instead")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Change a field: --set steps=100 --set scaling.num_workers=4")] = None,
    print_config: Annotated[bool, typer.Option(help="Print the resulting config as JSON and exit")] = False,
) -> None:
    """Pretrain a LLaMA model with Ray Train (the `pretrain` flow); the same --set run_name resumes a run.

    Exit code 0: trained; 1: the run failed; 2: the config is invalid (nothing started).
    """
    from modeling.pretrain import PRESETS, PretrainConfig

    config = _run_config(PretrainConfig, PRESETS, preset, config_file, set_)
    if print_config:
        print(config.model_dump_json(indent=2))
        return
    use_running_stack()
    from flows.pretrain import pretrain as pretrain_flow

    _print_summary(_run(pretrain_flow, config))


@app.command()
def sft(
    input: Annotated[list[str] | None, typer.Option("--input", help="Dialogue file or folder to ingest (repeatable; "
                                                                    "none: pack the dialogue stage already there)")] = None,
    reader: Annotated[str, typer.Option(help="messages ({\"messages\": [...]} lines) or hh (Anthropic HH)")] = "messages",
    source: Annotated[str, typer.Option(help="The inputs' source name in the dialogue stage")] = "dialogues",
    dialogues: Annotated[str | None, typer.Option(help="Dialogue stage (default: <data root>/dialogues)")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="tokenizer.model (default: <data root>/tokenizer)")] = None,
    preset: Annotated[str, typer.Option(help="Starting point: debug (the demo's model and dialogues, CPUs) or "
                                             "llama2-7b-chat")] = "debug",
    config_file: Annotated[Path | None, typer.Option("--config", help="An SFTConfig as JSON or YAML instead")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Change a field of the run: --set epochs=1 "
                                                                 "--set init=data/runs/demo")] = None,
    print_config: Annotated[bool, typer.Option(help="Print the resulting flow config as JSON and exit")] = False,
) -> None:
    """Fine-tune a base model on dialogues: ingest, pack in Llama 2's chat format, train with Ray Train (the `sft` flow).

    The data root is the folder of the run's `data` (the packed rows). Exit code 0: trained; 1: the
    run failed; 2: the config is invalid (nothing started).
    """
    from flows.sft import SFTFlowConfig
    from modeling.sft import PRESETS, SFTConfig

    training = _run_config(SFTConfig, PRESETS, preset, config_file, set_)
    config = _config(SFTFlowConfig, inputs=[_absolute(path) for path in input or []], reader=reader, source=source,
                     dialogues=_absolute(dialogues) if dialogues else None,
                     tokenizer=_absolute(tokenizer) if tokenizer else None, training=training)
    if print_config:
        print(config.model_dump_json(indent=2))
        return
    use_running_stack()
    from flows.sft import sft as sft_flow

    _print_summary(_run(sft_flow, config))


@app.command()
def reward(
    input: Annotated[list[str] | None, typer.Option("--input", help="Comparison file or folder to ingest (repeatable; "
                                                                    "none: pack the comparison stage already there)")] = None,
    reader: Annotated[str, typer.Option(help="comparisons (our JSON lines: ratings, safety labels) or hh "
                                             "(Anthropic HH pairs)")] = "comparisons",
    source: Annotated[str, typer.Option(help="The inputs' source name in the comparison stage")] = "comparisons",
    mixture: Annotated[str | None, typer.Option(help="Llama 2's mixture over --role inputs: helpfulness or safety")] = None,
    role: Annotated[list[str] | None, typer.Option("--role", help="ROLE=PATH for the mixture (repeatable): a file or "
                                                                  "folder to ingest, or a finished comparison stage")] = None,
    hh_role: Annotated[list[str] | None, typer.Option("--hh-role", help="A role whose files are Anthropic HH pairs "
                                                                        "(repeatable)")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="tokenizer.model (default: <data root>/tokenizer)")] = None,
    preset: Annotated[str, typer.Option(help="Starting point: debug (the demo's chat model and comparisons, CPUs) or "
                                             "llama2-7b-reward, llama2-13b-reward, llama2-70b-reward")] = "debug",
    config_file: Annotated[Path | None, typer.Option("--config", help="A RewardConfig as JSON or YAML instead")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Change a field of the run: --set margins=large "
                                                                 "--set init=data/runs/sft-debug")] = None,
    print_config: Annotated[bool, typer.Option(help="Print the resulting flow config as JSON and exit")] = False,
) -> None:
    """Train a reward model on comparisons: ingest, mix, pack pairs, train with Ray Train, evaluate (the `reward` flow).

    The data root is the folder of the run's `data` (the packed pairs). Exit code 0: trained; 1: the
    run failed; 2: the config is invalid (nothing started).
    """
    from flows.reward import RewardFlowConfig
    from modeling.reward import PRESETS, RewardConfig

    training = _run_config(RewardConfig, PRESETS, preset, config_file, set_)
    roles: dict[str, dict] = {}
    for assignment in role or []:
        name, path = _name_and_path("--role", assignment, "ROLE=PATH")
        given = roles.setdefault(name, {"inputs": []})
        if (Path(path) / "_manifest.json").is_file():
            given["stage"] = _absolute(path)
        else:
            given["inputs"].append(_absolute(path))
    for name in hh_role or []:
        if name not in roles:
            console.print(f"[red]error[/red] --hh-role {name}: no --role {name}=PATH given")
            raise typer.Exit(code=2)
        roles[name]["reader"] = "hh"
    config = _config(RewardFlowConfig, inputs=[_absolute(path) for path in input or []], reader=reader, source=source,
                     mixture=mixture, roles=roles, tokenizer=_absolute(tokenizer) if tokenizer else None,
                     training=training)
    if print_config:
        print(config.model_dump_json(indent=2))
        return
    use_running_stack()
    from flows.reward import reward as reward_flow

    summary = _run(reward_flow, config)
    _print_summary(summary)
    for name, report in summary["evaluation"].items():
        by_rating = ", ".join(f"{rating} {counts['accuracy']:.3f}" for rating, counts in report["by_rating"].items())
        console.print(f"held-out {name}: accuracy {report['accuracy']:.3f} over {report['pairs']} pairs ({by_rating})")


@app.command()
def rlhf(
    prompts: Annotated[list[str] | None, typer.Option("--prompts", help="A prompt set to sample answers to (repeatable; "
                                                                        "JSON lines of {\"messages\": [...]})")] = None,
    reward_model: Annotated[list[str] | None, typer.Option(
        "--reward-model", help="NAME=FOLDER: the helpfulness or safety reward model (repeatable)")] = None,
    init: Annotated[str | None, typer.Option(help="The SFT model the rounds start from (a run or HF folder)")] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="Rounds of rejection sampling (then PPO, GAtt)")] = None,
    evaluation_prompts: Annotated[str | None, typer.Option(help="Held-out prompts every model answers")] = None,
    preset: Annotated[str, typer.Option(help="Starting point: debug (one round on the demo's models, CPUs) or "
                                             "llama2-7b-chat (five rounds by the paper, GPUs)")] = "debug",
    config_file: Annotated[Path | None, typer.Option("--config", help="An RLHFConfig as JSON or YAML instead")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Change a field: --set ppo.training.iterations=50 "
                                                                 "--set rejection_sampling.samples_per_prompt=16 "
                                                                 "--set ppo=null")] = None,
    print_config: Annotated[bool, typer.Option(help="Print the resulting config as JSON and exit")] = False,
) -> None:
    """Rounds of rejection sampling, PPO and Ghost Attention on a chat model (the `rlhf` flow).

    Exit code 0: done; 1: the run failed (what it cannot use is named before any work); 2: the
    config is invalid (nothing started).
    """
    from flows.rlhf import PRESETS, RLHFConfig

    config = _run_config(RLHFConfig, PRESETS, preset, config_file, set_)
    given = {"prompts": [_absolute(path) for path in prompts] if prompts else None,
             "reward_models": {name: _absolute(folder) for name, folder in
                               (_name_and_path("--reward-model", a, "NAME=FOLDER") for a in reward_model or [])} or None,
             "init": _absolute(init) if init else None, "rounds": rounds,
             "evaluation_prompts": _absolute(evaluation_prompts) if evaluation_prompts else None}
    config = _config(RLHFConfig, **(config.model_dump() | {k: v for k, v in given.items() if v is not None}))
    if print_config:
        print(config.model_dump_json(indent=2))
        return
    use_running_stack()
    from flows.rlhf import rlhf as rlhf_flow

    result = _run(rlhf_flow, config)
    for number, report in enumerate(result["rounds"], 1):
        console.print(f"round {number}: kept the best of {report['selected']} prompts' answers, mean reward "
                      f"{report['kept_rewards'].get('mean', float('nan')):.4g}")
    for row in result["evaluation"] or []:
        rewards = ", ".join(f"{name} {value:.4g}" for name, value in row.items() if name.startswith("mean_"))
        exact = "-" if row["exact_match"] is None else f"{row['exact_match']:.3f}"
        console.print(f"{row['model']}: exact match {exact}, {rewards}")
    console.print(f"models: {', '.join(f'{label} {folder}' for label, folder in result['models'].items())}")


def _run_config(config_class: type, presets: dict, preset: str, config_file: Path | None, assignments: list[str] | None):
    """A training run's config: a preset or a file, with --set FIELD=VALUE changes; exit 2 when invalid."""
    import yaml
    from pydantic import ValidationError

    from modeling.run_config import with_overrides

    overrides: dict = {}
    for assignment in assignments or []:
        key, separator, value = assignment.partition("=")
        if not separator or not key:
            console.print(f"[red]error[/red] --set {assignment!r}: expected FIELD=VALUE")
            raise typer.Exit(code=2)
        *parents, leaf = key.split(".")
        target = overrides
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = yaml.safe_load(value)
    try:
        if config_file is not None:
            config = config_class.model_validate(yaml.safe_load(config_file.read_text()))
        elif preset in presets:
            config = presets[preset]()
        else:
            console.print(f"[red]error[/red] unknown preset {preset!r}; choose from {', '.join(presets)}")
            raise typer.Exit(code=2)
        return with_overrides(config, overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        console.print(f"[red]error[/red] {where + ': ' if where else ''}{first['msg']}")
        raise typer.Exit(code=2) from exc


def _print_summary(summary: dict) -> None:
    console.print(f"{summary['steps']} steps, loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}; "
                  f"run folder {summary['run_dir']}")


@app.command()
def evaluate(
    checkpoint: Annotated[list[str] | None, typer.Option(
        "--checkpoint", help="A run folder (its hf/ export), a Hugging Face or a Meta folder (repeatable; default: "
                             "the demo's base run, every checkpoint, and its chat run)")] = None,
    every_checkpoint: Annotated[bool, typer.Option(
        help="With --checkpoint: of a run folder every checkpoint it kept, not only the export")] = False,
    benchmark: Annotated[list[str] | None, typer.Option(
        "--benchmark", help="A task folder or a synthetic task: colours, homes, doubles (repeatable; default: the "
                            "synthetic ones)")] = None,
    shots: Annotated[int | None, typer.Option(min=0, help="Train examples before each question (default 0)")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Seed of the few-shot examples and samples")] = None,
    policy: Annotated[str | None, typer.Option(help="A bad record: refuse (default) or skip and list it")] = None,
    token_stage: Annotated[str | None, typer.Option(help="A token stage to measure perplexity on")] = None,
    document_stage: Annotated[str | None, typer.Option(help="A document stage to measure perplexity on")] = None,
    chat_prompts: Annotated[str | None, typer.Option(
        help="A prompt set (JSON lines of {\"messages\": [...]} ending with a user turn) to answer")] = None,
    reward_model: Annotated[list[str] | None, typer.Option(
        "--reward-model", help="NAME=FOLDER: a reward model export judging the answers (repeatable)")] = None,
    baseline: Annotated[str | None, typer.Option(
        help="The checkpoint win rates are against (default: the first)")] = None,
    config_file: Annotated[Path | None, typer.Option(
        "--config", help="An EvaluateConfig as JSON or YAML; the options given change it")] = None,
    print_config: Annotated[bool, typer.Option(help="Print the resulting config as JSON and exit")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print every checkpoint's full report as JSON")] = False,
) -> None:
    """Score checkpoints on benchmarks, perplexity and chat metrics, against training tokens (the `evaluate` flow).

    Exit code 0: evaluated; 1: the run failed (a folder or task file it cannot use is named before
    any model loads); 2: the config is invalid.
    """
    import yaml

    from flows.evaluate import EvaluateConfig, score_columns

    values = yaml.safe_load(config_file.read_text()) if config_file else {}
    if checkpoint:
        values["checkpoints"] = [{"path": _absolute(path), "every_checkpoint": every_checkpoint} for path in checkpoint]
    reward_models = dict(_name_and_path("--reward-model", assignment, "NAME=FOLDER")
                         for assignment in reward_model or [])
    given = {"benchmarks": benchmark, "shots": shots, "seed": seed, "policy": policy,
             "token_stage": _absolute(token_stage) if token_stage else None,
             "document_stage": _absolute(document_stage) if document_stage else None,
             "chat_prompts": _absolute(chat_prompts) if chat_prompts else None,
             "reward_models": {name: _absolute(folder) for name, folder in reward_models.items()} or None,
             "baseline": baseline}
    config = _config(EvaluateConfig, **(values | {key: value for key, value in given.items() if value is not None}))
    if print_config:
        print(config.model_dump_json(indent=2))
        return
    use_running_stack()
    from flows.evaluate import evaluate as evaluate_flow

    results = _run(evaluate_flow, config)
    if as_json:
        print(json.dumps(results, indent=2))
        return
    columns = list(score_columns(results[0]))
    table = Table(title="evaluation")
    for column in ("checkpoint", "training tokens", *columns):
        table.add_column(column, **({"no_wrap": True} if column == "checkpoint" else {"justify": "right"}))
    for result in results:
        scores = score_columns(result)
        table.add_row(result["checkpoint"], "-" if result["tokens"] is None else f"{result['tokens']:,}",
                      *(f"{scores[column]:.4g}" for column in columns))
    console.print(table)


@app.command()
def shards(
    stage_dir: Annotated[str, typer.Argument(help="Stage folder (path or URI) with a _manifest.json")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON")] = False,
    scratch: Annotated[
        str | None, typer.Option(help="Folder for the id check's temporary index (default: the stage folder)")
    ] = None,
) -> None:
    """Validate a stage folder against its manifest and print its statistics (the `shards` flow).

    Exit code 0: valid; 1: problems found (listed); 2: no stage there, or a bad argument.
    """
    use_running_stack()
    from flows.shards import ShardsConfig, shards as shards_flow

    try:
        report = shards_flow(ShardsConfig(stage_dir=stage_dir, fail_on_problems=False, scratch_dir=scratch))
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error[/red] {exc}")
        raise typer.Exit(code=2) from exc
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    if not report["valid"]:
        raise typer.Exit(code=1)


def _print_report(report: dict) -> None:
    table = Table(title=f"stage {report['stage']} ({report['stage_dir']})")
    columns = ["parts", "docs_in", "kept", "dropped", "quarantined", "bytes", "mean_chars"]
    table.add_column("source")
    for column in columns:
        table.add_column(column, justify="right")
    for source, stats in report["by_source"].items():
        table.add_row(source, *(str(stats[c]) for c in columns))
    console.print(table)
    for reason, count in report["dropped_by_reason"].items():
        console.print(f"  dropped {count:>7}  {reason}")
    if report["valid"]:
        console.print("[green]valid[/green]")
    for problem in report["problems"]:
        console.print(f"[red]problem[/red] {problem}")
