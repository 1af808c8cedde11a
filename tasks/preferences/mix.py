"""Reward-model mixtures: finished comparison stages, each in a role, mixed by recipe into one stage.

A recipe (:class:`ComparisonMixture`) takes every comparison of its ``whole`` roles and adds a
uniform sample of the pooled comparisons of its ``sampled`` roles, sized so that the sample is
``sampled_share`` of the mixture: ``round(W * share / (1 - share))`` comparisons for ``W`` whole
ones. Llama 2's two (:data:`HELPFULNESS_MIXTURE`, :data:`SAFETY_MIXTURE`): the helpfulness model
on all Meta Helpfulness data plus an equal number sampled from Meta Safety and the open-source
data; the safety model on all Meta Safety and Anthropic Harmless data mixed 90/10 with Meta
Helpfulness and open-source helpfulness data. Only comparisons of the recipe's ``split`` take
part; held-out ones are evaluated on where they were ingested.

The sample takes the comparisons with the smallest 64-bit keys (:func:`tasks.mix.doc_key` of
seed, role and id) over the whole pool, found by a first pass that reads each input part's ids
and splits: so the count is exact, the sample uniform over the pool and independent of how the
inputs are split into parts, and the same seed gives the same sample. The mixed stage has one
source per role, holding that role's part, documents in input order; its receipts count, per
role, every input comparison as kept or dropped (``other_split``, ``not_sampled``), and the plan
(per role: available, taken, share; the target and realised sample share) goes into
``<stage>/_mixture.json`` and the returned manifest's ``mixture``, as :func:`tasks.mix.run_mix`'s.
A mixed comparison keeps its id; its source becomes its role and ``meta["origin_source"]`` keeps
the input stage's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq
from pydantic import BaseModel, Field, model_validator

from tasks.documents import BadRecord, Document
from tasks.executor import run_tasks
from tasks.mix import MIXTURE_FILE, doc_key
from tasks.preferences.records import COMPARISON_COLUMNS, SPLITS
from tasks.shards import read_part
from tasks.stage import ShardUnit, StageSpec, run_stage, units_from_stage
from tasks.steps import Drop
from tasks.storage import resolve, write_json_atomic

MIXED_STAGE_PREFIX = "reward_mix-"  # + the recipe's name: each reward model's mixture a stage of its own


class ComparisonMixture(BaseModel):
    name: str
    whole: tuple[str, ...] = Field(min_length=1, description="Roles every comparison of which is taken")
    sampled: tuple[str, ...] = Field((), description="Roles pooled and sampled uniformly")
    sampled_share: float = Field(0.0, ge=0, lt=1, description="The sample's share of the mixture")
    split: str = "train"
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> ComparisonMixture:
        both = set(self.whole) & set(self.sampled)
        if both:
            raise ValueError(f"roles both whole and sampled: {sorted(both)}")
        if bool(self.sampled) != (self.sampled_share > 0):
            raise ValueError("give sampled roles exactly when sampled_share > 0")
        if self.split not in SPLITS:
            raise ValueError(f"split {self.split!r}; splits are {', '.join(SPLITS)}")
        return self

    @property
    def roles(self) -> tuple[str, ...]:
        return self.whole + self.sampled


HELPFULNESS_MIXTURE = ComparisonMixture(
    name="helpfulness", whole=("helpfulness",), sampled=("safety", "open_helpfulness", "open_harmless"), sampled_share=0.5
)
SAFETY_MIXTURE = ComparisonMixture(
    name="safety", whole=("safety", "open_harmless"), sampled=("helpfulness", "open_helpfulness"), sampled_share=0.1
)


# ---------------------------------------------------------------- planning (Ray tasks)


@dataclass(frozen=True)
class PartKeys:
    role: str
    index: int
    in_split: int  # comparisons of the recipe's split
    keys: list[int]  # their sampling keys, for a sampled role's part (else empty)


def part_keys(seed: int, split: str, sampled: bool, unit: ShardUnit) -> PartKeys:
    """The part's comparisons of ``split``, and their keys when the part is to be sampled."""
    with resolve(unit.input.uri).open_random_access() as f:
        table = pq.read_table(f, columns=["id", "split"])
    ids = [i for i, s in zip(table.column("id").to_pylist(), table.column("split").to_pylist()) if s == split]
    keys = [doc_key(seed, unit.source, doc_id) for doc_id in ids] if sampled else []
    return PartKeys(unit.source, unit.index, len(ids), keys)


def role_units(inputs: Mapping[str, str]) -> list[ShardUnit]:
    """One unit per part of each role's finished stage, the role as its source."""
    return [
        ShardUnit(role, n, unit.input)
        for role in sorted(inputs)
        for n, unit in enumerate(units_from_stage(resolve(inputs[role])))
    ]


def plan_comparison_mix(inputs: Mapping[str, str], recipe: ComparisonMixture) -> dict[str, Any]:
    """Count every role's comparisons of the split and pick the sample's key threshold.

    Raises ValueError, before anything is written, for a role the recipe does not name, no whole
    comparison, or a pool smaller than the sample it must give.
    """
    unknown = sorted(set(inputs) - set(recipe.roles))
    if unknown:
        raise ValueError(f"mixture {recipe.name}: roles {unknown} are not in the recipe's {list(recipe.roles)}")
    units = role_units(inputs)
    found: list[PartKeys] = run_tasks(
        part_keys,
        [(u.source in recipe.sampled, u) for u in units],
        shared=(recipe.seed, recipe.split),
        label=f"reward mix {recipe.name}: keys",
    )
    available = {role: sum(p.in_split for p in found if p.role == role) for role in recipe.roles}
    whole = sum(available[role] for role in recipe.whole)
    if whole == 0:
        raise ValueError(f"mixture {recipe.name}: no {recipe.split} comparisons in the whole roles {list(recipe.whole)}")
    target = round(whole * recipe.sampled_share / (1 - recipe.sampled_share))
    pool = sorted(key for p in found for key in p.keys)
    if target > len(pool):
        raise ValueError(
            f"mixture {recipe.name}: the sample needs {target:,} comparisons, the sampled roles "
            f"{list(recipe.sampled)} hold {len(pool):,} of split {recipe.split}"
        )
    threshold = pool[target] if target < len(pool) else 1 << 64
    if target and pool[target - 1] == threshold:
        raise ValueError(f"mixture {recipe.name}: two comparisons share the key at the sample's boundary; change the seed")
    taken = {role: available[role] for role in recipe.whole}
    taken |= {role: sum(k < threshold for p in found if p.role == role for k in p.keys) for role in recipe.sampled}
    total = whole + target
    return {
        "recipe": recipe.model_dump(mode="json"),
        "inputs": {role: resolve(uri).uri for role, uri in sorted(inputs.items())},
        "threshold": threshold,
        "whole": whole,
        "target_sampled": target,
        "target_share": recipe.sampled_share,
        "realised_share": target / total,
        "total": total,
        "roles": {
            role: {
                "given": role in inputs,
                "sampled": role in recipe.sampled,
                "available": available[role],
                "taken": taken[role],
                "share": taken[role] / total,
            }
            for role in recipe.roles
        },
    }


# ---------------------------------------------------------------- writing the mixed stage


@dataclass(frozen=True)
class ComparisonSampleReader:
    """Reads one input part: its comparisons of the split, a sampled role's only below the threshold."""

    seed: int
    split: str
    sampled: tuple[str, ...]
    threshold: int

    def read(self, unit: ShardUnit) -> Iterator[Document | Drop | BadRecord]:
        for doc in read_part(resolve(unit.input.uri)):
            if doc.columns["split"] != self.split:
                yield Drop("other_split")
            elif unit.source in self.sampled and doc_key(self.seed, unit.source, doc.id) >= self.threshold:
                yield Drop("not_sampled")
            else:
                yield Document(doc.id, unit.source, doc.text, {**doc.meta, "origin_source": doc.source}, doc.columns)


def mix_comparisons(
    inputs: Mapping[str, str], recipe: ComparisonMixture, root: str, stage: str | None = None
) -> dict[str, Any]:
    """Mix finished comparison stages (role -> stage folder URI) by ``recipe`` into stage ``stage``
    (by default ``reward_mix-<recipe name>``) under ``root``; return its manifest with the plan
    under ``mixture``.

    The plan is made first, so a recipe the inputs cannot fill fails before any output.
    """
    plan = plan_comparison_mix(inputs, recipe)
    reader = ComparisonSampleReader(recipe.seed, recipe.split, recipe.sampled, plan["threshold"])
    spec = StageSpec(
        root=root,
        name=stage or MIXED_STAGE_PREFIX + recipe.name,
        reader=reader,
        parameters={"mixture": recipe.model_dump(mode="json"), "threshold": plan["threshold"]},
        extra_columns=COMPARISON_COLUMNS,
    )
    manifest = run_stage(spec, role_units(inputs))
    write_json_atomic(spec.stage_dir.join(MIXTURE_FILE), plan)
    return {**manifest, "mixture": plan}
