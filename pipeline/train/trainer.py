"""Training: what every rank of every job runs, top to bottom.

    python -m pipeline.train --exp smoke [dotted.key=value ...]      # under torchrun, or one process

`slurm/submit.py` parses the same arguments (`get_args_parser`) and calls `train(cfg)` inside each
SLURM task. A run resumes by itself from `<run_dir>/checkpoints/latest` (dino style: resume is one call).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import signal
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist

from pipeline.train import checkpoint as ckpt
from pipeline.config import ExperimentConfig, to_yaml, validate
from pipeline.data.stream import TrainStream, to_device, train_loader
from pipeline.data.shards import load_shard_set
from pipeline.train.distributed import agree, dist_env, init_distributed, resolve_device
from pipeline.train.ds_config import deepspeed_config, gradient_accumulation
from pipeline.train.evaluate import evaluate_bits_per_dim
from pipeline.fsutil import atomic_write_text
from pipeline.train.heartbeat import Heartbeat, describe, find_lost
from pipeline.tracking.figures import save_grid
from pipeline.tracking.tracker import Tracker, git_commit

log = logging.getLogger("pipeline.train")


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses; a final checkpoint was written."""


class StopRequested(Exception):
    """A signal (SLURM time-out or preemption) asked the run to stop; a checkpoint was written."""


class StopFlag:
    """Set by SIGUSR2/SIGTERM; the loop sees it at the next step boundary, on every rank at once."""

    def __init__(self):
        self.signum: Optional[int] = None
        self.previous: Dict[int, Any] = {}

    def install(self) -> "StopFlag":
        for s in (signal.SIGUSR2, signal.SIGTERM):
            self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        log.warning("received signal %d: will checkpoint at the next step boundary", signum)
        self.signum = signum


def _memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    import psutil
    return psutil.Process().memory_info().rss / 2 ** 20


def _truncate_metrics(path: Path, step: int) -> None:
    """A resumed run recomputes the steps after its checkpoint: drop their earlier records."""
    if path.exists():
        keep = [l for l in path.read_text().splitlines() if l and json.loads(l)["step"] <= step]
        atomic_write_text(path, "".join(l + "\n" for l in keep))


class LostRankError(RuntimeError):
    """A collective operation failed because another rank died or stopped answering."""


# What gloo / NCCL / the c10d store say when a peer is gone or silent (connection reset, closed pipe,
# the collective timeout `train.dist_timeout_s`); our own errors are never taken for one.
_COLLECTIVE_FAILURE = re.compile(r"gloo|nccl|connection (reset|closed|refused)|broken pipe|timed? ?out|"
                                 r"socket timeout|DistBackendError|DistNetworkError", re.I)


def _is_collective_failure(err: BaseException) -> bool:
    from pipeline.train.checkpoint import CheckpointError
    from pipeline.data.shards import ShardError
    if isinstance(err, (ShardError, CheckpointError, NonFiniteLossError, LostRankError)):
        return False
    return isinstance(err, getattr(dist, "DistError", ())) or bool(_COLLECTIVE_FAILURE.search(str(err)))


def _lost_rank_error(err: BaseException, env, timeout_s: int,
                     heartbeat: Optional[Heartbeat] = None) -> Optional[LostRankError]:
    """The same failure, naming the lost rank(s) and their node(s) from the heartbeats (pipeline/train/heartbeat.py);
    without heartbeats, exact for two ranks only (the other one)."""
    if env.world_size < 2 or not _is_collective_failure(err):
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
                         f"train.dist_timeout_s={timeout_s} s): {type(err).__name__}: {first[:500]}; resume "
                         f"from the last checkpoint by starting the job again")


def train(cfg: ExperimentConfig, stop: Optional[StopFlag] = None) -> Dict[str, Any]:
    """Run (or resume) the experiment on this rank. Returns the final summary (same on every rank).
    A rank lost mid-run fails the others within train.dist_timeout_s (plus a few heartbeats) with a
    LostRankError naming the lost rank(s) and node(s)."""
    env = dist_env()
    heartbeat = Heartbeat(cfg.run_dir / "ranks", env.rank, cfg.train.heartbeat_s)
    try:
        summary = _train(cfg, stop, heartbeat)
    except StopRequested:
        heartbeat.end("stopped")
        raise
    except RuntimeError as e:
        lost = _lost_rank_error(e, env, cfg.train.dist_timeout_s, heartbeat)
        if lost is None:
            heartbeat.end("failed", f"{type(e).__name__}: {str(e).strip()[:300]}")
            raise
        log.error("%s", lost)
        raise lost from e
    except BaseException as e:
        heartbeat.end("failed", f"{type(e).__name__}: {str(e).strip()[:300]}")
        raise
    heartbeat.end("done")
    return summary


def _train(cfg: ExperimentConfig, stop: Optional[StopFlag], heartbeat: Heartbeat) -> Dict[str, Any]:
    env = dist_env()
    # One progress log per job: rank 0 says INFO, the others only warnings and errors.
    logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s", force=True)
    device = resolve_device(cfg.train.device)
    validate(cfg, world_size=env.world_size)
    init_distributed(env, device, cfg.train.dist_timeout_s)
    stop = stop or StopFlag().install()
    run_dir = cfg.run_dir
    ckpt_dir = run_dir / "checkpoints"
    from pipeline.train.engine import initialize, loss_scale, model_config

    # Data first: a bad shard folder fails before anything heavy starts.
    size = cfg.model.image_size
    train_set = load_shard_set(cfg.data.root, size, cfg.data.train_split)
    val_set = load_shard_set(cfg.data.root, size, cfg.data.val_split)
    stream = TrainStream(train_set, cfg.train.micro_batch_size, cfg.train.seed, env.rank, env.world_size,
                         cfg.data.num_workers, cfg.data.shuffle_buffer, cfg.data.on_corrupt)
    if env.world_size > 1 and cfg.train.heartbeat_s > 0:  # one rank has no peer to lose
        heartbeat.start()
        log.info("rank %d of %d on node %s (pid %d); rendezvous %s:%d", env.rank, env.world_size,
                 heartbeat.info.node, heartbeat.info.pid, env.master_addr, env.master_port)

    # Resume is one call's worth of decisions: which checkpoint, and whether the world size changed.
    mcfg = model_config(cfg)
    tag = ckpt.latest_tag(ckpt_dir) if cfg.checkpoint.resume else None
    saved = ckpt.read_meta(ckpt_dir, tag) if tag else {}
    if tag:
        ckpt.check_compatible(saved, mcfg, ckpt_dir / tag)
    elastic = bool(tag) and saved["world_size"] != env.world_size
    if elastic:
        tag = ckpt.universal_tag(ckpt_dir, tag, env.rank)
    ds_cfg = deepspeed_config(cfg, env.world_size, load_universal=elastic)
    engine, model = initialize(cfg, ds_cfg)
    step, consumed, nonfinite_total, prior_hours, client = 0, 0, 0, 0.0, {}
    if tag:
        client = ckpt.load(engine, ckpt_dir, tag, env.rank)
        step, consumed = int(client["step"]), int(client["consumed_batches"])
        if elastic:  # same number of samples seen, counted in batches of the new world size
            consumed = consumed * saved["world_size"] // env.world_size
        prior_hours = float(client.get("device_hours", 0.0))
        nonfinite_total = int(client.get("nonfinite_total", 0))
        log.info("resumed from %s at step %d (data position %d%s)", ckpt_dir / tag, step, consumed,
                 f", world size {saved['world_size']} -> {env.world_size}" if elastic else "")
        if step >= cfg.train.max_steps:
            log.warning("run %s is already complete at step %d (train.max_steps=%d): nothing to train, only "
                        "evaluating its last checkpoint again; for a fresh run set another output_dir, to "
                        "train further raise train.max_steps", cfg.name, step, cfg.train.max_steps)

    metrics_file = run_dir / "metrics.jsonl"
    tracker = Tracker(cfg, env.is_main, run_dir)
    if env.is_main:
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
        atomic_write_text(run_dir / "deepspeed.json", json.dumps(ds_cfg, indent=2))
        _truncate_metrics(metrics_file, step)
        tracker.start(cfg, {
            "model": cfg.model.name, "dataset": Path(cfg.data.root).name, "dataset_variant": cfg.data.variant,
            "manifest_sha256": train_set.manifest_sha256, "image_size": str(size),
            "resize": str(train_set.manifest.get("params", {}).get("resize", "unknown")),
            "world_size": str(env.world_size), "git_commit": git_commit(), "device": device,
        }, ds_cfg)

    accum = gradient_accumulation(cfg, env.world_size)
    meta = {"model": mcfg, "world_size": env.world_size, "zero_stage": cfg.train.zero_stage,
            "optimizer": cfg.optim.name, "precision": cfg.train.precision}

    def device_hours() -> float:
        """Accelerator-hours (CPU rank-hours here) spent so far, across resumes: the report's x-axis."""
        return prior_hours + (time.time() - t_start) / 3600 * env.world_size

    def save() -> str:
        client = {"step": step, "consumed_batches": consumed, "nonfinite_total": nonfinite_total,
                  "device_hours": device_hours()}
        return ckpt.save(engine, ckpt_dir, step, client, meta, cfg.checkpoint.keep_last, env.rank)

    def run_eval() -> float:
        engine.eval()
        r = evaluate_bits_per_dim(lambda x: engine(x), val_set, env.rank, env.world_size,
                                  cfg.train.micro_batch_size, device, cfg.train.eval_max_batches)
        if cfg.train.sample_every_eval:
            _sample_grid(engine, model, cfg, env.is_main, run_dir / "samples" / f"step{step:08d}.png", tracker)
        engine.train()
        tracker.metrics({"val_bits_per_dim": r["bits_per_dim"]}, step)
        log.info("step %d: val %.4f bits/dim over %d images", step, r["bits_per_dim"], r["samples"])
        return r["bits_per_dim"]

    try:
        batches = train_loader(stream, start=consumed)
        engine.train()
        val_bpd = math.nan
        consecutive_bad = 0
        t_start, step0 = time.time(), step
        train_s, imgs_last = 0.0, 0  # time spent in training steps since the last log line (not eval/saves)
        while step < cfg.train.max_steps:
            t0 = time.time()
            done = 0
            loss_sum = 0.0
            while done < accum:
                x = to_device(next(batches), device)
                consumed += 1
                bpd = engine(x).mean()
                # One small all-reduce: every rank takes the same decision, so collectives never diverge.
                bad, loss_total, stop_asked = agree(bpd, stop.signum is not None)
                if bad:
                    nonfinite_total += 1
                    consecutive_bad += 1
                    log.warning("non-finite loss at step %d: micro-batch skipped (%d in a row)", step, consecutive_bad)
                    if consecutive_bad >= cfg.train.max_nonfinite_steps:
                        save()
                        tracker.finish({"error": "non-finite loss", "step": step}, status="FAILED")
                        raise NonFiniteLossError(
                            f"{consecutive_bad} consecutive non-finite losses at step {step} "
                            f"(train.max_nonfinite_steps={cfg.train.max_nonfinite_steps}); checkpoint saved")
                    continue
                consecutive_bad = 0
                engine.backward(bpd)
                engine.step()
                loss_sum += loss_total / env.world_size
                done += 1
            step += 1
            heartbeat.set_step(step)
            train_bpd = loss_sum / accum
            imgs_last += cfg.train.global_batch_size
            step_s = time.time() - t0
            train_s += step_s
            if env.is_main:
                with open(metrics_file, "a") as f:
                    f.write(json.dumps({"step": step, "train_bits_per_dim": train_bpd, "hex": train_bpd.hex()}) + "\n")
            if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
                rate = imgs_last / train_s
                eta = (cfg.train.max_steps - step) * (time.time() - t_start) / max(1, step - step0)
                lr = engine.get_lr()[0]
                values = {"train_bits_per_dim": train_bpd, "lr": lr, "images_per_s": rate,
                          "device_hours": device_hours(),
                          "step_time_s": step_s, "memory_mb": _memory_mb(device),
                          "nonfinite_steps": nonfinite_total}
                scale = loss_scale(engine)
                if scale is not None:  # fp16 only
                    values["loss_scale"] = scale
                    values["overflow_skipped_steps"] = int(getattr(engine, "skipped_steps", 0) or 0)
                tracker.metrics(values, step)
                log.info("step %d/%d  train %.4f bits/dim  lr %.2e  %.1f images/s  ETA %.0f s",
                         step, cfg.train.max_steps, train_bpd, lr, rate, eta)
                train_s, imgs_last = 0.0, 0
            if step % cfg.train.eval_every == 0 and step < cfg.train.max_steps:
                val_bpd = run_eval()
            if step % cfg.checkpoint.every == 0 and step < cfg.train.max_steps:
                save()
            if stop_asked:
                save()
                tracker.suspend()
                raise StopRequested(f"stopped by signal at step {step}; checkpoint {ckpt_dir / ckpt.latest_tag(ckpt_dir)}")

        val_bpd = run_eval()
        baselines = {}
        if cfg.tracking.codec_baselines:  # PNG / WebP file sizes of the same validation images
            from pipeline.tracking.baselines import codec_baselines
            baselines = codec_baselines(cfg.data.root, size, cfg.data.val_split, env.is_main, env.world_size)
            tracker.metrics(baselines, step)
            log.info("validation split as files: %s", ", ".join(f"{k} {v:.4f}" for k, v in baselines.items()))
        if tag is None or step > int(client["step"]):  # a resume with nothing left to train keeps its checkpoint
            tag = save()
        tag = tag.removesuffix(ckpt.UNIVERSAL)
        summary = {"val_bits_per_dim": val_bpd, "steps": step, "checkpoint": str(ckpt_dir / tag),
                   "run_dir": str(run_dir), "mlflow_run_id": tracker.run_id, "world_size": env.world_size,
                   "nonfinite_steps": nonfinite_total, **baselines}
        if env.is_main:
            atomic_write_text(run_dir / "final_metrics.json", json.dumps(summary, indent=2))
        tracker.finish(summary)
        return summary
    except (StopRequested, NonFiniteLossError):
        raise  # their MLflow status is already set (suspended for a requeue, or failed with a reason)
    except BaseException as e:
        tracker.finish({"error": f"{type(e).__name__}: {e}", "step": step}, status="FAILED")
        raise


def _sample_grid(engine, model, cfg: ExperimentConfig, is_main: bool, path: Path, tracker: Tracker) -> None:
    """A grid of samples from the current weights (under ZeRO-3 every rank gathers the parameters)."""
    import deepspeed
    n = cfg.train.sample_every_eval
    ctx = (deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
           if cfg.train.zero_stage == 3 else contextlib.nullcontext())
    with ctx, torch.no_grad():
        if is_main:
            g = torch.Generator().manual_seed(cfg.train.seed)
            images = model.sample(n, generator=g)
            save_grid(images, path)
            tracker.artifact(path, "samples")
    dist.barrier()
