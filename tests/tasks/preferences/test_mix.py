"""Reward-model mixtures: exact shares by seeded sampling, counts that reconcile per role, reruns."""

import pytest

from tasks.preferences.ingest import ingest_comparisons
from tasks.preferences.mix import HELPFULNESS_MIXTURE, SAFETY_MIXTURE, ComparisonMixture, mix_comparisons
from tasks.preferences.readers import ComparisonReader
from tasks.preferences.records import read_comparisons
from tasks.storage import resolve
from tasks.validate import check_stage_level
from tests.helpers import write_jsonl_gz


def comparisons(role, n, held_out, labelled):
    """``n`` train comparisons of one role, then ``held_out`` test ones; safety labels where ``labelled``."""
    lines = []
    for k in range(n + held_out):
        line = {"context": [{"role": "user", "content": f"{role} prompt {k}"}], "chosen": f"good {k}", "rejected": f"bad {k}",
                "rating": "better", "split": "train" if k < n else "test"}
        if labelled:
            line |= {"chosen_safe": True, "rejected_safe": k % 2 == 0}
        lines.append(line)
    return lines


# Role -> (train comparisons per input file, held-out ones per file, safety labels).
SIZES = {"helpfulness": ([45, 45], 5, False), "safety": ([40], 4, True), "open_helpfulness": ([20, 10], 3, False), "open_harmless": ([50], 0, False)}


def role_stages(folder, sizes=SIZES):
    """Each role's finished comparison stage: role -> stage folder URI."""
    stages = {}
    for role, (per_file, held_out, labelled) in sizes.items():
        files = [str(write_jsonl_gz(folder / "raw" / f"{role}-{n}.jsonl.gz", comparisons(f"{role}{n}", size, held_out, labelled)))
                 for n, size in enumerate(per_file)]
        manifest = ingest_comparisons(role, files, str(folder / role), ComparisonReader())
        stages[role] = manifest["stage_dir"]
    return stages


@pytest.fixture(scope="module")
def stages(tmp_path_factory, ray_local):
    return role_stages(tmp_path_factory.mktemp("roles"))


def check_reconciles(manifest, sizes=SIZES):
    plan = manifest["mixture"]
    for role, entry in plan["roles"].items():
        per_file, held_out, _ = sizes[role]
        totals = manifest["totals"]["by_source"][role]
        assert totals["docs_in"] == sum(per_file) + held_out * len(per_file)  # every input comparison ...
        assert entry["available"] == sum(per_file)
        assert totals["kept"] == entry["taken"]  # ... kept, or dropped with its reason
        assert totals["dropped"].get("other_split", 0) == held_out * len(per_file)
        assert totals["dropped"].get("not_sampled", 0) == entry["available"] - entry["taken"]
    assert sum(e["taken"] for e in plan["roles"].values()) == plan["total"] == manifest["totals"]["kept"]
    assert check_stage_level(resolve(manifest["stage_dir"]), manifest) == []


def test_safety_mixture_is_ninety_ten(stages, tmp_path):
    manifest = mix_comparisons(stages, SAFETY_MIXTURE, str(tmp_path))
    plan = manifest["mixture"]
    check_reconciles(manifest)
    # 40 safety + 50 harmless whole, so 10 sampled: exactly 10%.
    assert (plan["whole"], plan["target_sampled"], plan["realised_share"]) == (90, 10, 0.1)
    assert plan["roles"]["helpfulness"]["taken"] + plan["roles"]["open_helpfulness"]["taken"] == 10
    assert plan["roles"]["safety"]["taken"] == 40 and plan["roles"]["open_harmless"]["share"] == 50 / 100
    assert resolve(manifest["stage_dir"]).join("_mixture.json").read_json() == plan
    mixed = [c for part in manifest["parts"] for c in read_comparisons(part["path"])]
    assert {c.split for c in mixed} == {"train"} and len({c.id for c in mixed}) == 100
    by_role = {part["source"]: list(read_comparisons(part["path"])) for part in manifest["parts"] if part["index"] == 0}
    assert {c.source for c in by_role["safety"]} == {"safety"} and by_role["safety"][0].chosen_safe is True
    assert by_role["safety"][0].meta["origin_source"] == "safety"


def test_helpfulness_mixture_is_half_helpfulness(stages, tmp_path):
    manifest = mix_comparisons(stages, HELPFULNESS_MIXTURE, str(tmp_path))
    plan = manifest["mixture"]
    check_reconciles(manifest)
    assert (plan["whole"], plan["target_sampled"], plan["realised_share"]) == (90, 90, 0.5)
    assert sum(plan["roles"][r]["taken"] for r in ("safety", "open_helpfulness", "open_harmless")) == 90
    # A uniform sample of the pooled 120: every sampled role gives some.
    assert all(plan["roles"][r]["taken"] > 0 for r in ("safety", "open_helpfulness", "open_harmless"))


def test_rerun_is_byte_identical_and_the_seed_moves_the_sample(stages, tmp_path):
    one = mix_comparisons(stages, SAFETY_MIXTURE, str(tmp_path / "one"))
    two = mix_comparisons(stages, SAFETY_MIXTURE, str(tmp_path / "two"))
    for a, b in zip(one["parts"], two["parts"]):
        assert open(a["path"], "rb").read() == open(b["path"], "rb").read()
    assert mix_comparisons(stages, SAFETY_MIXTURE, str(tmp_path / "one")) == one
    reseeded = mix_comparisons(stages, SAFETY_MIXTURE.model_copy(update={"seed": 1}), str(tmp_path / "three"))
    assert reseeded["mixture"]["target_sampled"] == 10
    ids = [{c.id for p in m["parts"] if p["source"] == "helpfulness" for c in read_comparisons(p["path"])} for m in (one, reseeded)]
    assert ids[0] != ids[1]


def test_the_sample_does_not_depend_on_how_inputs_are_split(stages, tmp_path):
    # The same 30 comparisons as two files and as one (named by a field: ids from file and line would
    # differ), 10 of them sampled.
    lines = [line | {"key": f"pair {n}"} for n, line in enumerate(comparisons("open", 30, 6, False))]
    recipe = ComparisonMixture(name="help", whole=("helpfulness",), sampled=("open_helpfulness",), sampled_share=0.1)
    sampled = {}
    for layout, files in (("two_files", [lines[:20], lines[20:]]), ("one_file", [lines])):
        uris = [str(write_jsonl_gz(tmp_path / layout / f"{n}.jsonl.gz", f)) for n, f in enumerate(files)]
        stage = ingest_comparisons("open_helpfulness", uris, str(tmp_path / layout), ComparisonReader(id_field="key"))
        inputs = {"helpfulness": stages["helpfulness"], "open_helpfulness": stage["stage_dir"]}
        mixed = mix_comparisons(inputs, recipe, str(tmp_path / layout))
        sampled[layout] = sorted(c.id for p in mixed["parts"] if p["source"] == "open_helpfulness" for c in read_comparisons(p["path"]))
    assert len(sampled["one_file"]) == 10 and sampled["two_files"] == sampled["one_file"]


def test_a_recipe_the_inputs_cannot_fill_fails_before_any_output(stages, tmp_path):
    greedy = ComparisonMixture(name="greedy", whole=("helpfulness",), sampled=("open_harmless",), sampled_share=0.5)
    with pytest.raises(ValueError, match="the sample needs 90 comparisons"):
        mix_comparisons({"helpfulness": stages["helpfulness"], "open_harmless": stages["open_harmless"]}, greedy, str(tmp_path))
    with pytest.raises(ValueError, match="not in the recipe"):
        mix_comparisons({"helpfulness": stages["helpfulness"], "chat": stages["safety"]}, greedy, str(tmp_path))
    assert not resolve(str(tmp_path)).join("reward_mix-greedy").exists()
