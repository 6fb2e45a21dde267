"""Shared, expensive fault runs (2-rank DeepSpeed launches cost 15-25 s each on 2 cores): one
uninterrupted reference run and one run that is killed four times in four different ways, then finished.
The tests in test_kill_training.py only read what these fixtures recorded."""
from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
from helpers import (CHAIN, CHAIN_STEPS, DIST_TIMEOUT_S, LAUNCH_TIMEOUT, SEED, CheckpointObserver, Launch, metrics,
                     process_groups, watch)


def _latest_step(run):
    p = Path(run) / "checkpoints" / "latest"
    return int(p.read_text()[4:]) if p.exists() else 0


@pytest.fixture(scope="session")
def kill_chain(smoke_data, tmp_path_factory):
    """Run `ref` uninterrupted; run `run` is SIGKILLed at seeded random moments: (1) everything at a
    random step, (2) everything while a checkpoint folder exists without meta.json (mid-write),
    (3) rank 1 alone in a launch without an agent (as srun starts tasks), (4) rank 1 alone under
    torchrun; each time resumed by starting it again; (5) the last launch finishes."""
    base = tmp_path_factory.mktemp("kill_chain")
    ref, run = base / "ref", base / "run"
    rng = random.Random(SEED)
    r = Launch(ref, smoke_data, CHAIN)
    assert r.wait(LAUNCH_TIMEOUT) == [0], r.output()[-3000:]

    obs = CheckpointObserver(run)
    rounds = []

    def reached(target):
        return lambda: len(metrics(run)) >= target

    # (1) SIGKILL everything at a random step, a random fraction of a step later.
    target = rng.randint(3, 7)
    ln = Launch(run, smoke_data, CHAIN)
    assert watch(ln, obs, reached(target), LAUNCH_TIMEOUT), ln.output()[-3000:]
    end = time.time() + rng.uniform(0, 0.1)
    while time.time() < end:
        obs.look()
    ln.kill_all()
    ln.wait(30)
    rounds.append({"fault": "sigkill-all", "steps_recorded": len(metrics(run)), "latest": _latest_step(run)})

    # (2) SIGKILL everything while a checkpoint is being written: when a step folder without meta.json
    # shows up, freeze every process (SIGSTOP) and look again; if meta.json is still missing the kill
    # lands mid-write for certain, else let it run on (SIGCONT) to the next save.
    ln = Launch(run, smoke_data, CHAIN)
    caught = []
    start_steps = len(metrics(run))
    # torchrun and both ranks (each in a session of its own) are up: look their process groups up now,
    # not in the race below.
    assert watch(ln, obs, lambda: len(process_groups(ln.procs[0].pid)) >= 3, LAUNCH_TIMEOUT), ln.output()[-3000:]
    ln.freeze(False)

    def mid_write():
        steps = len(metrics(run))
        # Before the resume old leftovers don't count; late saves are not taken, so that the rounds
        # below still have steps left to be killed in.
        if steps <= start_steps or steps >= CHAIN_STEPS - 8 or not obs.look():
            return False
        ln.freeze(True)
        partial = [t for t in obs.look() if not (run / "checkpoints" / t / "meta.json").exists()]
        if partial:
            caught[:] = partial
            return True
        ln.freeze(False)
        return False

    hit = watch(ln, obs, mid_write, LAUNCH_TIMEOUT, poll=0)
    if hit:
        ln.kill_all()
    ln.wait(30)
    partial = [t for t in caught if not (run / "checkpoints" / t / "meta.json").exists()]
    rounds.append({"fault": "sigkill-all-mid-checkpoint", "hit": hit, "partial_after_kill": partial,
                   "latest": _latest_step(run), "steps_recorded": len(metrics(run))})
    assert hit, "the run ended before a checkpoint could be caught mid-write"

    # (3), (4) SIGKILL rank 1 alone; the survivor must fail by itself, naming the lost rank.
    for mode in ("manual", "torchrun"):
        target = len(metrics(run)) + rng.randint(1, 3)
        ln = Launch(run, smoke_data, CHAIN, mode=mode)
        assert watch(ln, obs, reached(target), LAUNCH_TIMEOUT), ln.output()[-3000:]
        victim = ln.rank_pid(1)
        os.kill(victim, signal.SIGKILL)
        t_kill = time.time()
        while ln.procs[0].poll() is None and time.time() - t_kill < DIST_TIMEOUT_S + 60:
            obs.look()
            time.sleep(0.01)
        elapsed = time.time() - t_kill
        codes = ln.wait(10)
        rounds.append({"fault": f"sigkill-rank1-{mode}", "elapsed_s": elapsed, "codes": codes,
                       "output": ln.output(), "latest": _latest_step(run), "steps_recorded": len(metrics(run))})

    # (5) the last resume runs to the end.
    ln = Launch(run, smoke_data, CHAIN)
    watch(ln, obs, lambda: False, LAUNCH_TIMEOUT, poll=0.01)
    codes = ln.wait(30)
    rounds.append({"fault": "none (final resume)", "codes": codes})
    assert codes == [0], ln.output()[-3000:]
    return {"ref": ref, "run": run, "rounds": rounds, "observer": obs, "log": Path(str(run) + ".log")}
