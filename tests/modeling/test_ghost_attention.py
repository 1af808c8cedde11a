"""Ghost Attention with a model: the metric's bookkeeping turn by turn, turns beyond the context
not measured, sampled training dialogues built from the model's own answers, and, learnt on a
CPU, a model that keeps an instruction at later turns after GAtt fine-tuning where the same
model fine-tuned on the same answers without GAtt forgets it."""

from __future__ import annotations

import pytest

from modeling.generate import Sampling, generate
from modeling.ghost_attention import answer_turn_by_turn, sample_gatt_dialogues, turn_adherence
from tasks.chat_format import encode_prompt
from modeling.configs import ModelConfig
from modeling.sft import SFTConfig
from modeling.train import Trainer
from tasks.dialogues.constraints import Constraint, all_constraints, constraint_by_id, starts_with_prefix
from tasks.dialogues.ghost_attention import with_instruction_every_turn
from tasks.dialogues.ingest import ingest_dialogues
from tasks.dialogues.readers import MessagesReader
from tasks.sft_tokens import pack_dialogues
from tasks.synthetic.instructions import make_conversations, tokenizer_texts, write_jsonl
from tasks.tokenizer import train_tokenizer
from tests.modeling.helpers import random_model, tiny_config

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning"),
]
ALWAYS = Constraint("test:always", "form", "Answer as you like.", lambda answer: True)
NEVER = Constraint("test:never", "form", "Answer as you cannot.", lambda answer: False)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(tokenizer_texts(600), tmp_path_factory.mktemp("spm"), vocab_size=600)


def model_of(context: int):
    return random_model(tiny_config(vocab_size=600, max_seq_len=context), seed=1)


def user_turns(dialogue) -> list[str]:
    return [m["content"] for m in dialogue["messages"] if m["role"] == "user"]


def test_every_answered_turn_is_measured_and_a_checker_that_always_or_never_passes_gives_one_or_zero(tokenizer):
    dialogues = make_conversations(8, seed=3, min_turns=1, max_turns=6)
    lengths = [len(user_turns(d)) for d in dialogues]
    expected_measured = [sum(length >= t for length in lengths) for t in range(1, 7)]
    model = model_of(2048)
    always = turn_adherence(model, tokenizer, dialogues, ALWAYS, max_turns=6, max_new_tokens=8)
    assert always.measured == expected_measured and always.out_of_context == [0] * 6
    assert always.still_following == always.answer_following == expected_measured
    assert always.shares() == [1.0] * 6 and always.dialogues == 8
    never = turn_adherence(model, tokenizer, dialogues, [NEVER] * 8, max_turns=6, max_new_tokens=8)
    assert never.measured == expected_measured and never.still_following == never.answer_following == [0] * 6
    # max_turns beyond every dialogue: the turns past them are not measured, not failures
    longer = turn_adherence(model, tokenizer, dialogues, ALWAYS, max_turns=8, max_new_tokens=8)
    assert longer.measured == expected_measured + [0, 0] and longer.shares()[6:] == [None, None]
    assert longer.as_dict()["turns"] == list(range(1, 9))


def test_still_following_needs_every_answer_so_far_and_the_prompt_has_the_instruction_once(tokenizer):
    dialogues = make_conversations(10, seed=5, min_turns=3, max_turns=5)
    short = constraint_by_id("form:max_words:3")
    report = turn_adherence(model_of(2048), tokenizer, dialogues, short, max_turns=5, max_new_tokens=6)
    still, each = [0] * 5, [0] * 5
    for answered, dialogue in zip(report.answered, dialogues):
        assert answered.users == user_turns(dialogue) and len(answered.answers) == len(answered.users)
        for t in range(len(answered.answers)):
            still[t] += all(short.follows(a) for a in answered.answers[:t + 1])
            each[t] += short.follows(answered.answers[t])
    assert report.still_following == still and report.answer_following == each
    assert all(later <= earlier for earlier, later in zip(still, still[1:3]))  # all 10 are measured at turns 1-3
    assert 0 < sum(each) < sum(report.measured)  # a checker that tells answers apart, on this model

    # The answers are those of greedy decoding on the system-message-once prompt, turn after turn.
    answered = report.answered[0]
    messages = [{"role": "system", "content": short.text}]
    for user, answer in zip(answered.users, answered.answers):
        messages.append({"role": "user", "content": user})
        ids = generate(model_of(2048), [encode_prompt(tokenizer, messages)], max_new_tokens=6,
                       stop_tokens=[tokenizer.eos_id], pad_token=tokenizer.eos_id, vocab_size=tokenizer.vocab_size)[0]
        assert tokenizer.decode([i for i in ids if i != tokenizer.eos_id]) == answer
        messages.append({"role": "assistant", "content": answer})


def test_turns_that_do_not_fit_the_context_are_not_measured(tokenizer):
    dialogues = make_conversations(12, seed=7, min_turns=10, max_turns=20)
    max_new = 12
    report = turn_adherence(model_of(160), tokenizer, dialogues, ALWAYS, max_turns=20, max_new_tokens=max_new)
    assert sum(report.out_of_context) > 0
    assert report.still_following == report.measured  # turns out of context are no failures
    for answered in report.answered:
        messages = [{"role": "system", "content": ALWAYS.text}]
        for turn, user in enumerate(answered.users):
            messages.append({"role": "user", "content": user})
            fits = len(encode_prompt(tokenizer, messages)) + max_new <= 160
            assert fits == (turn < len(answered.answers)), (answered.id, turn)
            if not fits:
                assert answered.stopped == "out_of_context"
                break
            messages.append({"role": "assistant", "content": answered.answers[turn]})
    for t in range(20):
        stopped_before = sum(report.out_of_context[:t + 1])
        ended_before = sum(len(a.users) <= t for a in report.answered if a.stopped == "ended")
        assert report.measured[t] + stopped_before + ended_before == len(dialogues)


def test_gatt_dialogues_come_from_answers_with_the_instruction_in_every_turn(tokenizer):
    dialogues = make_conversations(10, seed=9, min_turns=2, max_turns=6)
    # a first turn too long for the context: dropped, accounted for
    dialogues.append({"id": "too-long", "messages": [{"role": "user", "content": " ".join(["kiwi", "plum", "fig"] * 200)},
                                                     {"role": "assistant", "content": "x"}]})
    constraint = constraint_by_id("form:capitals")
    model = model_of(256)
    sampling = Sampling(temperature=0.8, top_p=0.95)
    built = sample_gatt_dialogues(model, tokenizer, dialogues, constraint, seed=11, max_turns=6, max_new_tokens=8,
                                  sampling=sampling, every_prefix=True)
    again = sample_gatt_dialogues(model, tokenizer, dialogues, constraint, seed=11, max_turns=6, max_new_tokens=8,
                                  sampling=sampling, every_prefix=True)
    assert built.records == again.records and built.dropped == again.dropped
    counts = built.counts()
    assert counts["dialogues"] == len(dialogues) and built.dropped["too-long"] == "prompt_exceeds_context"
    assert counts["kept"] + sum(counts["dropped"].values()) == len(dialogues) and counts["kept"] > 0

    answered = {a.id: a for a in answer_turn_by_turn(model, tokenizer, dialogues, constraint, instruct_every_turn=True,
                                                     max_turns=6, max_new_tokens=8, sampling=sampling, seed=11)}
    for record in built.records:
        source = answered[record["gatt_source"]]
        messages = record["messages"]
        assert messages[0] == {"role": "system", "content": constraint.text} and record["train_on"] == "last_answer"
        assert [m["content"] for m in messages[1::2]] == source.users[:record["turns"]]  # plain user turns
        assert [m["content"] for m in messages[2::2]] == source.answers[:record["turns"]]
    kept = {r["gatt_source"] for r in built.records}
    assert sum(len(answered[k].answers) for k in kept) == len(built.records)  # one record per answered turn
    print("sampled GAtt dialogues:", counts)

    # Sampling answers prompts with the instruction in every user turn (greedy here, to replay it).
    [greedy] = answer_turn_by_turn(model, tokenizer, dialogues[:1], constraint, instruct_every_turn=True,
                                   max_turns=6, max_new_tokens=8)
    turns = []
    for user, answer in zip(greedy.users, greedy.answers):
        turns.append({"role": "user", "content": user})
        prompt = encode_prompt(tokenizer, with_instruction_every_turn(turns, constraint))
        ids = generate(model, [prompt], max_new_tokens=8, stop_tokens=[tokenizer.eos_id], pad_token=tokenizer.eos_id,
                       vocab_size=tokenizer.vocab_size)[0]
        assert tokenizer.decode([i for i in ids if i != tokenizer.eos_id]) == answer
        turns.append({"role": "assistant", "content": answer})
    assert len(greedy.answers) == len(user_turns(dialogues[0]))


# ------------------------------------------------------------------------------ learning, on a CPU

LEARN_TASKS = ["repeat", "first", "last", "add", "capitals"]


def instructed_every_turn(dialogue, constraint: Constraint) -> dict:
    """The dialogue as a model that keeps the instruction answers it when given it every turn."""
    answers = [{**m, "content": "Answer: " + m["content"]} if m["role"] == "assistant" else m
               for m in dialogue["messages"]]
    return {**dialogue, "id": dialogue["id"] + "-instructed", "messages": with_instruction_every_turn(answers, constraint)}


def fine_tune(tmp_path, tokenizer, name: str, records: list[dict], steps: int, init=None):
    write_jsonl(tmp_path / f"{name}.jsonl", records)
    stage = ingest_dialogues(name, [str(tmp_path / f"{name}.jsonl")], str(tmp_path / name), MessagesReader())
    packed = pack_dialogues(stage["stage_dir"], tokenizer, str(tmp_path / name), seq_len=255, seed=0)
    shape = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=600, multiple_of=32, max_seq_len=256)
    config = SFTConfig(run_name=name, output=str(tmp_path / "runs"), data=packed["stage_dir"], model=shape,
                       steps=steps, seq_len=255, global_batch_tokens=8 * 255, micro_batch_rows=8, export_hf=False,
                       optimizer={"lr": 3e-3 if init is None else 1e-3, "weight_decay": 0.0},
                       schedule={"warmup_steps": 10})
    trainer = Trainer(config, initial_weights=init)
    trainer.train()
    return trainer.model


def test_a_gatt_fine_tuned_model_keeps_the_instruction_at_later_turns(tmp_path, ray_local):
    prefix = constraint_by_id("form:prefix")
    texts = tokenizer_texts(600) + [c.text for cs in all_constraints().values() for c in cs] * 5
    tokenizer = train_tokenizer(texts + ["Answer: kiwi Answer: 4"] * 20, tmp_path / "spm", vocab_size=600)
    # The latest model: it starts its answers with "Answer:" when every user turn asks it to.
    base = make_conversations(800, seed=1, min_turns=1, max_turns=4, tasks=LEARN_TASKS)
    latest = fine_tune(tmp_path, tokenizer, "latest", [instructed_every_turn(d, prefix) for d in base[:400]]
                       + base[400:], steps=300)
    weights = {name: tensor.clone() for name, tensor in latest.state_dict().items()}
    # GAtt dialogues sampled from it, and the same sampled answers in their sampling form (the
    # instruction in every turn, every answer trained), each with dialogues without instruction.
    pool = make_conversations(300, seed=2, min_turns=2, max_turns=5, tasks=LEARN_TASKS)
    gatt = sample_gatt_dialogues(latest, tokenizer, pool, prefix, seed=3, max_turns=5, max_new_tokens=12,
                                 every_prefix=True)
    longest = {record["gatt_source"]: record for record in gatt.records}  # per prefix, shortest first
    control = [{"id": source, "messages": with_instruction_every_turn(record["messages"][1:], prefix)}
               for source, record in longest.items()]
    plain = make_conversations(300, seed=4, min_turns=1, max_turns=4, tasks=LEARN_TASKS)
    with_gatt = fine_tune(tmp_path, tokenizer, "gatt", gatt.records + plain, steps=150, init=weights)
    without_gatt = fine_tune(tmp_path, tokenizer, "control", control + plain, steps=150, init=weights)

    test = make_conversations(40, seed=99, min_turns=6, max_turns=6, tasks=LEARN_TASKS)
    shares = {name: turn_adherence(model, tokenizer, test, prefix, max_turns=6, max_new_tokens=12).shares()
              for name, model in [("latest", latest), ("gatt", with_gatt), ("control", without_gatt)]}
    # Whether the GAtt model starts with "Answer:" because the system message says so, or always.
    neutral = Constraint("test:neutral", "form", "You are a helpful assistant.", starts_with_prefix)
    unasked = turn_adherence(with_gatt, tokenizer, test, neutral, max_turns=6, max_new_tokens=12).answer_following
    print(f"GAtt sampling: {gatt.counts()}")
    for name, share in shares.items():
        print(f"still following at turns 1-6, {name}: {[round(s, 3) for s in share]}")
    print(f"GAtt model's answers opening with 'Answer:' under another system message, turns 1-6: {unasked} of 40")
    later = {name: sum(share[1:]) / 5 for name, share in shares.items()}
    # At turn 1 the system message is next to the user text (how well the latest model reads it
    # there varies with the seed); after that it forgets without GAtt, and keeps it with.
    assert later["latest"] <= 0.3
    assert later["gatt"] >= 0.8 and later["control"] <= 0.3
    assert sum(unasked) <= 0.2 * 40 * 6
