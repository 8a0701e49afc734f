"""What this machine computes fastest: the hardware, and the precision and memory layout chosen
for a model on it, measured once and remembered.

The rule on the CPU: bf16 autocast only where the CPU computes bf16 natively (AVX512_BF16 or AMX);
elsewhere oneDNN emulates it and a bf16 step is several times slower than fp32. Where bf16 is
native, a short measurement decides per model (small models can be faster in fp32), and the
memory layout (channels-last or contiguous) is measured too: which is faster depends on the
kernels the CPU gets. A measurement takes a few training or inference steps of the model itself
on random data, about a second, and is cached on disk per machine and model (`cache_dir()`).
On CUDA: bf16 where the GPU supports it, else fp16 with loss scaling; channels-last.
On Apple MPS: fp32 (mixed precision there is not exercised by this app).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from .files import atomic_write_text
from .models import build_model

CACHE_ENV_VAR = "CIFARAPP_CACHE_DIR"
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# environment variables that cap the instruction set torch's kernels use (so a CPU can stand in
# for an older one); they are part of what "this machine" means for measurements
KERNEL_LIMIT_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
# a candidate measured within this fraction of the fastest counts as equally fast; the rule's
# preferred setting (listed first) then wins, so noise does not flip the choice
TIE_TOLERANCE = 0.05
# each candidate is timed for at least this long (after one warm-up step), in at most MAX_STEPS steps
MIN_PROBE_S = 0.3
MAX_PROBE_STEPS = 200
# larger batches are measured at this size: throughput no longer grows with the batch, and a
# huge batch would cost the measurement memory and time
MAX_PROBE_BATCH = 512
# the choice between settings for training is measured at this batch size at most (it ranks the
# settings as larger batches do, in less time); durations use the run's own batch size
TRAIN_CHOICE_BATCH = 256
# a setting whose warm-up step is this many times slower than the fastest measured so far is
# not timed further: it cannot win
HOPELESS_FACTOR = 2.0
# settings are compared over this many interleaved rounds of measurement
CHOICE_ROUNDS = 2
PRECISION_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", *PRECISION_DTYPES)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then the CPU. Asking for an absent device is an error."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cuda" and not cuda:
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is visible; use 'auto' or 'cpu'")
    if name == "mps" and not mps:
        raise ValueError("device 'mps' was asked for but Apple MPS is not available; use 'auto' or 'cpu'")
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
    return torch.device(name)


def cache_dir() -> Path:
    """Where measurements are remembered: $CIFARAPP_CACHE_DIR, else ~/.cache/cifarapp."""
    configured = os.environ.get(CACHE_ENV_VAR)
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cifarapp"


def _cpu_flags_and_name() -> tuple[set[str] | None, str]:
    """The CPU's feature flags and model name from /proc/cpuinfo (None where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, platform.processor() or platform.machine()
    flags: set[str] = set()
    name = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = set(value.split())
        elif key == "model name" and not name:
            name = value.strip()
    return (flags or None), (name or platform.machine())


def _onednn_bf16_kernels() -> bool:
    """Whether oneDNN has bf16 kernels on this CPU (natively or emulated on AVX-512)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass(frozen=True)
class Hardware:
    """The device training and inference run on, and what it computes natively."""

    device: str  # cpu | cuda | mps
    name: str  # CPU model or GPU name
    capability: str  # ATen's CPU kernel level (AVX2, AVX512, ...), or the CUDA compute capability
    native_bf16: bool | None  # None: cannot tell (no CPU flags to read)
    bf16_kernels: bool  # the library has bf16 kernels here (oneDNN on the CPU; on CUDA, bf16 support)
    threads: int
    torch_version: str
    kernel_limits: str = ""  # KERNEL_LIMIT_VARS that are set, as NAME=value

    def describe(self) -> str:
        """One line: device, capability, bf16, threads, torch (and any kernel limits set)."""
        if self.device == "cpu":
            bf16 = {True: "native bf16", False: "no native bf16", None: "bf16 support unknown"}[self.native_bf16]
            limits = f", kernels limited by {self.kernel_limits}" if self.kernel_limits else ""
            return (f"CPU {self.name} ({self.capability}, {bf16}{limits}), {self.threads} threads, "
                    f"torch {self.torch_version}")
        if self.device == "cuda":
            return (f"CUDA {self.name} (compute capability {self.capability}, "
                    f"{'bf16' if self.bf16_kernels else 'no bf16'}), torch {self.torch_version}")
        return f"Apple MPS ({self.name}), torch {self.torch_version}"

    def fingerprint(self) -> str:
        """A key for remembered measurements: changes with the hardware, kernel limits, threads and torch."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def detect(device: torch.device) -> Hardware:
    """What `device` is, read from torch and (on Linux) the CPU's flags."""
    version = torch.__version__.split("+")[0]
    if device.type == "cuda":
        index = device.index or 0
        major, minor = torch.cuda.get_device_capability(index)
        return Hardware("cuda", torch.cuda.get_device_name(index), f"{major}.{minor}", torch.cuda.is_bf16_supported(),
                        torch.cuda.is_bf16_supported(), torch.get_num_threads(), version)
    if device.type == "mps":
        return Hardware("mps", platform.machine(), "mps", None, False, torch.get_num_threads(), version)
    flags, name = _cpu_flags_and_name()
    kernels = _onednn_bf16_kernels()
    # oneDNN has bf16 kernels on any AVX-512 CPU, but computes bf16 natively only with these
    # instructions; a limit on oneDNN's instruction set (ONEDNN_MAX_CPU_ISA) turns its bf16 off
    native = None if flags is None else kernels and any(f in flags for f in NATIVE_BF16_FLAGS)
    limits = ", ".join(f"{v}={os.environ[v]}" for v in KERNEL_LIMIT_VARS if os.environ.get(v))
    return Hardware("cpu", name, torch.backends.cpu.get_cpu_capability(), native, kernels, torch.get_num_threads(),
                    version, limits)


@dataclass(frozen=True)
class Compute:
    """How a model runs: on which device, in which precision and memory layout, and why."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    channels_last: bool
    reason: str
    images_per_s: float | None = None  # measured for this choice, where it was measured

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for plain fp32."""
        return PRECISION_DTYPES[self.precision]

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def describe(self) -> str:
        layout = "channels-last" if self.channels_last else "contiguous layout"
        return f"{self.device.type}, {self.precision}, {layout}: {self.reason}"

    def to_dict(self) -> dict:
        return {"device": str(self.device), "precision": self.precision, "channels_last": self.channels_last,
                "reason": self.reason, "images_per_s": self.images_per_s}


@dataclass(frozen=True)
class Workload:
    """What is measured: one model at one batch size (capped at MAX_PROBE_BATCH), training
    steps or inference."""

    model: str
    width: float = 1.0
    num_classes: int = 10
    batch_size: int = 256
    image_size: int = 32
    train: bool = True
    frozen_stem: bool = False  # fastnet after its stem-bias epochs: backward stops before the stem

    def __post_init__(self):
        object.__setattr__(self, "batch_size", max(2, min(int(self.batch_size), MAX_PROBE_BATCH)))

    def key(self, precision: str, channels_last: bool) -> str:
        return (f"{'train' if self.train else 'infer'}:{self.model}:w{self.width:g}:c{self.num_classes}:"
                f"b{self.batch_size}:s{self.image_size}{':frozen' if self.frozen_stem else ''}:{precision}:"
                f"{'cl' if channels_last else 'nchw'}")


class Measurements:
    """Images/s of workloads on this machine, measured on first use and kept in a JSON file.
    One object per process (the app's context, a CLI command) so that its lock keeps two
    measurements from running at once and slowing each other down."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return (self.folder or cache_dir()) / "measurements.json"

    def images_per_s(self, work: Workload, precision: str, channels_last: bool, device: torch.device) -> float:
        """Measured images/s of `work` in one setting (cached per machine)."""
        setting = (precision, channels_last)
        return self.compare(work, [setting], device, rounds=1)[setting]

    def compare(self, work: Workload, candidates: list[tuple[str, bool]], device: torch.device,
                rounds: int = CHOICE_ROUNDS) -> dict[tuple[str, bool], float]:
        """Images/s of `work` in each (precision, channels_last) setting, from the cache or
        measured in `rounds` interleaved rounds, keeping each setting's best (a moment of load
        on the machine then cannot decide the choice). A setting whose warm-up step is
        HOPELESS_FACTOR times slower than the best is given up after it; its rough figure is
        returned but not remembered."""
        machine = detect(device).fingerprint()
        with self._lock:
            known = self._load().get(machine, {})
            speeds = {c: known[work.key(*c)] for c in candidates if work.key(*c) in known}
            missing = [c for c in candidates if c not in speeds]
            timed: dict[tuple[str, bool], float] = {}
            for round_ in range(rounds if missing else 0):
                for c in missing:
                    best = max([*speeds.values(), *timed.values()], default=None)
                    if round_ and c not in timed:
                        continue  # given up in the first round
                    value, complete = measure(work, *c, device, beat=None if round_ else best)
                    if complete:
                        timed[c] = max(timed.get(c, 0.0), value)
                    else:
                        speeds[c] = value
            for c, value in timed.items():
                self._store(machine, work.key(*c), value)
            return {**speeds, **timed}

    def _load(self) -> dict:
        try:
            table = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return table if isinstance(table, dict) else {}

    def _store(self, machine: str, key: str, value: float) -> None:
        table = self._load()
        table.setdefault(machine, {})[key] = value
        try:
            atomic_write_text(self.path, json.dumps(table, indent=1, sort_keys=True))
        except OSError:
            pass  # a read-only home only costs a new measurement next time


def measure(work: Workload, precision: str, channels_last: bool, device: torch.device,
            beat: float | None = None) -> tuple[float, bool]:
    """Images/s of a few steps of `work` on random data: one warm-up step, then at least
    MIN_PROBE_S seconds of steps. Returns (images/s, complete); with `beat`, a setting whose
    warm-up alone is HOPELESS_FACTOR times slower than that is given up: (warm-up images/s, False)."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(work.model, num_classes=work.num_classes, width=work.width).to(device, memory_format=fmt)
    model.train(work.train)
    if work.frozen_stem:
        model.freeze_stem()
    x = torch.randn(work.batch_size, 3, work.image_size, work.image_size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, work.num_classes, (work.batch_size,), device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9) if work.train else None
    dtype = PRECISION_DTYPES[precision]

    def step() -> None:
        with torch.set_grad_enabled(work.train), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                                enabled=dtype is not None):
            logits = model(x)
        if optimizer is not None:
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    start = time.perf_counter()
    step()
    warm = work.batch_size / (time.perf_counter() - start)
    if beat is not None and warm * HOPELESS_FACTOR < beat:
        return warm, False
    steps, start = 0, time.perf_counter()
    while steps < MAX_PROBE_STEPS and (steps == 0 or time.perf_counter() - start < MIN_PROBE_S):
        step()
        steps += 1
    return work.batch_size * steps / (time.perf_counter() - start), True


def machine_header(device: torch.device | None = None) -> str:
    """The lines every benchmark prints first: what it ran on, and the date."""
    hw = detect(device or resolve_device("auto"))
    bf16 = "computes bf16 natively" if hw.native_bf16 else "no native bf16 (bf16 is emulated or missing)"
    return (f"# hardware: {hw.describe()}\n# bf16: {bf16}; oneDNN bf16 kernels: {'yes' if hw.bf16_kernels else 'no'}\n"
            f"# date: {time.strftime('%Y-%m-%d %H:%M')}")


def _candidates(hw: Hardware, precision: str) -> tuple[list[tuple[str, bool]], str]:
    """The settings worth measuring, the rule's preference first, and the rule's reason."""
    if hw.device == "cuda":
        if precision != "auto":
            return [(precision, True)], f"{precision} as asked"
        if hw.bf16_kernels:
            return [("bf16", True)], "bf16 mixed precision: this GPU supports it (no loss scaling needed)"
        return [("fp16", True)], "fp16 mixed precision with loss scaling: this GPU has no bf16"
    if hw.device == "mps":
        return [("fp32" if precision == "auto" else precision, False)], \
            "fp32: mixed precision on Apple GPUs is not exercised by this app" if precision == "auto" else \
            f"{precision} as asked"
    layouts = [True, False]
    if precision != "auto":
        return [(precision, cl) for cl in layouts], f"{precision} as asked"
    if not hw.bf16_kernels or hw.native_bf16 is False:
        return [("fp32", cl) for cl in layouts], \
            (f"fp32: this CPU ({hw.capability}) has no native bf16 (AVX512_BF16 or AMX); bf16 would be "
             "emulated, several times slower")
    native = "native bf16" if hw.native_bf16 else "bf16 kernels (whether native is unknown)"
    return [(p, cl) for p in ("bf16", "fp32") for cl in layouts], f"the fastest measured on this CPU ({native})"


def choose(work: Workload, device: torch.device, precision: str = "auto",
           measurements: Measurements | None = None) -> Compute:
    """The precision and memory layout for `work` on `device`: by the rule, and where several
    settings are candidates, by measurement (cached)."""
    hw = detect(device)
    candidates, reason = _candidates(hw, precision)
    if len(candidates) == 1:
        p, cl = candidates[0]
        return Compute(device, p, cl, reason)
    measurements = measurements or Measurements()
    if work.train:
        work = replace(work, batch_size=min(work.batch_size, TRAIN_CHOICE_BATCH))
    speeds = measurements.compare(work, candidates, device)
    fastest = max(speeds.values())
    best = next(c for c in candidates if speeds[c] >= fastest * (1 - TIE_TOLERANCE))
    others = ", ".join(f"{p} {'channels-last' if cl else 'contiguous'} {speeds[(p, cl)]:,.0f}"
                       for p, cl in candidates if (p, cl) != best)
    what = "training" if work.train else "inference"
    detail = f"{speeds[best]:,.0f} img/s for {work.model} {what} at batch {work.batch_size} (others: {others})"
    return Compute(device, best[0], best[1], f"{reason}; {detail}", speeds[best])
