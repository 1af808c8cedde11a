"""A curation stage killed half-way and run again writes the same bytes as a run never interrupted.

Three kinds of stage: a per-document stage (curation steps through run_stage), CCNet line dedup
(three linked passes) and MinHash dedup (five linked stages). The per-document stage is crashed
from inside: a test step kills its Ray worker (``os._exit``) in the middle of a part. The two
dedup runs are crashed from outside: their driver runs in a subprocess connected to the session's
Ray and is SIGKILLed as soon as the first of its outputs appears on disk (Ray then ends the dead
driver's tasks), with most of the run still to do.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.curate.heuristics import GopherRepetitionFilter
from tasks.curate.line_dedup import run_line_dedup
from tasks.curate.minhash import run_minhash_dedup
from tasks.documents import Document, make_doc_id
from tasks.shards import MANIFEST, SUCCESS
from tasks.stage import PartReader, ShardUnit, StageSpec, run_stage, units_from_stage
from tasks.steps import Step
from tasks.storage import TEMP_PREFIX, resolve

PARTS, DOCS_PER_PART = 8, 40
REPO = Path(__file__).resolve().parents[3]
BOILERPLATE = ("Home | About us | Contact", "Subscribe to our newsletter for weekly updates.")


VOCABULARY = tuple("".join(random.Random(n).choices("abcdefghijklmnopqrstuvwxyz", k=3 + n % 6)) for n in range(400))


def sentence(part: int, row: int, line: int) -> str:
    return " ".join(random.Random(f"{part}-{row}-{line}").choices(VOCABULARY, k=14)).capitalize() + "."


@dataclass(frozen=True)
class SyntheticWeb:
    """Deterministic pages: shared boilerplate lines (line dedup), every fifth page a copy of page
    0's page of the same row with one word changed (MinHash), the rest original text."""

    def read(self, unit: ShardUnit):
        for row in range(DOCS_PER_PART):
            own = [sentence(unit.index, row, line) for line in range(6)]
            if row % 5 == 0 and unit.index > 0:
                own = [sentence(0, row, line) for line in range(6)]
                own[3] = own[3].replace(" ", " and ", 1)
            text = "\n".join([BOILERPLATE[row % 2], *own, BOILERPLATE[(row + 1) % 2]])
            yield Document(make_doc_id(unit.source, f"{unit.index}-{row}"), unit.source, text, {"row": row})


class KillWorkerWhileArmed(Step):
    """Kills its Ray worker at one document while the arm file exists: a crash mid-part."""

    name = "crash"

    def __init__(self, arm: str, doc_id: str) -> None:
        super().__init__()
        self.arm, self.doc_id = arm, doc_id

    def apply(self, doc: Document) -> Document:
        if doc.id == self.doc_id and os.path.exists(self.arm):
            os._exit(1)
        return doc


def crashing_steps(arm: str, doc_id: str) -> list[Step]:
    return [KillWorkerWhileArmed(arm, doc_id), GopherRepetitionFilter()]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, ray_local) -> Path:
    root = tmp_path_factory.mktemp("ingested")
    run_stage(StageSpec(str(root), "ingest", SyntheticWeb()), [ShardUnit("commoncrawl", i) for i in range(PARTS)])
    return root / "ingest"


def outputs(root: Path) -> dict[str, str]:
    """sha256 of every data file under the root, the stages' manifest parts, and no leftovers.

    Markers, receipts and manifests hold wall times; their parts' counts and hashes (all but the
    times) are compared from the manifests instead."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name in (SUCCESS, MANIFEST) or path.suffix == ".json":
            continue
        assert not path.name.startswith(TEMP_PREFIX), f"half-written file left: {path}"
        found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    for manifest in sorted(root.rglob(MANIFEST)):
        for part in json.loads(manifest.read_text())["parts"]:
            part.pop("wall_seconds")
            for stats in part["steps"].values():
                stats.pop("seconds", None)
            part["path"] = str(Path(part["path"]).relative_to(root))
            found[f"{manifest.relative_to(root)}#{part['source']}/{part['index']}"] = json.dumps(part, sort_keys=True)
    assert any(name.endswith(".parquet") for name in found)
    return found


def filtered_stage(ingested: Path, root: Path, arm: Path, doc_id: str) -> dict:
    spec = StageSpec(str(root), "filtered", PartReader(), functools.partial(crashing_steps, str(arm), doc_id),
                     parameters={"filters": ["gopher_repetition"]})
    return run_stage(spec, units_from_stage(resolve(str(ingested))))


def test_per_document_stage_killed_mid_part_reruns_to_identical_outputs(ingested, tmp_path):
    import ray

    victim = make_doc_id("commoncrawl", f"{PARTS // 2}-{DOCS_PER_PART // 2}")
    filtered_stage(ingested, tmp_path / "clean", tmp_path / "never-armed", victim)

    arm = tmp_path / "armed"
    arm.touch()
    with pytest.raises(ray.exceptions.WorkerCrashedError):  # every retry of that part dies too
        filtered_stage(ingested, tmp_path / "crashed", arm, victim)
    stage = tmp_path / "crashed" / "filtered"
    assert not (stage / SUCCESS).exists() and not (stage / MANIFEST).exists()
    assert not (stage / "commoncrawl" / f"part-{PARTS // 2:05d}.parquet").exists()
    arm.unlink()
    filtered_stage(ingested, tmp_path / "crashed", arm, victim)
    assert outputs(tmp_path / "crashed") == outputs(tmp_path / "clean")


DRIVER = textwrap.dedent(
    """
    import sys
    from tasks.ray_runtime import ensure_ray
    from tests.tasks.curate.test_crash_rerun import run_dedup
    ensure_ray()  # RAY_ADDRESS: the test session's Ray
    print("connected", flush=True)
    run_dedup(*sys.argv[1:])
    print("finished", flush=True)
    """
)


def run_dedup(kind: str, ingested: str, root: str) -> dict:
    if kind == "line_dedup":
        return run_line_dedup(resolve(ingested), root, min_chars=100, partitions=2)
    return run_minhash_dedup(resolve(ingested), root, threshold=0.7, num_perm=64)


def kill_when(driver_source: str, arguments: list[str], root: Path, first_output: str) -> None:
    """Run ``driver_source`` (it prints "connected" once on the session's Ray, then writes below
    ``root``) in a subprocess and SIGKILL it when ``first_output`` (a glob under ``root``) matches."""
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen([sys.executable, "-c", driver_source, *arguments], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert driver.stdout.readline().strip() == "connected"
        while not any(root.glob(first_output)):
            assert driver.poll() is None, "the driver ended before its first output"
            time.sleep(0.005)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()


@pytest.mark.parametrize(
    "kind, first_output, final_stage",
    [
        # The first part of pass 3: passes 1 and 2 done, most of pass 3 to do.
        ("line_dedup", "line_dedup/_receipts/commoncrawl/part-*.json", "line_dedup"),
        # The first signature part: the first of five stages half done.
        ("minhash", "minhash-signatures/signatures/commoncrawl/part-*.parquet", "minhash"),
    ],
)
def test_dedup_killed_mid_run_reruns_to_identical_outputs(kind, first_output, final_stage, ingested, tmp_path):
    clean = run_dedup(kind, str(ingested), str(tmp_path / "clean"))
    assert clean["totals"]["kept"] < PARTS * DOCS_PER_PART  # it removed something: the comparison is not vacuous

    crashed = tmp_path / "crashed"
    kill_when(DRIVER, [kind, str(ingested), str(crashed)], crashed, first_output)
    assert not (crashed / final_stage / SUCCESS).exists(), "the kill came after the run had finished"
    rerun = run_dedup(kind, str(ingested), str(crashed))
    assert rerun["totals"] == clean["totals"]
    assert outputs(crashed) == outputs(tmp_path / "clean")
