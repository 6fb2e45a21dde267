"""Rank, world size and process-group set-up for DeepSpeed, from SLURM's or torchrun's environment; the
per-micro-batch agreement of the ranks; and the one classifier of collective failures (a lost rank).

torch is imported inside the functions: `dist_env` and `master_port` serve the launcher, which must not pay
for torch before it submits.
"""
from __future__ import annotations

import datetime
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

from pipeline.train.heartbeat import Heartbeat, describe, find_lost, node_name

# A SLURM job's rendezvous port: MASTER_PORT_BASE + job id % MASTER_PORT_SPAN, below Linux's ephemeral
# range (32768+) so that no outgoing connection can hold it; slurm/executors.py exports the same.
MASTER_PORT_BASE, MASTER_PORT_SPAN = 20000, 10000


def master_port(job_id: int) -> int:
    return MASTER_PORT_BASE + job_id % MASTER_PORT_SPAN


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """torchrun / submitit's exported variables first (RANK, ...), then SLURM's own, else a single process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]),
                       env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        job = int(env.get("SLURM_JOB_ID", "0"))
        return DistEnv(int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), int(env["SLURM_NTASKS"]),
                       env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", master_port(job))))
    return DistEnv(0, 0, 1, "127.0.0.1", int(env.get("MASTER_PORT", 29500)))


@dataclass(frozen=True)
class CudaFacts:
    """What a task can see of CUDA, gathered by `cuda_facts` (injected in tests: no GPU is needed)."""
    torch_version: str
    cuda_build: Optional[str]       # torch.version.cuda: None for a CPU-only build of torch
    visible_devices: Optional[str]  # $CUDA_VISIBLE_DEVICES as set (None: not set, every GPU is visible)
    device_count: int               # torch.cuda.device_count()


def cuda_facts() -> CudaFacts:
    """This process's CUDA facts. Does not initialise CUDA (device_count only asks the driver)."""
    import torch  # torch in the functions only: dist_env() and master_port serve the torch-free launcher
    return CudaFacts(torch.__version__, torch.version.cuda, os.environ.get("CUDA_VISIBLE_DEVICES"),
                     torch.cuda.device_count())


def cuda_shortfall(facts: CudaFacts, local_ranks: int) -> Optional[str]:
    """Why `local_ranks` ranks on this node cannot each have a GPU, naming what was seen; None if they can.

    Every task either sees all of its node's GPUs (one per local rank) or exactly one (clusters that bind a
    GPU to each task): fewer than the local ranks, but more than one, would give NCCL's "Duplicate GPU"
    only when the first collective runs."""
    if facts.cuda_build is None:
        return f"this torch is a CPU-only build (torch {facts.torch_version}, torch.version.cuda is None)"
    if facts.visible_devices is not None and not facts.visible_devices.strip():
        return "CUDA_VISIBLE_DEVICES is set but empty (a --gres/--gpus mistake hides every GPU)"
    if facts.device_count < 1:
        return (f"torch {facts.torch_version} (CUDA {facts.cuda_build}) sees no GPU "
                f"(CUDA_VISIBLE_DEVICES={facts.visible_devices!r}; no driver, or none allocated)")
    if _gpu_of(local_ranks - 1, facts.device_count) is None:  # the highest local rank is the first left out
        return (f"{facts.device_count} GPUs are visible for {local_ranks} ranks on this node "
                f"(CUDA_VISIBLE_DEVICES={facts.visible_devices!r}): one GPU per rank is needed")
    return None


def local_ranks_from_env() -> int:
    """Ranks on this node: LOCAL_WORLD_SIZE (torchrun, and submitit's export), else SLURM's tasks on this node."""
    env = os.environ
    if "LOCAL_WORLD_SIZE" in env:
        return int(env["LOCAL_WORLD_SIZE"])
    if "SLURM_NTASKS_PER_NODE" in env:
        return int(env["SLURM_NTASKS_PER_NODE"])
    return 1


def resolve_device(requested: str, local_ranks: int = 1, facts: Optional[CudaFacts] = None) -> str:
    """The device of this process, and DS_ACCELERATOR set to match before deepspeed is imported.

    'auto' -> cuda when a GPU is visible, else cpu (tools, torchrun). 'cuda' is an expectation: a SLURM job
    with `slurm.gpus_per_node > 0` gets it from the launcher (slurm/config.py job_device), and it refuses
    to start without CUDA, naming what it saw (`cuda_shortfall`), rather than train on the CPU."""
    facts = facts or cuda_facts()
    device = requested
    if requested == "auto":
        device = "cuda" if facts.cuda_build is not None and facts.device_count > 0 else "cpu"
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        return device
    problem = cuda_shortfall(facts, local_ranks)
    if problem:
        raise RuntimeError(f"train.device is cuda (the job asked for GPUs) but {problem}; refusing to train "
                           "on the CPU")
    if os.environ.get("DS_ACCELERATOR", "cuda") != "cuda":
        # e.g. inherited from a CPU run in the shell that submitted the job: DeepSpeed would put its
        # buffers on the CPU while the model is on the GPU.
        raise RuntimeError(f"train.device is {device} but DS_ACCELERATOR={os.environ['DS_ACCELERATOR']} is set "
                           "in this environment: unset it (or set it to cuda)")
    return device


def _gpu_of(local_rank: int, visible: int) -> Optional[int]:
    """The one rule of GPU layouts (`cuda_index` and `cuda_shortfall` both ask it): a task that sees
    `visible` >= 1 GPUs uses its local rank where every task sees all of its node's GPUs, 0 where the
    cluster binds one GPU to each task (--gpus-per-task, --gpu-bind); None where it sees more than one but
    not its own (fewer GPUs than local ranks: NCCL's "Duplicate GPU" at the first collective)."""
    if local_rank < visible:
        return local_rank
    return 0 if visible == 1 else None


def cuda_index(local_rank: int, visible: int) -> int:
    """This task's GPU among the ones it sees: its local rank where every task sees all of its node's
    GPUs, 0 where the cluster binds one GPU to each task (--gpus-per-task, --gpu-bind)."""
    if visible < 1:
        raise RuntimeError("train.device is cuda but this task sees no GPU (check CUDA_VISIBLE_DEVICES and the "
                           "job's --gpus-per-node)")
    index = _gpu_of(local_rank, visible)
    if index is not None:
        return index
    raise RuntimeError(f"local rank {local_rank} but this task sees {visible} GPUs: expected all of the node's "
                       "GPUs or exactly one per task")


def _skip_shm_comm_build() -> None:
    # On CPU, DeepSpeed's first init_distributed JIT-compiles the shm all-reduce op (~50 s, and a failed
    # compile kills the run). Training never uses it (it only speeds up inference all-reduce), so skip it.
    import deepspeed.comm.torch  # noqa: F401  (loads the module the next line patches)
    module = sys.modules["deepspeed.comm.torch"]
    if hasattr(module, "build_shm_op"):
        module.build_shm_op = lambda: None


def init_distributed(env: DistEnv, device: str, timeout_s: int) -> None:
    """Start the process group (gloo on CPU, NCCL on GPU) with the configured collective timeout."""
    os.environ.update(RANK=str(env.rank), LOCAL_RANK=str(env.local_rank), WORLD_SIZE=str(env.world_size),
                      MASTER_ADDR=env.master_addr, MASTER_PORT=str(env.master_port))
    import deepspeed  # after resolve_device set DS_ACCELERATOR, which DeepSpeed reads at import
    import torch  # in the functions only: see resolve_device
    if device == "cpu":
        _skip_shm_comm_build()
    else:
        index = cuda_index(env.local_rank, torch.cuda.device_count())
        torch.cuda.set_device(index)
        os.environ["LOCAL_RANK"] = str(index)  # DeepSpeed takes its device from LOCAL_RANK
    deepspeed.init_distributed(dist_backend="gloo" if device == "cpu" else "nccl",
                               timeout=datetime.timedelta(seconds=timeout_s))


def agree(loss, stop_asked: bool) -> Tuple[bool, float, bool]:
    """Every rank's verdict on one micro-batch from one small all-reduce: (non-finite loss on any rank,
    sum of the ranks' losses, stop asked on any rank). All ranks then take the same decision, so their
    collectives never diverge. The flags live on the loss's device (NCCL reduces CUDA tensors only);
    their one `.tolist()` waits for the forward, not three `.item()` calls."""
    import torch  # in the functions only: see resolve_device
    import torch.distributed as dist  # as torch
    value = loss.detach().to(torch.float64)
    finite = torch.isfinite(value)
    flags = torch.stack([(~finite).to(torch.float64), torch.where(finite, value, 0.0),
                         torch.full((), float(stop_asked), dtype=torch.float64, device=value.device)])
    dist.all_reduce(flags)
    bad, total, stop = flags.tolist()
    return bad > 0, total, stop > 0


class PeerFailedError(RuntimeError):
    """Rank 0 failed in a section only it runs (`rank0_only`); raised on every other rank at the same time."""


# rank0_only's verdict: one flag byte, then rank 0's message (UTF-8, cut to fit), in one fixed-size broadcast.
_VERDICT_BYTES = 1024


def rank0_only(rank: int, what: str, fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 alone and let every rank leave together: its result on rank 0, None elsewhere.

    Without this, an exception on rank 0 (e.g. a failed universal conversion, pipeline/train/checkpoint.py)
    leaves the other ranks in the next collective until train.collective_timeout_s. Rank 0 broadcasts
    whether `fn` succeeded, with its error, and on failure every rank raises at once: rank 0 its own error,
    the others a PeerFailedError naming rank 0, its node and the error (their heartbeats say it too). The
    broadcast waits for `fn` under the collective timeout, so `fn` must finish within it."""
    import torch  # in the functions only: see resolve_device
    import torch.distributed as dist  # as torch
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    error: Optional[BaseException] = None
    result = None
    if rank == 0:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 (reported to every rank, then re-raised below)
            error = e
    if world_size > 1:
        verdict = torch.zeros(_VERDICT_BYTES, dtype=torch.uint8)
        if error is not None:
            text = (f"rank 0 on node {node_name()} failed in {what}: {type(error).__name__}: "
                    f"{str(error).strip()}").encode()[:_VERDICT_BYTES - 1]
            verdict[0] = 1
            verdict[1:1 + len(text)] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        verdict = verdict.to(device)
        dist.broadcast(verdict, src=0)
        verdict = verdict.cpu()
        if rank != 0 and verdict[0]:
            message = bytes(verdict[1:].tolist()).rstrip(b"\0").decode(errors="replace")
            raise PeerFailedError(f"rank {rank} of {world_size}: {message}")
    if error is not None:
        raise error
    return result


class LostRankError(RuntimeError):
    """A collective operation failed because another rank died or stopped answering."""


# What gloo / NCCL / the c10d store say when a peer is gone or silent (connection reset, closed pipe, the
# collective timeout `train.collective_timeout_s`).
_COLLECTIVE_FAILURE = re.compile(r"gloo|nccl|connection (reset|closed|refused)|broken pipe|timed? ?out|"
                                 r"socket timeout|DistBackendError|DistNetworkError", re.I)


def is_collective_failure(err: BaseException) -> bool:
    """Whether `err` is a failed collective (a peer died or went silent), the one test every caller uses.

    torch's distributed errors are (DistError and its subclasses); gloo and older releases also raise a
    plain RuntimeError whose message says so. The project's own errors subclass RuntimeError and are
    never taken for one, whatever their message says (a shard path may well contain "timeout")."""
    import torch.distributed as dist  # here, not at the top: dist_env() serves the torch-free launcher
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    return type(err) is RuntimeError and bool(_COLLECTIVE_FAILURE.search(str(err)))


def lost_rank_error(err: BaseException, env: DistEnv, timeout_s: int,
                    heartbeat: Optional[Heartbeat] = None) -> Optional[LostRankError]:
    """`err` restated as a LostRankError naming the lost rank(s) and their node(s) from the heartbeats
    (pipeline/train/heartbeat.py; without heartbeats exact for two ranks only: the other one), or None
    when `err` is not a collective failure of a multi-rank run."""
    if env.world_size < 2 or not is_collective_failure(err):
        return None
    others = [r for r in range(env.world_size) if r != env.rank]
    lost = ""
    if heartbeat is not None and heartbeat.started:
        heartbeat.end("peer-lost", f"a collective operation failed: {type(err).__name__}")
        lost = describe(find_lost(heartbeat.path.parent, env.world_size, env.rank, heartbeat.info.launch,
                                  window_s=2.5 * heartbeat.interval_s))
    if not lost:  # no heartbeats (train.heartbeat_s=0, or lost before they started)
        lost = (f"lost rank {others[0]}" if len(others) == 1 else
                f"lost one of ranks {others} (the launcher's report names which: torchrun's 'Root Cause', "
                f"SLURM's task exit)")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return LostRankError(f"rank {env.rank} of {env.world_size}: a collective operation failed: {lost} "
                         f"(a peer that dies breaks the connection at once; a silent one fails it after "
                         f"train.collective_timeout_s={timeout_s} s): {type(err).__name__}: {first[:500]}; resume "
                         f"from the last checkpoint by starting the job again")
