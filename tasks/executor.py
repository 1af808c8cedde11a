"""How every stage runs: fingerprints, completion markers, Ray tasks, progress.

A stage says what its parts are and what one part does; this module does the rest, one way for
every stage:

- :func:`fingerprint`: the sha256 of the canonical JSON of whatever decides an output. A finished
  part or stage is reused only for the fingerprint it was made with.
- A part's *receipt* is a JSON file the part writes last, holding its ``fingerprint``: the part's
  completion marker. :func:`finished_receipt` finds it, so a rerun or a Ray retry skips the part.
- A stage's ``_SUCCESS`` marker (:class:`Marker`, one format for every stage) holds, per *scope*
  of the stage, the fingerprint of the run that finished it, plus a summary::

      {"fingerprints": {"<scope>": "<sha256>", ...}, "summary": {...}}

  A document stage's scopes are its sources (separate runs write separate sources of one stage);
  a stage made as a whole has the one scope :data:`WHOLE_STAGE`. A folder stage's summary holds
  the digest of its output files (the next stage's fingerprint includes it) and its counts; a
  marker without any scope is not written, so an existing ``_SUCCESS`` means something finished.
- :func:`run_tasks`: jobs as Ray tasks under one retry policy, results in job order, a progress
  bar on a terminal and a callback per finished job.
- :func:`run_on_actors`: jobs on pools of Ray actors (state loaded once per actor, a model say),
  under the same retry policy, results in job order.
- :func:`run_marked`: a stage that resumes part by part (each part skipped by its receipt).
- :func:`run_once`: a folder stage made in one go: wiped and redone whole when its marker is stale.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow.fs as pafs
from rich.console import Console
from rich.progress import Progress

from tasks.shards import SUCCESS
from tasks.storage import Location, remove_temporaries, sha256_of, write_json_atomic

WHOLE_STAGE = "*"  # the scope of a stage made as a whole (never a source name)
# A task is retried when its worker died (Ray retries those by default) or when it raised OSError
# (a store that did not answer, a full disk): transient, and every job is idempotent, a retry
# skipping what the first try finished. Any other exception is a bug or bad data: it fails the run.
TASK_RETRIES = 2
TRANSIENT_ERRORS = (OSError,)

Result = TypeVar("Result")


def fingerprint(payload: Any) -> str:
    """Of what decides an output; equal payloads (dicts in any key order) give equal fingerprints."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def finished_receipt(receipt: Location, expected: str) -> dict[str, Any] | None:
    """The part's receipt when the part was finished with this fingerprint, else None."""
    if not receipt.exists():
        return None
    done = receipt.read_json()
    return done if done.get("fingerprint") == expected else None


# ---------------------------------------------------------------- the stage's completion marker


@dataclass(frozen=True)
class Marker:
    """What a stage's ``_SUCCESS`` says: scope -> fingerprint of the run that finished it."""

    fingerprints: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def holds(self, fingerprints: Mapping[str, str]) -> bool:
        """Whether every given scope is finished with the given fingerprint."""
        return all(self.fingerprints.get(scope) == expected for scope, expected in fingerprints.items())


def read_marker(folder: Location) -> Marker:
    """The stage's marker; an empty one when the stage has none (or one of an older format,
    which holds no scope: the stage is redone once)."""
    location = folder.join(SUCCESS)
    if not location.exists():
        return Marker()
    try:
        data = location.read_json()
    except json.JSONDecodeError as exc:
        raise ValueError(f"{location.uri}: completion marker is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{location.uri}: completion marker is not a JSON object")
    return Marker(dict(data.get("fingerprints", {})), dict(data.get("summary", {})))


def write_marker(folder: Location, marker: Marker) -> None:
    location = folder.join(SUCCESS)
    if not marker.fingerprints:
        location.delete()
        return
    write_json_atomic(location, {"fingerprints": dict(sorted(marker.fingerprints.items())), "summary": marker.summary})


def mark(folder: Location, fingerprints: Mapping[str, str], summary: Mapping[str, Any] | None = None) -> None:
    """Record these scopes as finished (other scopes stay as they are); ``summary`` replaces the old one."""
    before = read_marker(folder)
    after = Marker({**before.fingerprints, **fingerprints}, dict(summary) if summary is not None else before.summary)
    write_marker(folder, after)


def unmark(folder: Location, scopes: Iterable[str]) -> None:
    """Forget these scopes: done before a run rewrites them, so a run that dies half-way never
    leaves a scope marked finished over outputs it changed."""
    before = read_marker(folder)
    scopes = set(scopes)
    remaining = {k: v for k, v in before.fingerprints.items() if k not in scopes}
    # With no scope left the marker goes (an older format's marker, holding none, too).
    if remaining != before.fingerprints or not remaining:
        write_marker(folder, Marker(remaining, before.summary))


def is_complete(folder: Location, fingerprints: Mapping[str, str]) -> bool:
    return read_marker(folder).holds(fingerprints)


# ---------------------------------------------------------------- running a stage


def run_marked(
    folder: Location, fingerprints: Mapping[str, str], work: Callable[[], Result], reuse: Callable[[], Result]
) -> Result:
    """A stage that resumes part by part: ``reuse()`` when the marker holds these fingerprints,
    else unmark the scopes, remove the remains of killed writers, ``work()``, mark the scopes.

    ``work`` skips the parts whose receipts match (:func:`finished_receipt`) and writes what the
    stage's readers need (a manifest) before it returns: the mark comes last.
    """
    if is_complete(folder, fingerprints):
        return reuse()
    unmark(folder, fingerprints.keys())
    # No writer of this stage runs yet: any temporary file is the remains of a killed one.
    remove_temporaries(folder)
    result = work()
    mark(folder, fingerprints)
    return result


def run_once(folder: Location, expected: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A folder stage made in one go, unless its marker holds ``expected``; a stale or half-made
    stage is wiped first, so no file of an earlier run survives.

    Returns the summary the marker keeps: ``digest`` (:func:`folder_digest` of what ``work`` wrote)
    and ``stats`` (what ``work`` returned).
    """
    marker = read_marker(folder)
    if marker.holds({WHOLE_STAGE: expected}):
        return marker.summary
    folder.delete()
    stats = work()
    summary = {"digest": folder_digest(folder), "stats": stats}
    write_marker(folder, Marker({WHOLE_STAGE: expected}, summary))
    return summary


def output_files(folder: Location) -> list[Location]:
    """Every file under the folder, recursively, sorted by relative path, without bookkeeping
    (a path with a part starting with ``_``: markers, receipts, temporaries)."""
    if not folder.exists():
        return []
    infos = folder.fs.get_file_info(pafs.FileSelector(folder.path, recursive=True))
    prefix = folder.path.rstrip("/") + "/"
    relative = sorted(i.path.removeprefix(prefix) for i in infos if i.type == pafs.FileType.File)
    return [folder.join(*r.split("/")) for r in relative if not any(p.startswith("_") for p in r.split("/"))]


def folder_digest(folder: Location) -> str:
    """Of every output file's relative path and bytes: equal when a redone stage wrote the same."""
    prefix = folder.path.rstrip("/") + "/"
    lines = [f"{f.path.removeprefix(prefix)} {sha256_of(f)}" for f in output_files(folder)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def run_each(function: Callable[[Any], Result], jobs: Sequence[Any]) -> list[Result]:
    """``function(job)`` for every job as a Ray task (:func:`run_tasks` with one argument each)."""
    return run_tasks(function, [(job,) for job in jobs])


def run_tasks(
    function: Callable[..., Result],
    calls: Sequence[tuple],
    *,
    shared: tuple = (),
    num_gpus: float = 0,
    label: str | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """``function(*shared, *call)`` for every call, each a Ray task (holding ``num_gpus`` GPUs, for
    one that runs a model on a GPU cluster); the results in call order.

    ``shared`` goes to the object store once for all calls. Retries follow :data:`TASK_RETRIES`
    and :data:`TRANSIENT_ERRORS`. ``on_result`` sees each result as its task finishes (in the
    order they finish); a progress bar shows where a person watches (a terminal), CI logs and
    workers get the callback only.
    """
    import ray

    from tasks.ray_runtime import ensure_ray

    ensure_ray()
    remote = ray.remote(function).options(num_gpus=num_gpus, max_retries=TASK_RETRIES,
                                          retry_exceptions=list(TRANSIENT_ERRORS))
    shared_refs = [ray.put(value) for value in shared]
    position = {remote.remote(*shared_refs, *call): n for n, call in enumerate(calls)}
    results: list[Any] = [None] * len(calls)
    pending = list(position)
    with Progress(console=Console(stderr=True), disable=not sys.stderr.isatty(), transient=True) as progress:
        bar = progress.add_task(label or getattr(function, "__name__", "tasks"), total=len(pending))
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            result = ray.get(done[0])
            results[position[done[0]]] = result
            progress.advance(bar)
            if on_result is not None:
                on_result(result)
    return results


def run_on_actors(
    actor_class: type,
    pools: Mapping[Hashable, tuple],
    calls: Sequence[tuple[Hashable, tuple]],
    *,
    method: str,
    actors_per_pool: int = 1,
    num_cpus: float = 1,
    num_gpus: float = 0,
    label: str | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """``actor.<method>(*call)`` for every ``(pool, call)`` on an actor of that pool; results in call order.

    Each pool is ``actors_per_pool`` actors (each holding ``num_cpus`` CPUs and ``num_gpus`` GPUs)
    made by ``actor_class(*pools[pool])``: what the
    constructor loads (a model) is loaded once per actor and serves many calls. An idle actor takes
    its pool's next call; one whose pool has none left is ended, so a cluster too small for every
    actor at once still finishes (the actors it could not place start as others end). Retries follow :data:`TASK_RETRIES` and :data:`TRANSIENT_ERRORS`: a dead
    actor is restarted and its call run again, and a call that raised a transient error is run
    again; as with :func:`run_tasks` every call must be idempotent.
    """
    import ray

    from tasks.ray_runtime import ensure_ray

    if actors_per_pool < 1:
        raise ValueError(f"actors_per_pool must be >= 1, got {actors_per_pool}")
    unknown = {pool for pool, _ in calls} - set(pools)
    if unknown:
        raise ValueError(f"calls name pools that are not given: {sorted(map(str, unknown))}")
    ensure_ray()
    remote_class = ray.remote(actor_class).options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=TASK_RETRIES,
                                                   max_task_retries=TASK_RETRIES)
    waiting = {pool: [n for n, (key, _) in enumerate(calls) if key == pool] for pool in pools}
    idle = {pool: [remote_class.remote(*pools[pool]) for _ in range(min(actors_per_pool, len(waiting[pool])))]
            for pool in pools if waiting[pool]}
    running: dict[Any, tuple[Hashable, Any, int]] = {}
    results: list[Any] = [None] * len(calls)

    def dispatch(pool: Hashable) -> None:
        while idle[pool] and waiting[pool]:
            actor, n = idle[pool].pop(), waiting[pool].pop(0)
            call = getattr(actor, method).options(retry_exceptions=list(TRANSIENT_ERRORS))
            running[call.remote(*calls[n][1])] = (pool, actor, n)

    every_actor = [actor for actors in idle.values() for actor in actors]
    try:
        for pool in idle:
            dispatch(pool)
        with Progress(console=Console(stderr=True), disable=not sys.stderr.isatty(), transient=True) as progress:
            bar = progress.add_task(label or f"{actor_class.__name__}.{method}", total=len(calls))
            while running:
                done, _ = ray.wait(list(running), num_returns=1)
                pool, actor, n = running.pop(done[0])
                results[n] = ray.get(done[0])
                if waiting[pool]:
                    idle[pool].append(actor)
                    dispatch(pool)
                else:
                    # Its pool has no call left: its resources go to actors still waiting for some.
                    ray.kill(actor)
                    every_actor.remove(actor)
                progress.advance(bar)
                if on_result is not None:
                    on_result(results[n])
    finally:
        # The actors hold what they loaded (models): freed now, not when the driver exits.
        for actor in every_actor:
            ray.kill(actor)
    return results
