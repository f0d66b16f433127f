"""Crash-safe runs: `cones run customize` SIGKILLed at random moments, then rerun on the same catalog.

Each trial kills a real `cones run customize` process during one of its four steps (ingest,
discovery, generation, scoring), checks what the crash left, reruns the same config on the
same catalog, and checks the result: the grid's generations each once with an image, every
mask decodable and fitting its model, no score without its generation, and a rerun that did
only the missing work and logged how much it skipped. Toy architecture with random weights;
runs report to the session's Prefect server (prefect_api), so each process skips a server start.

A trial killed in step P starts from a copy of the catalog as it stood when P began in a
complete first run (taken with that run paused): the killed run walks through the finished
steps (skipping them) and is killed inside P, instead of doing them again at full cost.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from catalog import PRIMARY_KEYS, load_catalog
from cones_runs import ConesRun, cones_env
from cones_tasks.loading import load_diffusion_model
from cones_tasks.neurons.masks import ConceptMask
from cones_tasks.neurons.space import NeuronSpace
from cones_tasks.toyworld.subjects import TOY_SUBJECTS, write_subject_folders

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL and SIGSTOP of real processes")

PHASES = ("ingest-subjects", "discover-concepts", "generate-combinations", "score-generations")
TASKS = dict(zip(PHASES, ("ingest-subject", "discover-concept", "generate-batch", "score-batch")))  # one per commit
SUBJECTS = TOY_SUBJECTS[:2]
SCORER = "toy-judge"
# Two subjects: 1 + 2 (singles) + 1 (the pair) = 3 subsets × 2 templates × 2 seeds = 12 generations, in
# batches of 2: a crash can land between any of 6 generation commits and 6 score commits.
GRID = {"max_k": 2, "templates": ["{subjects}", "{subjects} on night"], "seeds": [0, 1], "steps": 2,
        "sample_batch": 2, "task_batch": 2}
GRID_SIZE = 12
SKIPPED = {
    "ingest-subjects": re.compile(r"ingest-subjects: (\d+) of (\d+) accepted images already in the catalog"),
    "discover-concepts": re.compile(r"discover-concepts: (\d+) of (\d+) masks already in the catalog"),
    "generate-combinations": re.compile(r"generate-combinations: (\d+) of (\d+) generations already in the catalog"),
    "score-generations": re.compile(rf"score-generations: {SCORER}: (\d+) of (\d+) generations already scored"),
}


def _config(world: Path, catalog: Path, model_dir: Path, **grid) -> dict:
    return {
        "catalog": str(catalog),
        "model": {"path": str(model_dir)},
        "subjects": [{"subject_id": s.id, "class_word": s.class_word, "uri": str(world / "subjects" / s.id)} for s in SUBJECTS],
        "ingest": {"min_side": 16},
        "discovery": {"rounds": 2, "steps": 2, "batch_size": 2},
        "grid": {**GRID, **grid},
        "scoring": {"judge": True, "task_batch": 2},
        "runner": {"kind": "threads", "workers": 2},
    }


def _start(config: dict, path: Path, home: Path, *, own_server: bool = False) -> ConesRun:
    """`cones run customize` on the session's Prefect server, or (own_server) on a temporary one of its own."""
    path.write_text(json.dumps(config))
    env = cones_env(home)
    if own_server:
        env.pop("PREFECT_API_URL", None)
    return ConesRun(["run", "customize", "--config", str(path), "--json"], env)


@dataclass
class World:
    root: Path
    model_dir: Path
    home: Path
    snapshots: dict[str, Path]  # step → the catalog as it stood when that step began
    tasks: dict[str, int]  # step → its tasks in the first run
    task_s: dict[str, float]  # step → seconds between two of its commits in the first run
    grid_ids: set[str]
    images: int  # accepted reference images, all subjects
    space: NeuronSpace  # the model's, from its weights


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir, prefect_api) -> World:
    """One complete run, paused (SIGSTOP) at the start of each step to copy its catalog."""
    root = tmp_path_factory.mktemp("crash-world")
    write_subject_folders(root / "subjects", SUBJECTS, n=3)
    catalog_dir = root / "first"
    run = _start(_config(root, catalog_dir, tiny_model_dir), root / "first.json", root / "prefect-home")
    snapshots, began = {}, {}
    for phase in PHASES:
        run.wait_for(rf"for flow '{phase}'", timeout=600)
        os.kill(run.pid, signal.SIGSTOP)
        try:
            snapshots[phase] = _copy(catalog_dir, root / f"at-{phase}")
        finally:
            os.kill(run.pid, signal.SIGCONT)
        began[phase] = time.monotonic()  # the pause is not the step's time
    assert run.finish(timeout=600) == 0, run.log[-5000:]
    ended = {phase: _arrival(run, r"Flow run '[^']*' - Finished in state", after=began[phase]) for phase in PHASES}
    tasks = {phase: sum(f"Task run '{TASKS[phase]}-" in line and "Finished" in line for _, line in run.lines) for phase in PHASES}
    task_s = {phase: _commit_interval(run, phase, began[phase], ended[phase], tasks[phase]) for phase in PHASES}
    catalog = load_catalog(str(catalog_dir))
    grid_ids = {r["id"] for r in catalog.query("SELECT id FROM generations").to_pylist()}
    assert len(grid_ids) == GRID_SIZE == run.result()["generations"]
    images = catalog.query("SELECT count(*) AS n FROM subject_images").to_pylist()[0]["n"]
    space = NeuronSpace.from_unet(load_diffusion_model(tiny_model_dir).unet)
    return World(root, tiny_model_dir, root / "prefect-home", snapshots, tasks, task_s, grid_ids, images, space)


def _commit_interval(run: ConesRun, phase: str, began: float, ended: float, tasks: int) -> float:
    """Seconds from one of the step's task commits to the next (the whole step's time with one task)."""
    done = [t for t, line in run.lines if began <= t <= ended and f"Task run '{TASKS[phase]}-" in line and "Finished" in line]
    span = (done[-1] - done[0]) / (len(done) - 1) if len(done) > 1 else ended - began
    return max(0.05, span)


def _copy(catalog: Path, to: Path) -> Path:
    if catalog.exists():
        shutil.copytree(catalog, to, ignore=shutil.ignore_patterns("_staging"))
    else:
        to.mkdir()
    return to


def _arrival(run: ConesRun, pattern: str, *, after: float) -> float:
    """When the first line matching `pattern` arrived after `after` (the end of the step begun then)."""
    regex = re.compile(pattern)
    return next(t for t, line in run.lines if t >= after and regex.search(line))


# ------------------------------------------------------------------ what a catalog must hold


@dataclass
class State:
    generations: set[str]
    scored: set[str]  # generations with the judge's scores
    masks: int
    images: int
    doubled: dict[str, int]  # table → rows beyond one per primary key, over every live file


def check_consistent(world: World, catalog_dir: Path) -> State:
    """What must hold after any crash, finished or not: whole rows, nothing dangling, nothing doubled."""
    catalog = load_catalog(str(catalog_dir))
    gens = catalog.query("SELECT id, subjects, image_uri FROM generations").to_pylist()
    ids = [g["id"] for g in gens]
    assert len(ids) == len(set(ids)), "a generation listed twice"
    assert set(ids) <= world.grid_ids, "a generation outside the grid"
    for g in gens:
        with Image.open(io.BytesIO(catalog.get_bytes(g["image_uri"]))) as image:
            image.load()  # decodes the whole PNG
            assert image.size[0] > 0
    masks = catalog.query("SELECT mask_id, subject, model_fingerprint FROM concept_masks").to_pylist()
    models = {m["fingerprint"]: m for m in catalog.query("SELECT fingerprint, neuron_count FROM models").to_pylist()}
    layers = {r["model_fingerprint"]: r["n"] for r in catalog.query(
        "SELECT model_fingerprint, sum(numel) AS n FROM model_layers GROUP BY ALL").to_pylist()}
    for stored in catalog.get_masks([m["mask_id"] for m in masks]):
        mask = ConceptMask.from_bytes(stored.blob, space_fingerprint=stored.model_fingerprint)
        mask.check(world.space)  # found on this model's neuron space (fingerprint and size)
        assert models[stored.model_fingerprint]["neuron_count"] == layers[stored.model_fingerprint] == world.space.size
        assert mask.size == stored.universe and mask.count == stored.neuron_count
        assert mask.count == 0 or (mask.indices.min() >= 0 and mask.indices.max() < mask.size)
    dangling = catalog.query(
        "SELECT count(*) AS n FROM clip_scores s WHERE NOT EXISTS (SELECT 1 FROM generations g WHERE g.id = s.generation)"
    ).to_pylist()[0]["n"]
    assert dangling == 0, f"{dangling} score rows point to no generation"
    per_gen = catalog.query(
        "SELECT g.id, len(g.subjects) AS k, count(s.generation) AS n FROM generations g JOIN clip_scores s "
        "ON s.generation = g.id AND s.scorer = ? GROUP BY ALL", [SCORER]
    ).to_pylist()
    # the judge writes one presence score per subject and one all_present score per generation
    assert all(r["n"] == r["k"] + 1 for r in per_gen), "a generation with a partial set of scores"
    images = catalog.query("SELECT count(*) AS n FROM subject_images").to_pylist()[0]["n"]
    return State(set(ids), {r["id"] for r in per_gen}, len(masks), images, _doubled(catalog))


def _doubled(catalog) -> dict[str, int]:
    """Rows beyond one per primary key in the live Parquet files (what a reader would see without dedup)."""
    out = {}
    for table in ("subject_images", "concept_masks", "generations", "clip_scores"):
        files = catalog.store.snapshot(table).all
        if not files:
            continue
        keys = collections.Counter()
        for path in files:
            part = pq.read_table(path, columns=list(PRIMARY_KEYS[table]))
            keys.update(zip(*(part.column(c).to_pylist() for c in PRIMARY_KEYS[table])))
        out[table] = sum(n - 1 for n in keys.values())
    return out


def check_complete(world: World, state: State) -> None:
    assert state.generations == world.grid_ids, f"lost {len(world.grid_ids - state.generations)} generations"
    assert state.scored == world.grid_ids, f"{len(world.grid_ids - state.scored)} generations without scores"
    assert state.masks == len(SUBJECTS) and state.images == world.images
    assert not any(state.doubled.values()), state.doubled


# ------------------------------------------------------------------ the trials


@dataclass
class Trial:
    target: str
    killed_in: str  # the step it was in when killed ("finished" if it beat the kill)
    tasks_done: int  # tasks of the target step finished when the kill was aimed
    delay_s: float  # then this long
    after_kill: State
    skipped: dict[str, tuple[int, int]] = field(default_factory=dict)
    new_generations: int = 0
    lost: int = 0
    doubled: int = 0


def _tasks_left(world: World, state: State, phase: str) -> int:
    """At least how many tasks `phase` still has on a catalog in `state` (a kill may have landed a step late)."""
    if phase == "ingest-subjects":
        return world.tasks[phase] if state.images == 0 else 0
    if phase == "discover-concepts":
        return len(SUBJECTS) - state.masks
    made = state.generations if phase == "generate-combinations" else state.scored
    return -(-(GRID_SIZE - len(made)) // 2)  # both steps take batches of 2 grid items


def _kill_in(world: World, run: ConesRun, target: str, rng: random.Random, tasks: int) -> tuple[int, float, str]:
    """SIGKILL `run` at a random moment of step `target` (as run_trial aims it); (its tasks done, the delay after
    them, the step it was in: "finished" if it beat the kill)."""
    run.wait_for(rf"for flow '{target}'", timeout=600)
    done = rng.randrange(1, tasks) if tasks > 1 else 0
    finished_task = re.compile(rf"Task run '{TASKS[target]}-\w+' - Finished")
    for _ in range(done):
        run.wait_for(finished_task, timeout=600)
    delay = rng.uniform(0.0, world.task_s[target])
    time.sleep(delay)
    if run.proc.poll() is not None:
        return done, delay, "finished"
    run.kill()
    _reclaim_gpu_slot()
    began = run.phases()
    return done, delay, began[-1] if began else "before ingest"


def _skipped(log: str) -> dict[str, tuple[int, int]]:
    """What a run's log says each step it finished found already done: step → (done, of)."""
    return {phase: (int(m.group(1)), int(m.group(2))) for phase, pattern in SKIPPED.items() if (m := pattern.search(log))}


def _had(world: World, state: State, phase: str) -> tuple[int, int]:
    """What a run starting on a catalog in `state` must say `phase` skipped."""
    return {
        "ingest-subjects": (state.images, world.images),
        "discover-concepts": (state.masks, len(SUBJECTS)),
        "generate-combinations": (len(state.generations), GRID_SIZE),
        "score-generations": (len(state.scored), GRID_SIZE),
    }[phase]


def run_trial(world: World, target: str, rng: random.Random, n: int) -> Trial:
    trial_dir = world.root / f"trial-{n}-{target}"
    trial_dir.mkdir()
    catalog = _copy(world.snapshots[target], trial_dir / "catalog") if target != PHASES[0] else trial_dir / "catalog"
    config = _config(world.root, catalog, world.model_dir)
    killed = _start(config, trial_dir / "run.json", world.home)
    # A random moment of the step: after a random number of its tasks (each one commit) finished, a
    # random part of one task's time later (the first run's timing: a guide, not a promise). At least one
    # commit first where the step has several, so the kill can leave it half done.
    done, delay, killed_in = _kill_in(world, killed, target, rng, world.tasks[target])
    after_kill = check_consistent(world, catalog)

    final, skipped, new_generations = _rerun_to_completion(world, catalog, config, trial_dir / "run.json", after_kill)
    return Trial(target, killed_in, done, delay, after_kill, skipped, new_generations,
                 lost=len(world.grid_ids - final.generations), doubled=sum(final.doubled.values()))


def _rerun_to_completion(world, catalog, config, run_json, left):
    """Rerun the killed run to the end; the catalog ends consistent and complete, and the rerun skipped exactly what
    the kill had `left`, step by step, and said so in its log. Returns the final state, the skips and the new
    generations."""
    rerun = _start(config, run_json, world.home)
    assert rerun.finish(timeout=600) == 0, rerun.log[-5000:]
    final = check_consistent(world, catalog)
    check_complete(world, final)
    skipped = _skipped(rerun.log)
    assert skipped == {phase: _had(world, left, phase) for phase in PHASES}, rerun.log[-3000:]
    new_generations = rerun.result()["new_generations"]
    assert new_generations == GRID_SIZE - len(left.generations)
    return final, skipped, new_generations


def _reclaim_gpu_slot() -> None:
    """Free the `gpu` slot a killed run held, as the Prefect server does once its lease runs out
    (flows._runtime.GPU_LEASE_S; test_a_killed_runs_gpu_slot_comes_back_when_its_lease_runs_out).
    prefect_api's temporary server runs no repossessor, so the test does it, at once. Trials run
    one at a time: no other run holds a slot."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    from flows._runtime import GPU_LIMIT

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):  # killed before it existed
        client.update_global_concurrency_limit(GPU_LIMIT, GlobalConcurrencyLimitUpdate(active_slots=0))


def crash_trials(world: World, per_phase: int, *, seed: int, half_done: tuple[str, ...]) -> list[Trial]:
    """Kill `per_phase` runs in each step; every step of `half_done` must have been left half done at least once
    (some of its commits stored, not all), so the reruns above were checked on partial steps, not only on kills
    between steps."""
    rng = random.Random(seed)
    trials = [run_trial(world, phase, rng, i * len(PHASES) + k) for i in range(per_phase) for k, phase in enumerate(PHASES)]
    print("\n" + summary(world, trials))
    # Most kills land inside the step they aim at; a kill that lands early in the next step (the
    # first run's timing is a guide, not a promise) is still a crash, checked the same way.
    landed = collections.Counter(t.killed_in for t in trials)
    assert all(landed[p] >= 1 for p in PHASES), landed
    partial = collections.Counter(t.killed_in for t in trials if _partial(world, t))
    assert all(partial[p] >= 1 for p in half_done), f"no kill left these steps half done: {partial}, of {landed}"
    return trials


def _partial(world: World, trial: Trial) -> bool:
    """Whether the kill left the step it landed in half done: some of its rows stored, not all."""
    if trial.killed_in not in PHASES:
        return False
    done, whole = _had(world, trial.after_kill, trial.killed_in)
    return 0 < done < whole


def summary(world: World, trials: list[Trial]) -> str:
    landed = collections.Counter(t.killed_in for t in trials)
    partial = collections.Counter(t.killed_in for t in trials if _partial(world, t))
    lines = [
        f"{len(trials)} trials; kills per step (of which left it half done): "
        + ", ".join(f"{p} {landed[p]} ({partial[p]})" for p in (*PHASES, "finished") if landed[p]),
        f"rows lost {sum(t.lost for t in trials)}, doubled {sum(t.doubled for t in trials)}",
        "target | killed in | its tasks done + s | after kill: images, masks, generations, scored | rerun generated",
    ]
    lines += [
        f"{t.target} | {t.killed_in} | {t.tasks_done} + {t.delay_s:.2f} | {t.after_kill.images}, {t.after_kill.masks}, {len(t.after_kill.generations)}, "
        f"{len(t.after_kill.scored)} | {t.new_generations}"
        for t in trials
    ]
    return "\n".join(lines)


# Steps a kill must have left half done. Ingest and discovery run their 2 tasks side by side, so a kill between
# their two commits is a matter of milliseconds; generation and scoring commit 6 times each, scoring's quick
# batches often all before a kill lands (measured with two kills a step: generation 2 of 2, scoring 1 of 2).
SIX_COMMITS = ("generate-combinations", "score-generations")


def test_sigkill_in_each_step_then_rerun(world):
    """One kill in each of the four steps (the slow twin below: five in each, each from its own catalog), as a
    chain on one catalog: each run is the rerun of the run killed before it, and is killed in the next step;
    the last rerun completes the grid. Every kill is checked as in the twin (a consistent catalog), every rerun
    skips exactly what the kill before it left, and the generation kill leaves that step half done. Five
    processes instead of eight, and the model work of about one run instead of two and a half."""
    rng = random.Random(19)
    chain = world.root / "chain"
    chain.mkdir()
    catalog = chain / "catalog"
    config = _config(world.root, catalog, world.model_dir)
    trials: list[Trial] = []
    state = State(set(), set(), 0, 0, {})  # the empty catalog the first run starts on
    for target in PHASES:
        run = _start(config, chain / "run.json", world.home)
        done, delay, killed_in = _kill_in(world, run, target, rng, _tasks_left(world, state, target))
        skipped = _skipped(run.log)
        # The phases this run walked through before its kill: it skipped exactly what the last kill had left.
        walked = PHASES.index(killed_in) if killed_in in PHASES else (0 if killed_in == "before ingest" else len(PHASES))
        assert set(skipped) >= set(PHASES[:walked]), run.log[-3000:]
        for phase, counts in skipped.items():
            assert counts == _had(world, state, phase), (phase, counts, run.log[-3000:])
        after_kill = check_consistent(world, catalog)
        trials.append(Trial(target, killed_in, done, delay, after_kill, skipped))
        state = after_kill
    _rerun_to_completion(world, catalog, config, chain / "run.json", state)
    print("\n" + summary(world, trials))
    landed = collections.Counter(t.killed_in for t in trials)
    assert all(landed[p] >= 1 for p in PHASES), landed
    assert any(t.killed_in == "generate-combinations" and _partial(world, t) for t in trials), summary(world, trials)


@pytest.mark.slow
def test_sigkill_in_each_step_then_rerun_20_trials(world):
    trials = crash_trials(world, per_phase=5, seed=1915, half_done=SIX_COMMITS)
    assert len(trials) >= 20


def test_two_overlapping_runs_in_one_process_produce_each_generation_once(world):
    """The fast twin of the test below: the same two grids, run at once as two flow runs in this process (on the
    session's server) from the catalog as it stood when generation began, so they overlap in generation and
    scoring without two process and server starts and a second discovery."""
    from concurrent.futures import ThreadPoolExecutor

    from cones_tasks.config import CustomizeConfig
    from flows.customize import customize

    catalog = _copy(world.snapshots["generate-combinations"], world.root / "overlap-in-process" / "catalog")
    configs = [CustomizeConfig.model_validate(_config(world.root, catalog, world.model_dir, **grid)) for grid in ({"max_k": 1}, {})]
    with ThreadPoolExecutor(max_workers=2) as pool:
        small, full = pool.map(customize, configs)
    state = check_consistent(world, catalog)
    check_complete(world, state)
    assert small["generations"] == 8 and full["generations"] == GRID_SIZE
    assert small["new_generations"] + full["new_generations"] >= GRID_SIZE  # between them, every item was made


@pytest.mark.slow  # two `cones run` processes, each with a Prefect server of its own; the fast twin is above
def test_two_overlapping_runs_at_once_produce_each_generation_once(world):
    """A 1-subject grid and the full grid, started together on one empty catalog, as two users would:
    each run with a Prefect server of its own, so nothing serialises their model work."""
    catalog = world.root / "overlap" / "catalog"
    catalog.parent.mkdir()
    small = _start(_config(world.root, catalog, world.model_dir, max_k=1), catalog.parent / "small.json", world.home,
                   own_server=True)
    full = _start(_config(world.root, catalog, world.model_dir), catalog.parent / "full.json", world.home, own_server=True)
    assert small.finish() == 0, small.log[-5000:]
    assert full.finish() == 0, full.log[-5000:]
    print(f"\nnew generations: {small.result()['new_generations']} + {full.result()['new_generations']}; "
          f"doubled rows: {_doubled(load_catalog(str(catalog)))}")
    state = check_consistent(world, catalog)
    check_complete(world, state)
    assert small.result()["generations"] == 8 and full.result()["generations"] == GRID_SIZE


@pytest.mark.slow
def test_a_killed_runs_gpu_slot_comes_back_when_its_lease_runs_out(world, prefect_server):
    """On a full `prefect server start`, a run SIGKILLed while it holds the `gpu` slot blocks other
    runs only until its lease runs out and the server's repossessor (every 15 s) takes it back."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows._runtime import GPU_LEASE_S, GPU_LIMIT

    api = prefect_server["PREFECT_API_URL"]
    catalog = _copy(world.snapshots["discover-concepts"], world.root / "lease" / "catalog")
    config = _config(world.root, catalog, world.model_dir)
    env = cones_env(world.root / "lease" / "prefect-home", PREFECT_API_URL=api)
    (world.root / "lease" / "run.json").write_text(json.dumps(config))
    args = ["run", "customize", "--config", str(world.root / "lease" / "run.json"), "--json"]

    def active_slots() -> int:
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            try:
                return client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots
            except Exception:  # noqa: BLE001 — not created yet
                return 0

    killed = ConesRun(args, env)
    killed.wait_for(r"for flow 'discover-concepts'", timeout=600)
    deadline = time.monotonic() + 300
    while active_slots() == 0:  # discovery holds the slot while it trains
        assert time.monotonic() < deadline and killed.proc.poll() is None, killed.log[-3000:]
        time.sleep(0.2)
    killed.kill()
    held_since = time.monotonic()
    while active_slots() > 0:
        assert time.monotonic() - held_since < GPU_LEASE_S + 15 + 30, "the killed run's slot was never taken back"
        time.sleep(1)
    print(f"\nslot taken back {time.monotonic() - held_since:.0f} s after the kill (lease {GPU_LEASE_S:.0f} s)")
    rerun = ConesRun(args, env)
    assert rerun.finish() == 0, rerun.log[-5000:]
    check_complete(world, check_consistent(world, catalog))
