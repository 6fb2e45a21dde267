"""pipeline.train.distributed: the device a task uses, and the per-micro-batch agreement of the ranks."""
import math
import os

import pytest
import torch
import torch.distributed as dist

from pipeline.data.stream import to_device
from pipeline.train.distributed import (CudaFacts, agree, cuda_index, cuda_shortfall, local_ranks_from_env,
                                        resolve_device)

CPU_BUILD = CudaFacts("2.13.0+cpu", None, None, 0)


def gpus(n, visible=None):
    """The facts of a CUDA build of torch that sees `n` GPUs."""
    return CudaFacts("2.13.0+cu126", "12.6", visible, n)


@pytest.fixture
def no_accelerator(monkeypatch):
    """DS_ACCELERATOR unset for the test, and restored (whatever resolve_device sets) after it."""
    monkeypatch.setenv("DS_ACCELERATOR", "restored-after-the-test")
    monkeypatch.delenv("DS_ACCELERATOR")


def test_cuda_index_all_gpus_visible_or_one_per_task():
    assert [cuda_index(r, 4) for r in range(4)] == [0, 1, 2, 3]  # every task sees the node's GPUs
    assert [cuda_index(r, 1) for r in range(4)] == [0, 0, 0, 0]  # the cluster binds one GPU per task
    with pytest.raises(RuntimeError, match="sees no GPU"):
        cuda_index(0, 0)
    with pytest.raises(RuntimeError, match="local rank 3 but this task sees 2 GPUs"):
        cuda_index(3, 2)


def test_cuda_with_an_inherited_cpu_accelerator_is_refused(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    with pytest.raises(RuntimeError, match="DS_ACCELERATOR=cpu"):
        resolve_device("cuda", facts=gpus(1))
    assert resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("facts, local_ranks, seen", [
    (CPU_BUILD, 1, "this torch is a CPU-only build (torch 2.13.0+cpu, torch.version.cuda is None)"),
    (gpus(0, visible=""), 1, "CUDA_VISIBLE_DEVICES is set but empty"),
    (gpus(0, visible=" "), 8, "CUDA_VISIBLE_DEVICES is set but empty"),
    (gpus(0), 1, "torch 2.13.0+cu126 (CUDA 12.6) sees no GPU (CUDA_VISIBLE_DEVICES=None"),
    (gpus(4, visible="0,1,2,3"), 8, "4 GPUs are visible for 8 ranks on this node (CUDA_VISIBLE_DEVICES='0,1,2,3')"),
])
def test_a_job_that_asked_for_gpus_refuses_to_start_without_them(no_accelerator, facts, local_ranks, seen):
    """train.device=cuda (set by the launcher for slurm.gpus_per_node > 0) never falls back to the CPU: it
    fails at once in one line naming what the task saw (facts injected: no GPU here)."""
    assert seen in cuda_shortfall(facts, local_ranks)
    with pytest.raises(RuntimeError) as err:
        resolve_device("cuda", local_ranks, facts)
    message = str(err.value)
    assert message.startswith("train.device is cuda (the job asked for GPUs) but ") and seen in message
    assert "\n" not in message and "DS_ACCELERATOR" not in os.environ  # nothing was set for DeepSpeed


@pytest.mark.parametrize("facts, local_ranks", [(gpus(8), 8), (gpus(8), 1), (gpus(1, visible="3"), 8)])
def test_enough_gpus_or_one_bound_per_task_start(no_accelerator, facts, local_ranks):
    assert cuda_shortfall(facts, local_ranks) is None
    assert resolve_device("cuda", local_ranks, facts) == "cuda"


def test_auto_picks_cuda_only_where_a_gpu_is_visible(no_accelerator):
    assert resolve_device("auto", facts=gpus(2)) == "cuda"
    assert "DS_ACCELERATOR" not in os.environ
    assert resolve_device("auto", facts=CPU_BUILD) == "cpu" == os.environ["DS_ACCELERATOR"]
    assert resolve_device("auto", facts=gpus(0, visible="")) == "cpu"


def test_the_trainer_refuses_a_gpu_job_with_too_few_gpus_before_starting_anything(no_accelerator, monkeypatch,
                                                                                 tmp_path):
    """Trainer.setup passes the node's local ranks: 4 ranks on a node whose tasks see 2 GPUs stop there."""
    import pipeline.train.distributed as distributed
    from pipeline.config import load_config
    from pipeline.train.trainer import Trainer
    monkeypatch.setattr(distributed, "cuda_facts", lambda: gpus(2, visible="0,1"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    started = []
    monkeypatch.setattr("pipeline.train.trainer.init_distributed", lambda *a: started.append(a))
    cfg = load_config("smoke", ["train.device=cuda", f"output_dir={tmp_path}"])
    with pytest.raises(RuntimeError, match=r"but 2 GPUs are visible for 4 ranks on this node"):
        Trainer(cfg).setup()
    assert started == [] and not any(tmp_path.iterdir())


@pytest.mark.parametrize("env, ranks", [({"LOCAL_WORLD_SIZE": "8", "SLURM_NTASKS_PER_NODE": "4"}, 8),
                                        ({"SLURM_NTASKS_PER_NODE": "4"}, 4), ({}, 1)])
def test_local_ranks_come_from_torchrun_or_submitit_then_slurm(monkeypatch, env, ranks):
    for key in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert local_ranks_from_env() == ranks


def test_to_device_keeps_a_cpu_batch_as_is():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    assert to_device(x, "cpu") is x


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_agree_reports_nonfinite_loss_and_stop(one_rank_group):
    loss = torch.tensor(2.5, requires_grad=True) * 1.0  # a loss with a graph, as in training
    assert agree(loss, False) == (False, 2.5, False)
    assert agree(torch.tensor(math.inf), False) == (True, 0.0, False)
    assert agree(torch.tensor(math.nan), True) == (True, 0.0, True)


def _agree_on_two_ranks(rank: int, port: int, out: str) -> None:
    """One rank of `test_agree_reaches_every_rank`: three micro-batches, each with one rank's own trouble."""
    import json
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    verdicts = [
        agree(torch.tensor(1.0 + rank), False),                                # all fine
        agree(torch.tensor(math.nan if rank == 1 else 3.0), False),             # rank 1's loss is NaN
        agree(torch.tensor(0.5), stop_asked=rank == 0),                         # rank 0 got the signal
    ]
    dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as f:
        json.dump(verdicts, f)


@pytest.mark.slow
def test_agree_reaches_every_rank(tmp_path):
    """With 2 real ranks (gloo): a non-finite loss on one rank, or a stop request on one rank, is every
    rank's verdict, so all of them skip the step or stop together and their collectives never diverge."""
    import json

    import torch.multiprocessing as mp
    from helpers import free_port
    out = str(tmp_path / "verdict")
    mp.spawn(_agree_on_two_ranks, args=(free_port(), out), nprocs=2, join=True)
    verdicts = [json.loads((tmp_path / f"verdict.{r}").read_text()) for r in (0, 1)]
    assert verdicts[0] == verdicts[1]
    fine, nan, stop = verdicts[0]
    assert fine == [False, 3.0, False]   # loss sum 1 + 2
    assert nan[0] is True and nan[2] is False
    assert stop == [False, 1.0, True]


def _rank0_only_on_two_ranks(rank: int, port: int, out: str) -> None:
    """One rank of `test_a_failure_on_rank_0_alone_fails_every_rank_at_once`."""
    import datetime
    import json
    import time

    from pipeline.train.distributed import PeerFailedError, rank0_only
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    ran = []
    result = rank0_only(rank, "a section that works", lambda: ran.append(rank) or "rank 0's result")
    t0 = time.time()

    def fail():
        time.sleep(1.0)  # the other rank is waiting meanwhile
        raise OSError("disk on fire")
    try:
        rank0_only(rank, "a section that fails", fail)
        error = None
    except (OSError, PeerFailedError) as e:
        error = f"{type(e).__name__}: {e}"
    took = time.time() - t0
    dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"result": result, "ran": ran, "error": error, "took": took}, f)


@pytest.mark.slow
def test_a_failure_on_rank_0_alone_fails_every_rank_at_once(tmp_path):
    """rank0_only (2 real gloo ranks, a 60 s collective timeout): only rank 0 runs the section; when it
    raises, rank 0 re-raises its own error and rank 1 raises a PeerFailedError naming rank 0, its node and
    the error, as soon as rank 0 has failed, not after the timeout."""
    import json

    import torch.multiprocessing as mp
    from helpers import free_port
    from pipeline.train.heartbeat import node_name
    out = str(tmp_path / "verdict")
    mp.spawn(_rank0_only_on_two_ranks, args=(free_port(), out), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"verdict.{r}").read_text()) for r in (0, 1))
    assert (r0["result"], r0["ran"], r1["result"], r1["ran"]) == ("rank 0's result", [0], None, [])
    assert r0["error"] == "OSError: disk on fire"
    assert r1["error"] == (f"PeerFailedError: rank 1 of 2: rank 0 on node {node_name()} failed in a section "
                           "that fails: OSError: disk on fire")
    assert 1.0 <= r1["took"] < 10, r1["took"]  # waited for rank 0's failure, not for the 60 s timeout
