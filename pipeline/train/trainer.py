"""Training: what every rank of every job runs, top to bottom (`Trainer.fit`).

    python -m pipeline.train --exp smoke [dotted.key=value ...]      # under torchrun, or one process

`slurm/submit.py` parses the same arguments (`get_args_parser`) and calls `train(cfg)` inside each SLURM
task. A run resumes by itself from `<run_dir>/checkpoints/latest` (dino style: resume is one call,
`Trainer.resume`). Where the run stands is one `TrainState`, saved with every checkpoint and restored as
one object; one boundary (`Trainer._ending`) closes the MLflow run and the heartbeat on every way out.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
import torch.distributed as dist

from pipeline.config import ExperimentConfig, to_yaml, validate
from pipeline.data.plan import EvalPlan, plan_line
from pipeline.data.shards import load_shard_set
from pipeline.data.stream import TrainStream, to_device, train_loader
from pipeline.fsutil import atomic_write_text
from pipeline.models.base import nats_per_image
from pipeline.run_dir import RunDir
from pipeline.tracking.baselines import codec_baselines
from pipeline.tracking.figures import save_grid
from pipeline.tracking.tracker import Tracker, git_commit
from pipeline.train import checkpoint as ckpt
from pipeline.train.distributed import (agree, dist_env, init_distributed, local_ranks_from_env, lost_rank_error,
                                        resolve_device)
from pipeline.train.ds_config import deepspeed_config, gradient_accumulation
from pipeline.train.engine import initialize, loss_scale, model_config
from pipeline.train.evaluate import evaluate_bits_per_dim
from pipeline.train.heartbeat import Heartbeat
from pipeline.train.numerics import set_numerics
from shardformat import channels_of, levels_of

log = logging.getLogger("pipeline.train")


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses; a final checkpoint was written."""


def check_data_matches_model(model: Any, manifest: Dict[str, Any], root: str) -> None:
    """Refuse, before DeepSpeed starts, a model whose `channels` or `levels` differ from the shards' (a
    manifest without them holds 3-channel 256-level images), in one line naming both and the fix."""
    data = {"channels": channels_of(manifest), "levels": levels_of(manifest)}  # the format's own defaults
    what = {"channels": "{}-channel images", "levels": "images of {} levels"}
    for key, value in data.items():
        if getattr(model, key) != value:
            raise ValueError(f"model.{key} is {getattr(model, key)} but the shards in {root} hold "
                             f"{what[key].format(value)}: set model.{key}={value}")


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


@dataclass
class TrainState:
    """Where a run stands: saved as a checkpoint's client state, restored from it as one object."""
    step: int = 0                # optimizer steps done
    consumed_batches: int = 0    # micro-batches this rank took from its stream: the data position
    nonfinite_total: int = 0     # micro-batches skipped for a non-finite loss, over the whole run
    device_hours: float = 0.0    # accelerator-hours (CPU rank-hours) spent, across resumes: the report's x-axis

    def state_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_checkpoint(cls, client: Dict[str, Any], saved_world: int, world: int) -> "TrainState":
        """The state a checkpoint holds, for a run of `world` ranks. Elastic resume (another world size):
        the same number of samples seen, counted in batches of the new world size."""
        return cls(step=int(client["step"]),
                   consumed_batches=int(client["consumed_batches"]) * saved_world // world,
                   nonfinite_total=int(client.get("nonfinite_total", 0)),
                   device_hours=float(client.get("device_hours", 0.0)))


def _memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    import psutil  # here: CPU runs only
    return psutil.Process().memory_info().rss / 2 ** 20


class Trainer:
    """One rank's part of a run: `fit()` reads top to bottom; the steps it takes are the methods below it."""

    def __init__(self, cfg: ExperimentConfig, stop: Optional[StopFlag] = None):
        self.cfg, self.env = cfg, dist_env()
        self.run = RunDir(cfg.run_dir)
        self.stop = stop
        self.heartbeat = Heartbeat(self.run.ranks, self.env.rank, cfg.train.heartbeat_s)
        self.tracker: Optional[Tracker] = None
        self.state = TrainState()
        self.resumed: Optional[TrainState] = None   # the state of the checkpoint this launch started from
        self.resumed_tag: Optional[str] = None

    def fit(self) -> Dict[str, Any]:
        """Train (or resume) to train.max_steps, evaluate, checkpoint; the summary (the same on every rank)."""
        t, c = self.cfg.train, self.cfg.checkpoint
        with self._ending():
            self.setup()
            self.resume()
            self.start_tracking()
            batches = train_loader(self.stream, start=self.state.consumed_batches)
            self.engine.train()
            self._start_clock()
            while self.state.step < t.max_steps:
                train_bpd, stop_asked = self.train_step(batches)
                step = self.state.step
                if step % t.log_every == 0 or step == t.max_steps:
                    self.log_progress(train_bpd)
                if step % t.eval_every == 0 and step < t.max_steps:
                    self.evaluate()
                if step % c.every == 0 and step < t.max_steps:
                    self.save()
                if stop_asked:
                    self.save()
                    raise StopRequested(f"stopped by signal at step {step}; checkpoint "
                                        f"{self.run.checkpoints / ckpt.latest_tag(self.run.checkpoints)}")
            return self.finish()

    # ------------------------------------------------------------------------------------ the steps
    def setup(self) -> None:
        """Logging, device, process group, data. Data first of the heavy parts: a bad shard folder fails
        before DeepSpeed starts."""
        cfg, env = self.cfg, self.env
        # One progress log per job: rank 0 says INFO, the others only warnings and errors.
        logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING,
                            format="%(asctime)s %(name)s %(message)s", force=True)
        # train.device=cuda (a job that asked for GPUs) refuses to start without CUDA, naming what it saw.
        self.device = resolve_device(cfg.train.device, local_ranks_from_env())
        log.info("numerics: %s", set_numerics(cfg.train.tf32, cfg.train.deterministic))
        validate(cfg, world_size=env.world_size)
        init_distributed(env, self.device, cfg.train.collective_timeout_s)
        self.stop = self.stop or StopFlag().install()
        size = cfg.model.image_size
        self.dims = cfg.model.channels * size ** 2  # sub-pixels per image: bits/dim <-> nats per image
        self.train_set = load_shard_set(cfg.data.root, size, cfg.data.train_split)
        self.val_set = load_shard_set(cfg.data.root, size, cfg.data.val_split)
        # data.test_splits are read at the end only, but a missing one fails here, before any training
        self.test_sets = {split: load_shard_set(cfg.data.root, size, split) for split in cfg.data.test_splits}
        check_data_matches_model(cfg.model, self.train_set.manifest, cfg.data.root)
        self.stream = TrainStream(self.train_set, cfg.train.micro_batch_size, cfg.train.seed, env.rank,
                                  env.world_size, cfg.data.num_workers, cfg.data.shuffle_buffer,
                                  cfg.data.on_corrupt)
        val_plan = EvalPlan(tuple(n for _, n in self.val_set.shards), env.world_size, cfg.train.micro_batch_size,
                            cfg.train.eval_max_batches)
        log.info("%s", plan_line(self.stream.plan, val_plan, gradient_accumulation(cfg, env.world_size)))
        # The MLflow run (rank 0; continued across resumes) opens before resume(): a failure while resuming
        # (say, rank 0's universal conversion) is then recorded as FAILED, not left unrecorded.
        self.tracker = Tracker(cfg, env.is_main, self.run)
        if env.world_size > 1 and cfg.train.heartbeat_s > 0:  # one rank has no peer to lose
            self.heartbeat.start()
            log.info("rank %d of %d on node %s (pid %d); rendezvous %s:%d", env.rank, env.world_size,
                     self.heartbeat.info.node, self.heartbeat.info.pid, env.master_addr, env.master_port)

    def resume(self) -> None:
        """Build the engine and, where the run has a complete checkpoint, continue from it: the same model,
        optimizer, scheduler, RNG and data position; through DeepSpeed's universal form when the world
        size changed (elastic resume)."""
        cfg, env, ckpt_dir = self.cfg, self.env, self.run.checkpoints
        self.model_config = model_config(cfg)
        tag = ckpt.latest_tag(ckpt_dir) if cfg.checkpoint.resume else None
        saved = ckpt.read_meta(ckpt_dir, tag) if tag else {}
        if tag:
            ckpt.check_compatible(saved, self.model_config, ckpt_dir / tag)
        elastic = bool(tag) and saved["world_size"] != env.world_size
        if elastic:
            tag = ckpt.universal_tag(ckpt_dir, tag, env.rank)
        self.ds_config = deepspeed_config(cfg, env.world_size, load_universal=elastic)
        self.engine, self.model = initialize(cfg, self.ds_config)
        self.accumulation = gradient_accumulation(cfg, env.world_size)
        if not tag:
            return
        client = ckpt.load(self.engine, ckpt_dir, tag, env.rank)
        self.state = TrainState.from_checkpoint(client, saved["world_size"], env.world_size)
        self.resumed, self.resumed_tag = dataclasses.replace(self.state), tag
        log.info("resumed from %s at step %d (data position %d%s)", ckpt_dir / tag, self.state.step,
                 self.state.consumed_batches,
                 f", world size {saved['world_size']} -> {env.world_size}" if elastic else "")
        if self.state.step >= cfg.train.max_steps:
            log.warning("run %s is already complete at step %d (train.max_steps=%d): nothing to train, only "
                        "evaluating its last checkpoint again; for a fresh run set another output_dir, to "
                        "train further raise train.max_steps", cfg.name, self.state.step, cfg.train.max_steps)

    def start_tracking(self) -> None:
        """The MLflow run's tags and params, the effective configs beside the checkpoints, and the per-step
        records cut back to the checkpoint's step (a resume recomputes the steps after it)."""
        cfg, env = self.cfg, self.env
        if not env.is_main:
            return
        atomic_write_text(self.run.config, to_yaml(cfg))
        atomic_write_text(self.run.deepspeed_config, json.dumps(self.ds_config, indent=2))
        if self.run.metrics.exists():
            keep = [line for line in self.run.metrics.read_text().splitlines()
                    if line and json.loads(line)["step"] <= self.state.step]
            atomic_write_text(self.run.metrics, "".join(line + "\n" for line in keep))
        self.tracker.start(cfg, {
            "model": cfg.model.name, "dataset": Path(cfg.data.root).name,
            "dataset_variant": cfg.data.variant, "manifest_sha256": self.train_set.manifest_sha256,
            "image_size": str(cfg.model.image_size),
            "resize": str(self.train_set.manifest.get("params", {}).get("resize", "unknown")),
            "world_size": str(env.world_size), "git_commit": git_commit(), "device": self.device,
        }, self.ds_config)

    def train_step(self, batches: Iterator[torch.Tensor]) -> Tuple[float, bool]:
        """One optimizer step of `accumulation` good micro-batches: (train bits/dim averaged over the ranks,
        whether a stop was asked on any rank). Non-finite micro-batches are skipped and counted; too many
        in a row save a checkpoint and stop the run."""
        t0 = time.time()
        done, loss_sum, consecutive_bad = 0, 0.0, 0
        stop_asked = False
        while done < self.accumulation:
            x = to_device(next(batches), self.device)
            self.state.consumed_batches += 1
            bpd = self.engine(x).mean()
            # One small all-reduce: every rank takes the same decision, so collectives never diverge.
            bad, loss_total, stop_asked = agree(bpd, self.stop.signum is not None)
            if bad:
                self.state.nonfinite_total += 1
                consecutive_bad += 1
                log.warning("non-finite loss at step %d: micro-batch skipped (%d in a row)", self.state.step,
                            consecutive_bad)
                if consecutive_bad >= self.cfg.train.max_nonfinite_steps:
                    self.save()
                    raise NonFiniteLossError(
                        f"{consecutive_bad} consecutive non-finite losses at step {self.state.step} "
                        f"(train.max_nonfinite_steps={self.cfg.train.max_nonfinite_steps}); checkpoint saved")
                continue
            consecutive_bad = 0
            self.engine.backward(bpd)
            self.engine.step()
            loss_sum += loss_total / self.env.world_size
            done += 1
        self.state.step += 1
        self.heartbeat.set_step(self.state.step)
        self._tick(time.time() - t0)
        train_bpd = loss_sum / self.accumulation
        if self.env.is_main:
            with open(self.run.metrics, "a") as f:
                f.write(json.dumps({"step": self.state.step, "train_bits_per_dim": train_bpd,
                                    "hex": train_bpd.hex()}) + "\n")
        return train_bpd, stop_asked

    def log_progress(self, train_bpd: float) -> None:
        """The periodic line and metrics: rate over the training steps since the last line (evaluations and
        checkpoints left out), ETA, learning rate, memory, and fp16's loss scale."""
        t, step = self.cfg.train, self.state.step
        rate = self._images / self._train_s
        eta = (t.max_steps - step) * (time.time() - self._t_start) / max(1, step - self._step0)
        lr = self.engine.get_lr()[0]
        values = {"train_bits_per_dim": train_bpd, "lr": lr, "images_per_s": rate,
                  "device_hours": self.state.device_hours, "step_time_s": self._last_step_s,
                  "memory_mb": _memory_mb(self.device), "nonfinite_steps": self.state.nonfinite_total}
        scale = loss_scale(self.engine)
        if scale is not None:  # fp16 only
            values["loss_scale"] = scale
            values["overflow_skipped_steps"] = int(getattr(self.engine, "skipped_steps", 0) or 0)
        self.tracker.metrics(values, step)
        log.info("step %d/%d  train %.4f bits/dim  lr %.2e  %.1f images/s  ETA %.0f s",
                 step, t.max_steps, train_bpd, lr, rate, eta)
        self._train_s, self._images = 0.0, 0

    def evaluate(self) -> float:
        """Validation bits/dim over the whole split (each image counted once across ranks), and a sample grid."""
        cfg, env = self.cfg, self.env
        self.engine.eval()
        r = evaluate_bits_per_dim(lambda x: self.engine(x), self.val_set, env.rank, env.world_size,
                                  cfg.train.micro_batch_size, self.device, cfg.train.eval_max_batches)
        if cfg.train.sample_every_eval:
            self._sample_grid()
        self.engine.train()
        # Always both units: bits/dim (CIFAR, ImageNet) and nats per image (binarized MNIST, Table 4).
        nats = nats_per_image(r["bits_per_dim"], self.dims)
        self.tracker.metrics({"val_bits_per_dim": r["bits_per_dim"], "val_nats_per_image": nats}, self.state.step)
        log.info("step %d: val %.4f bits/dim (%.2f nats/image) over %d images", self.state.step, r["bits_per_dim"],
                 nats, r["samples"])
        return r["bits_per_dim"]

    def test_splits(self) -> Dict[str, float]:
        """data.test_splits at the end of the run: the model's bits/dim and nats per image of each whole split
        (and its codecs', with tracking.codec_baselines), as `<split>_bits_per_dim`, ...; logged and returned."""
        cfg, env = self.cfg, self.env
        out: Dict[str, float] = {}
        self.engine.eval()
        for split, shards in self.test_sets.items():
            r = evaluate_bits_per_dim(lambda x: self.engine(x), shards, env.rank, env.world_size,
                                      cfg.train.micro_batch_size, self.device, 0)
            got = {f"{split}_bits_per_dim": r["bits_per_dim"],
                   f"{split}_nats_per_image": nats_per_image(r["bits_per_dim"], self.dims)}
            if cfg.tracking.codec_baselines:
                got.update(codec_baselines(cfg.data.root, cfg.model.image_size, split, env.is_main, env.world_size,
                                           prefix=f"{split}_"))
            log.info("%s split (%d images): %s", split, r["samples"], ", ".join(f"{k} {v:.4f}" for k, v in got.items()))
            self.tracker.metrics(got, self.state.step)
            out.update(got)
        self.engine.train()
        return out

    def save(self) -> str:
        """A checkpoint of this step, written by every rank together. Returns its tag."""
        cfg, env = self.cfg, self.env
        meta = {"model": self.model_config, "world_size": env.world_size, "zero_stage": cfg.train.zero_stage,
                "optimizer": cfg.optim.name, "precision": cfg.train.precision}
        self._tick(0.0)
        return ckpt.save(self.engine, self.run.checkpoints, self.state.step, self.state.state_dict(), meta,
                         cfg.checkpoint.keep_last, env.rank)

    def finish(self) -> Dict[str, Any]:
        """The final evaluation, the codec baselines, data.test_splits, the last checkpoint and the summary."""
        cfg, env, step = self.cfg, self.env, self.state.step
        val_bpd = self.evaluate()
        extra: Dict[str, float] = {}  # codecs of val, then the test splits
        if cfg.tracking.codec_baselines:  # PNG / WebP / JPEG XL file sizes of the same validation images
            extra = codec_baselines(cfg.data.root, cfg.model.image_size, cfg.data.val_split, env.is_main,
                                    env.world_size)
            self.tracker.metrics(extra, step)
            log.info("validation split as files: %s", ", ".join(f"{k} {v:.4f}" for k, v in extra.items()))
        extra.update(self.test_splits())
        # A resume with nothing left to train keeps the checkpoint it resumed from.
        tag = self.resumed_tag if self.resumed and step == self.resumed.step else self.save()
        tag = tag.removesuffix(ckpt.UNIVERSAL)
        summary = {"val_bits_per_dim": val_bpd, "val_nats_per_image": nats_per_image(val_bpd, self.dims),
                   "steps": step, "checkpoint": str(self.run.checkpoints / tag),
                   "run_dir": str(self.run.root), "mlflow_run_id": self.tracker.run_id,
                   "world_size": env.world_size, "nonfinite_steps": self.state.nonfinite_total, **extra}
        if env.is_main:
            atomic_write_text(self.run.final_metrics, json.dumps(summary, indent=2))
        self.tracker.finish(summary)
        return summary

    # ------------------------------------------------------------------------------------ helpers
    @contextlib.contextmanager
    def _ending(self) -> Iterator[None]:
        """The one way out: however the run ends, the MLflow run gets its status and the heartbeat says how
        this rank ended. A failed collective is restated as a LostRankError naming the lost ranks."""
        try:
            yield
        except StopRequested:
            if self.tracker is not None:
                self.tracker.suspend()  # KILLED for now: the requeued job reopens it by id
            self.heartbeat.end("stopped")
            raise
        except BaseException as e:
            lost = lost_rank_error(e, self.env, self.cfg.train.collective_timeout_s, self.heartbeat)
            if self.tracker is not None:
                why = "non-finite loss" if isinstance(e, NonFiniteLossError) else f"{type(e).__name__}: {e}"
                self.tracker.finish({"error": why, "step": self.state.step}, status="FAILED")
            if lost is None:
                self.heartbeat.end("failed", f"{type(e).__name__}: {str(e).strip()[:300]}")
                raise
            log.error("%s", lost)
            raise lost from e
        self.heartbeat.end("done")

    def _start_clock(self) -> None:
        self._t_start, self._step0, self._hours0 = time.time(), self.state.step, self.state.device_hours
        self._train_s, self._images, self._last_step_s = 0.0, 0, math.nan

    def _tick(self, step_s: float) -> None:
        """Account a finished step of `step_s` seconds (0 for a save): rate and device-hours."""
        if step_s:
            self._last_step_s = step_s
            self._train_s += step_s
            self._images += self.cfg.train.global_batch_size
        self.state.device_hours = self._hours0 + (time.time() - self._t_start) / 3600 * self.env.world_size

    def _sample_grid(self) -> None:
        """A grid of samples from the current weights (under ZeRO-3 every rank gathers the parameters)."""
        import deepspeed  # only after resolve_device set DS_ACCELERATOR, which DeepSpeed reads at import
        cfg, model = self.cfg, self.model
        ctx = (deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
               if cfg.train.zero_stage == 3 else contextlib.nullcontext())
        with ctx, torch.no_grad():
            # Every rank draws the same grid (one seeded generator; the global RNG is untouched): under ZeRO-3
            # a module called on one rank alone (the multi-scale model's upsampler) puts DeepSpeed's parameter
            # trace out of step, and the next training forward then waits forever for the other ranks.
            images = model.sample(cfg.train.sample_every_eval, generator=torch.Generator().manual_seed(cfg.train.seed))
            if self.env.is_main:
                path = self.run.sample_grid(self.state.step)
                save_grid(images, path, levels=cfg.model.levels)
                self.tracker.artifact(path, "samples")
        dist.barrier()


def train(cfg: ExperimentConfig, stop: Optional[StopFlag] = None) -> Dict[str, Any]:
    """Run (or resume) the experiment on this rank. Returns the final summary (the same on every rank).
    A rank lost mid-run fails the others within train.collective_timeout_s (plus a few heartbeats) with a
    LostRankError naming the lost rank(s) and node(s)."""
    return Trainer(cfg, stop).fit()
