"""Training on several processes with torch.distributed: the process group of a run launched by
torchrun, the helpers `train.fit` uses on every world size (a single process is a world of one,
where every collective is a no-op), synchronised BatchNorm that also works on the CPU, and the
command that launches `torch.distributed.run`.

How a run is split (see `train.fit`): every process holds the whole training tensor and draws the
same permutation and the same augmentation of each global batch from the run's seed; process r
trains on its share of the batch, and DistributedDataParallel averages the gradients. The global
batch is the config's `batch_size` whatever the number of processes, so a run can be resumed
with another process count. Process 0 alone writes the run folder.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

# A collective that waits this long for a peer ends the run as failed instead of hanging on a
# process that crashed or stopped responding. Every step synchronises, so a healthy peer is never
# that late; the longest wait between collectives is one epoch's validation and checkpoint.
DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV_VAR = "CIFARAPP_DIST_TIMEOUT"
# a run's processes asked to stop get this long to stop at their next step and write a checkpoint
# before their process group is terminated
STOP_GRACE_S = 60.0


class DistributedError(RuntimeError):
    """A multi-process run cannot start or a peer process failed; the message says what to do."""


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run (rank 0 of 1 when there is no process group)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files and reports its events."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, n: int) -> slice:
        """This process's contiguous part of `n` items (the first `n % size` processes get one more)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over all processes (in place; the tensor itself at world size 1)."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def any_flags(self, flags: list[bool], device: torch.device) -> list[bool]:
        """Each flag, true where it is true on any process: every process gets the same answers at
        the same step (how a stop asked of one process stops all of them together)."""
        if not self.distributed:
            return flags
        values = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=device)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return [bool(v) for v in values.tolist()]

    def broadcast(self, obj):
        """Process 0's `obj` on every process (pickled; for settings and checkpoints, not batches)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list | None:
        """Every process's `obj` in rank order on process 0 (None elsewhere)."""
        if not self.distributed:
            return [obj]
        boxes = [None] * self.size if self.is_main else None
        dist.gather_object(obj, boxes, dst=0)
        return boxes

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every process process 0's buffers (BatchNorm statistics), so that validation and
        checkpoints see the same model everywhere."""
        if self.distributed:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)


SINGLE = World()


def launched_by_torchrun() -> bool:
    """Whether this process is one of several that torchrun (or another launcher) started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def timeout_seconds() -> float:
    """How long a collective may wait for a peer ($CIFARAPP_DIST_TIMEOUT, else DEFAULT_TIMEOUT_S)."""
    try:
        return max(1.0, float(os.environ.get(TIMEOUT_ENV_VAR, DEFAULT_TIMEOUT_S)))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def join_world(device: str = "auto") -> World:
    """Join the process group that torchrun's environment describes (NCCL on CUDA, else gloo),
    or return the world of one when there is none. On CUDA each process takes the GPU of its
    local rank; on the CPU the cores are divided among the processes of this machine."""
    if not launched_by_torchrun():
        return SINGLE
    if dist.is_initialized():
        return current_world()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(f"process {local_rank} of this machine has no GPU of its own "
                                   f"({torch.cuda.device_count()} visible); start at most that many processes")
        torch.cuda.set_device(local_rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds()))
    return current_world()


def current_world() -> World:
    """The world of the process group already joined (the world of one without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                 str(dist.get_backend()))


def leave_world() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def process_device(world: World, device: torch.device) -> torch.device:
    """The device of this process: its own GPU on CUDA (cuda:<local rank>), else `device`."""
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


class SyncedBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the global batch, summed over all
    processes (torch's SyncBatchNorm runs on GPUs only; this one runs wherever the process
    group does, gloo on the CPU included). With one process it is plain BatchNorm. Squares are
    taken in float32 at least and sums in float64, so the variance from E[x^2] - E[x]^2 keeps its
    precision; the collective is differentiable, so the backward pass sums the gradients'
    statistics too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        import torch.distributed.nn.functional as dist_nn

        dims = (0, 2, 3)
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float64)
        local = torch.cat([x.sum(dims, dtype=torch.float64), x.float().square().sum(dims, dtype=torch.float64), count])
        total = dist_nn.all_reduce(local)
        channels, n = x.shape[1], total[-1]
        mean = total[:channels] / n
        var = (total[channels:2 * channels] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_((var * n / (n - 1).clamp_min(1)).to(self.running_var.dtype), momentum)
        scale = torch.rsqrt(var + self.eps).to(x.dtype)
        shift = mean.to(x.dtype)
        y = (x - shift[None, :, None, None]) * scale[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def synchronise_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d of `model` by a SyncedBatchNorm with the same parameters,
    buffers and settings (state-dict keys are unchanged, so checkpoints stay interchangeable)."""
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SyncedBatchNorm):
            synced = SyncedBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            if child.affine:
                synced.weight.requires_grad_(child.weight.requires_grad)
                synced.bias.requires_grad_(child.bias.requires_grad)
            synced.to(device=child.running_mean.device if child.running_mean is not None else None)
            setattr(model, name, synced)
        else:
            synchronise_batchnorm(child)
    return model


def launch_environment(nproc: int) -> dict[str, str]:
    """The environment for a launch of `nproc` processes on this machine: OpenMP told each
    process's share of the CPU cores (torch.distributed.run would set 1), which `join_world`
    gives torch's own threads too."""
    return {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}


def launch_command(nproc: int, module_args: list[str]) -> list[str]:
    """The command that starts `nproc` processes of `python -m cifarapp <module_args>` with
    torch.distributed.run on this machine (a standalone rendezvous on a free local port)."""
    if nproc < 1:
        raise DistributedError(f"the number of processes must be at least 1, got {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
            f"--nproc-per-node={nproc}", "--max-restarts=0", "-m", "cifarapp", *module_args]


def launch(nproc: int, module_args: list[str], **popen) -> subprocess.Popen:
    """Start `launch_command(nproc, module_args)` in a process group of its own (so that it can be
    ended as a whole, and outlives neither a Ctrl-C of ours nor a stop of the app by accident)."""
    return subprocess.Popen(launch_command(nproc, module_args), env=launch_environment(nproc),
                            stdin=subprocess.DEVNULL, start_new_session=True, **popen)


class GroupStop:
    """Ends a launched process group that was asked to stop but goes on: SIGTERM once it has had
    `grace_s` to stop at its next step and write its checkpoint, SIGKILL `kill_after_s` later."""

    def __init__(self, process: subprocess.Popen, grace_s: float = STOP_GRACE_S, kill_after_s: float = 10.0):
        self.process, self.grace_s, self.kill_after_s = process, grace_s, kill_after_s
        self.asked_at: float | None = None
        self._terminated_at: float | None = None

    def ask(self) -> None:
        """The stop has been requested (through the run folder): the grace period starts."""
        if self.asked_at is None:
            self.asked_at = time.monotonic()

    def enforce(self) -> None:
        """Call now and then while the group runs: terminate or kill it when its time is up."""
        now = time.monotonic()
        if self.asked_at is None or now - self.asked_at <= self.grace_s:
            return
        if self._terminated_at is None:
            self._signal(signal.SIGTERM)
            self._terminated_at = now
        elif now - self._terminated_at > self.kill_after_s:
            self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)


def signal_name(number: int) -> str:
    """SIGKILL for 9, and so on ("signal N" for a number that names no signal)."""
    return signal.Signals(number).name if number in signal.valid_signals() else f"signal {number}"


def available_processes() -> list[tuple[str, int]]:
    """The process counts worth offering on this machine, with what each means: one per GPU up to
    the GPUs visible, else up to the CPU cores (each process then gets its share of the cores)."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cores = os.cpu_count() or 1
    if gpus:
        return [(f"{n} GPU{'s' if n > 1 else ''} ({n} process{'es' if n > 1 else ''}, NCCL)", n)
                for n in range(1, gpus + 1)]
    choices = [("1 process (in the app)", 1)]
    choices += [(f"{n} processes on the CPU (gloo, {max(1, cores // n)} core{'s' if cores // n > 1 else ''} each)", n)
                for n in range(2, cores + 1)]
    return choices


def machine_summary() -> str:
    """What this machine offers for training, in words."""
    cores = os.cpu_count() or 1
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpu_text = (f"{gpus} GPU{'s' if gpus > 1 else ''} ({torch.cuda.get_device_name(0)})" if gpus else "no GPU")
    return f"{cores} CPU core{'s' if cores > 1 else ''}, {gpu_text}"


_ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.DOTALL)


def root_cause(launcher_output: str) -> str | None:
    """What torch.distributed.run's failure summary names as the first failure (the process and
    how it ended), in words; None when the output has no such summary."""
    match = _ROOT_CAUSE.search(launcher_output)
    if match is None:
        return None
    rank, code = int(match.group(1)), int(match.group(2))
    if code < 0:
        name = signal_name(-code)
        why = " (out of memory, or killed by hand)" if -code == signal.SIGKILL else ""
        return f"process {rank} was killed by {name}{why}"
    return f"process {rank} exited with status {code}"
