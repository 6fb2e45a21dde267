"""pipeline.distributed: the device a task uses, and the per-micro-batch agreement of the ranks."""
import math

import pytest
import torch
import torch.distributed as dist

from pipeline.data import to_device
from pipeline.distributed import agree, cuda_index, resolve_device


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
