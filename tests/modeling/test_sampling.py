"""The sampling stage on tiny random models saved as Hugging Face folders: LlamaBackend is
modeling.generate batch for batch; a stage is byte-identical when redone, reconciles its prompts
(a too-long one skipped), samples K per prompt from each model of a pool, keeps the unsafe tag,
resumes only the unit whose receipt is gone, refuses a bad prompt line by file and line, and runs
the same on Ray actors as in process."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from modeling.checkpoints import save_hf
from modeling.generate import Sampling, generate
from modeling.model_folders import load_model
from modeling.sampling import COLUMNS, LlamaBackend, SamplingConfig, read_samples, sample_stage, unit_seed
from tasks.benchmarks import BadInput
from tasks.chat_format import encode_prompt
from tasks.dialogues.prompts import read_prompts
from tasks.shards import RECEIPTS, SUCCESS
from tasks.tokenizer import MODEL_FILE
from tests.modeling.helpers import random_model, tiny_config

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning"),
]
QUESTIONS = ("Repeat: kiwi plum", "What is 2 + 3?", "Say hello in capitals", "First word: pear lime",
             "Last word: fig date apple")


def write_prompt_set(path: Path, *, too_long: bool = True) -> Path:
    records = [{"messages": [{"role": "user", "content": q}]} for q in QUESTIONS]
    records[1]["unsafe"] = True
    records[2]["messages"].insert(0, {"role": "system", "content": "Answer briefly."})
    if too_long:
        records.insert(3, {"messages": [{"role": "user", "content": "kiwi " * 120}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def pool(chat_model_folder):
    return [str(chat_model_folder("alpha", seed=5)), str(chat_model_folder("beta", seed=6))]


def backends_of(folders, tokenizer, batch_size=3):  # config_of's batch size
    return {Path(f).name: LlamaBackend(load_model(f), batch_size=batch_size, vocab_size=tokenizer.vocab_size)
            for f in folders}


def config_of(models, **overrides) -> SamplingConfig:
    return SamplingConfig(**({"models": models, "samples_per_prompt": 2, "max_new_tokens": 8, "temperature": 1.2,
                              "prompts_per_part": 2, "batch_size": 3, "seed": 7} | overrides))


def part_files(stage: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(stage.glob("part-*.parquet"))}


def test_llama_backend_is_generate_batch_for_batch(chat_tokenizer, pool):
    model = load_model(pool[0])
    dialogues = [[{"role": "user", "content": q}] for q in QUESTIONS]
    ids = [encode_prompt(chat_tokenizer, d) for d in dialogues]
    assert len({len(i) for i in ids}) > 1  # lengths differ: the backend sorts them into batches
    sampling, eos = Sampling(temperature=1.0), [chat_tokenizer.eos_id]
    by_length = sorted(ids, key=len)
    whole = LlamaBackend(model, batch_size=16, vocab_size=chat_tokenizer.vocab_size)
    assert whole.generate(by_length, max_new_tokens=10, sampling=sampling, seed=11, stop_tokens=eos) == \
        generate(model, by_length, max_new_tokens=10, sampling=sampling, seed=11, stop_tokens=eos,
                 vocab_size=chat_tokenizer.vocab_size)
    # Batches of two like-length prompts, the batch b seeded 11 + b; answers in the prompts' order.
    pairs = LlamaBackend(model, batch_size=2, vocab_size=chat_tokenizer.vocab_size)
    expected = []
    for b, start in enumerate(range(0, len(by_length), 2)):
        expected += generate(model, by_length[start:start + 2], max_new_tokens=10, sampling=sampling, seed=11 + b,
                             stop_tokens=eos, vocab_size=chat_tokenizer.vocab_size)
    answers = pairs.generate(ids, max_new_tokens=10, sampling=sampling, seed=11, stop_tokens=eos)
    assert [answers[ids.index(p)] for p in by_length] == expected


def test_a_pool_samples_k_per_prompt_from_each_model_and_reconciles(tmp_path, chat_tokenizer, pool):
    prompts = write_prompt_set(tmp_path / "prompts.jsonl")
    config = config_of(pool)
    manifest = sample_stage([str(prompts)], config, str(tmp_path / "stage"),
                            backends=backends_of(pool, chat_tokenizer))
    # Line 4 leaves no room for 8 new tokens and the EOS in a 128-token context.
    assert manifest["prompts_read"] == 6 and manifest["prompts_sampled"] == 5
    assert manifest["prompts_skipped"] == {"too_long": 1}
    assert [s["prompt_id"] for s in manifest["skipped"]] == [f"{prompts}:4"]
    assert manifest["samples"] == 5 * 2 * 2 and manifest["unsafe_prompts"] == 1
    assert manifest["models"] == ["alpha", "beta"]
    assert {label: m["samples"] for label, m in manifest["per_model"].items()} == {"alpha": 10, "beta": 10}
    assert [(p["part"], p["model"], p["prompts"]) for p in manifest["parts"]] == \
        [(0, "alpha", 2), (0, "beta", 2), (1, "alpha", 2), (1, "beta", 2), (2, "alpha", 1), (2, "beta", 1)]

    samples = list(read_samples(str(tmp_path / "stage")))
    lines = [1, 2, 3, 5, 6]
    assert [(s.prompt_id, s.model, s.sample) for s in samples] == \
        [(f"{prompts}:{line}", model, k) for line in lines for model in ("alpha", "beta") for k in (0, 1)]
    assert [s.unsafe for s in samples[::4]] == [False, True, False, False, False]
    assert samples[8].messages[0].role == "system" and samples[8].messages[1].content == QUESTIONS[2]
    assert sum(len(s.answer_ids) for s in samples) == manifest["answer_tokens"] > 0
    eos = chat_tokenizer.eos_id
    for s in samples:
        assert s.finished == (s.answer_ids[-1] == eos) and eos not in s.answer_ids[:-1]
        assert s.finished or len(s.answer_ids) == 8
        assert s.answer == chat_tokenizer.decode([i for i in s.answer_ids if i != eos])
    assert manifest["finished"] == sum(s.finished for s in samples)
    assert samples[0].answer_ids != samples[1].answer_ids  # K samples, not K copies
    table = pq.read_table(tmp_path / "stage" / "part-00000-model-1.parquet")
    assert table.schema.equals(COLUMNS) and table.num_rows == 4

    # The part's unit seed alone decides it: sampling the part's prompts by hand gives its answers.
    ids = [encode_prompt(chat_tokenizer, read_prompts(prompts)[0][n].as_dicts()) for n in (0, 1)]
    by_hand = backends_of(pool[1:], chat_tokenizer, batch_size=3)["beta"].generate(
        [i for i in ids for _ in range(2)], max_new_tokens=8, sampling=Sampling(temperature=1.2),
        seed=unit_seed(7, 0, "beta"), stop_tokens=[eos])
    assert [s.answer_ids for s in samples if s.model == "beta"][:4] == by_hand


def test_the_shortest_context_of_the_pool_decides_which_prompts_fit(tmp_path, chat_tokenizer, pool,
                                                                      chat_model_folder):
    prompts = write_prompt_set(tmp_path / "prompts.jsonl", too_long=False)
    lengths = [len(encode_prompt(chat_tokenizer, p.as_dicts())) for p in read_prompts(prompts)[0]]
    short = str(chat_model_folder("short", seed=8, max_seq_len=min(lengths) + 8 + 1))
    manifest = sample_stage([str(prompts)], config_of([pool[0], short], samples_per_prompt=1), str(tmp_path / "s"),
                            backends=backends_of([pool[0], short], chat_tokenizer))
    # Room for the prompt, 8 new tokens and the EOS only for the shortest prompt(s).
    fit = sum(n + 8 + 1 <= min(lengths) + 8 + 1 for n in lengths)
    assert manifest["prompts_sampled"] == fit and manifest["prompts_skipped"] == {"too_long": 5 - fit}
    assert manifest["samples"] == fit * 2 and 0 < fit < 5


def test_a_stage_redone_is_byte_identical_and_any_input_changes_it(tmp_path, chat_tokenizer, pool):
    prompts = write_prompt_set(tmp_path / "prompts.jsonl")
    backends = backends_of(pool, chat_tokenizer)
    first = sample_stage([str(prompts)], config_of(pool), str(tmp_path / "a"), backends=backends)
    second = sample_stage([str(prompts)], config_of(pool, actors=3), str(tmp_path / "b"), backends=backends)
    assert part_files(tmp_path / "a") == part_files(tmp_path / "b") and len(part_files(tmp_path / "a")) == 6
    assert first["fingerprint"] == second["fingerprint"]  # how many actors serve decides nothing
    for change in ({"batch_size": 2}, {"temperature": 1.0}, {"top_p": 0.9}, {"max_new_tokens": 7},
                   {"samples_per_prompt": 3}, {"prompts_per_part": 3}, {"seed": 8}):
        changed = sample_stage([str(prompts)], config_of(pool, **change), str(tmp_path / "c"), backends=backends)
        assert changed["fingerprint"] != first["fingerprint"], change
    # Redone in place: the 3-prompt parts' files and receipts of the run before are gone.
    assert sorted(part_files(tmp_path / "c")) == sorted(part_files(tmp_path / "a"))
    assert sorted(p.name for p in (tmp_path / "c" / RECEIPTS).iterdir()) == \
        sorted(p.name for p in (tmp_path / "a" / RECEIPTS).iterdir())
    assert all(part_files(tmp_path / "c")[name] != data for name, data in part_files(tmp_path / "a").items())
    prompts.write_text(prompts.read_text().replace("kiwi plum", "kiwi pear"))
    edited = sample_stage([str(prompts)], config_of(pool), str(tmp_path / "d"), backends=backends)
    assert edited["fingerprint"] != first["fingerprint"]


def test_a_killed_run_redoes_only_the_unfinished_unit(tmp_path, chat_tokenizer, pool):
    prompts = write_prompt_set(tmp_path / "prompts.jsonl")
    stage = tmp_path / "stage"
    backends = backends_of(pool, chat_tokenizer)
    manifest = sample_stage([str(prompts)], config_of(pool), str(stage), backends=backends)
    before = part_files(stage)
    written = {f.name: f.stat().st_mtime_ns for f in stage.glob("part-*.parquet")}
    # A finished stage is reused whole.
    assert sample_stage([str(prompts)], config_of(pool), str(stage), backends=backends) == manifest
    assert {f.name: f.stat().st_mtime_ns for f in stage.glob("part-*.parquet")} == written
    # Killed before the marker, one unit without its receipt: only that unit is sampled again.
    (stage / SUCCESS).unlink()
    (stage / RECEIPTS / "part-00001-model-0.json").unlink()
    (stage / "part-00001-model-0.parquet").unlink()
    resumed = sample_stage([str(prompts)], config_of(pool), str(stage), backends=backends)
    after = {f.name: f.stat().st_mtime_ns for f in stage.glob("part-*.parquet")}
    assert [name for name in after if after[name] != written.get(name)] == ["part-00001-model-0.parquet"]
    assert part_files(stage) == before
    assert resumed["parts"] == manifest["parts"] and (stage / SUCCESS).is_file()


def test_bad_prompt_lines_and_configs_are_refused_before_any_sampling(tmp_path, pool):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}], "unsafe": True}) + "\n" +
                    json.dumps({"messages": [{"role": "user", "content": "hi"}], "unsafe": "yes"}) + "\n")
    with pytest.raises(BadInput, match=f"^{path}:2: unsafe_not_a_bool: field 'unsafe' is a JSON boolean, got \"yes\""):
        sample_stage([str(path)], config_of(pool), str(tmp_path / "stage"))
    prompts, problems = read_prompts(path, "skip")
    assert [(p.where, p.unsafe) for p in prompts] == [(f"{path}:1", True)] and len(problems) == 1
    assert not (tmp_path / "stage").exists()
    for bad in ({"samples_per_prompt": 0}, {"max_new_tokens": 0}, {"temperature": -0.1}, {"top_p": 0.0},
                {"top_p": 1.5}, {"prompts_per_part": 0}, {"batch_size": 0}, {"actors": 0}, {"models": []},
                {"models": [pool[0], pool[0]]}, {"top_k": 5}):
        with pytest.raises(ValidationError):
            config_of(**({"models": pool} | bad))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        sample_stage([str(path)], config_of([str(tmp_path / "missing")]), str(tmp_path / "stage"))
    narrow = save_hf(random_model(tiny_config(vocab_size=300)), tmp_path / "narrow",
                     tokenizer_files=[Path(pool[0]) / MODEL_FILE])
    with pytest.raises(ValueError, match=f"600 tokens do not fit the vocabulary of {narrow} \\(300\\)"):
        sample_stage([str(path)], config_of([pool[0], str(narrow)]), str(tmp_path / "stage"))
    assert not (tmp_path / "stage").exists()


def test_on_ray_actors_the_stage_is_the_in_process_one(tmp_path, chat_tokenizer, pool, ray_local):
    prompts = write_prompt_set(tmp_path / "prompts.jsonl", too_long=False)
    config = config_of(pool, prompts_per_part=3)
    on_ray = sample_stage([str(prompts)], config, str(tmp_path / "ray"))
    in_process = sample_stage([str(prompts)], config, str(tmp_path / "local"),
                              backends=backends_of(pool, chat_tokenizer))
    assert part_files(tmp_path / "ray") == part_files(tmp_path / "local") and len(part_files(tmp_path / "ray")) == 4
    assert on_ray["parts"] == in_process["parts"] and on_ray["samples"] == 20
    assert on_ray["tokens_per_second"] > 0
