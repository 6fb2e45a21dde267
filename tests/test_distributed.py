"""pipeline.train.distributed: the device a task uses, and the per-micro-batch agreement of the ranks."""
import math

import pytest
import torch
import torch.distributed as dist

from pipeline.data.stream import to_device
from pipeline.train.distributed import agree, cuda_index, resolve_device


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
        resolve_device("cuda")
    assert resolve_device("cpu") == "cpu"


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
