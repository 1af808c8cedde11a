"""lm-evaluation-harness through our model: its scores on local JSON tasks equal those of its own
`hf` model on our exported folder, generations equal transformers' greedy ones, and the model is
found by name, through the package's entry point too."""

from __future__ import annotations

import importlib
import json
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

from modeling.checkpoints import save_hf
from tasks.synthetic.benchmarks import corpus_documents, write_synthetic_tasks
from tasks.tokenizer import Tokenizer, train_tokenizer
from tests.modeling.helpers import random_model, tiny_config

pytestmark = [pytest.mark.usefixtures("one_thread")]
REPO = Path(__file__).resolve().parents[2]


def task_yaml(name: str, data: Path, body: str) -> str:
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\n{body}")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny random model and its tokenizer exported with save_hf, and lm-eval tasks reading local JSON."""
    root = tmp_path_factory.mktemp("harness")
    tasks = write_synthetic_tasks(root / "tasks", n=16)
    docs = corpus_documents(tasks, 300)
    tokenizer = train_tokenizer(docs, root / "spm", vocab_size=400, hard_vocab_limit=False)
    model = random_model(tiny_config(vocab_size=tokenizer.vocab_size, max_seq_len=64))
    folder = save_hf(model, root / "hf", tokenizer_files=[root / "spm" / "tokenizer.model"])
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:8]))
    yaml = root / "yaml"
    yaml.mkdir()
    prompt = 'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
    (yaml / "mc.yaml").write_text(task_yaml("tiny_mc", root / "tasks/colours/test.jsonl", (
        "output_type: multiple_choice\n" + prompt + 'doc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")))
    (yaml / "roll.yaml").write_text(task_yaml("tiny_roll", root / "docs.jsonl", (
        'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")))
    (yaml / "gen.yaml").write_text(task_yaml("tiny_gen", root / "tasks/homes/test.jsonl", (
        "output_type: generate_until\n" + prompt + 'doc_to_target: "{{answers[0]}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n")))
    return folder, yaml


@pytest.fixture
def offline(monkeypatch, tmp_path):
    for name, value in (("HF_DATASETS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "1"), ("HF_HOME", str(tmp_path / "hf"))):
        monkeypatch.setenv(name, value)


def run(model: str, model_args: str, tasks: list[str], yaml: Path) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    importlib.import_module("modeling.harness")  # registers "llamaline"

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks, device="cpu", batch_size=4,
                                   task_manager=TaskManager(include_path=str(yaml)), log_samples=True)


def test_the_harness_scores_through_our_model_equal_its_hf_model_on_the_export(exported, offline):
    folder, yaml = exported
    # lm-eval's hf model reads our export without BOS (see modeling/harness.py): so ours here too.
    ours = run("llamaline", f"checkpoint={folder},add_bos_token=false", ["tiny_mc", "tiny_roll"], yaml)
    theirs = run("hf", f"pretrained={folder},dtype=float32", ["tiny_mc", "tiny_roll"], yaml)
    for task in ("tiny_mc", "tiny_roll"):
        mine, hf = ours["samples"][task], theirs["samples"][task]
        assert len(mine) == len(hf) > 0
        for a, b in zip(mine, hf):
            for x, y in zip(a["resps"], b["resps"]):
                got, expected = (x[0][0], y[0][0]) if task == "tiny_mc" else (x[0], y[0])
                assert got == pytest.approx(expected, abs=1e-3, rel=1e-5)
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["tiny_mc"][metric] == theirs["results"]["tiny_mc"][metric]
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert ours["results"]["tiny_roll"][metric] == pytest.approx(theirs["results"]["tiny_roll"][metric], rel=1e-4)


def test_generate_until_answers_are_transformers_greedy_answers_cut_at_the_stop(exported, offline):
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder, yaml = exported
    results = run("llamaline", f"checkpoint={folder}", ["tiny_gen"], yaml)
    hf_tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer = Tokenizer.load(folder / "tokenizer.model")
    hf_model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    for sample in results["samples"]["tiny_gen"]:
        prompt = hf_tokenizer(sample["arguments"][0][0]).input_ids  # BOS added, as ours
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                                    eos_token_id=hf_tokenizer.eos_token_id, pad_token_id=hf_tokenizer.eos_token_id)
        # Decoded by our tokenizer: a random model writes stray byte pieces, which SentencePiece and
        # the Rust decoder render differently when they are not valid UTF-8.
        expected = tokenizer.decode(out[0, len(prompt):].tolist()).split("\n")[0]
        assert sample["resps"][0][0] == expected


def test_the_model_is_registered_by_name_and_advertised_as_an_entry_point():
    from lm_eval.api.registry import get_model

    from modeling.harness import ENTRY_POINT_GROUP, LlamalineLM

    assert get_model("llamaline") is LlamalineLM and get_model("hf").__name__ == "HFLM"
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert EntryPoint("llamaline", declared["llamaline"], ENTRY_POINT_GROUP).load() is LlamalineLM


def test_a_meta_checkpoint_needs_its_context_length(tmp_path):
    from modeling.checkpoints import save_meta
    from modeling.model_folders import load_model

    folder = save_meta(random_model(tiny_config()), tmp_path / "meta")
    with pytest.raises(ValueError, match="max_seq_len"):
        load_model(folder)
    assert load_model(folder, max_seq_len=64).config.max_seq_len == 64
