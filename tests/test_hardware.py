"""Hardware-aware settings: auto precision by CPU capability and measurement, the remembered
measurements, expected durations and time budgets (capabilities mocked, measurements faked)."""

import json

import pytest
import torch
from fakes import FakeMeasurements

from cifarapp import hardware
from cifarapp.config import TrainConfig
from cifarapp.data import synthetic_data
from cifarapp.estimate import (
    BUDGETS,
    PER_EPOCH_S,
    SETUP_S,
    expected_duration,
    format_duration,
    plan_for_budget,
    remaining_seconds,
)
from cifarapp.hardware import Hardware, Measurements, Workload, choose
from cifarapp.presets import BUDGET_BASE, PRESETS
from cifarapp.runs import RunDir, execute_run, new_run_id
from cifarapp.train import StartEvent

CPU = torch.device("cpu")


def cpu_with(monkeypatch, flags, kernels):
    monkeypatch.setattr(hardware, "_cpu_flags_and_name", lambda: (flags, "Test CPU"))
    monkeypatch.setattr(hardware, "_onednn_bf16_kernels", lambda: kernels)


def bf16_fast(work, precision, channels_last):
    return {"bf16": 2000.0, "fp32": 1000.0}[precision] + (100 if channels_last else 0)


def test_auto_is_fp32_without_native_bf16_even_where_onednn_emulates_it(monkeypatch):
    work = Workload("fastnet", 0.5, batch_size=256)
    for flags, kernels in [({"avx2", "fma"}, False), ({"avx512f", "avx512bw"}, True)]:
        cpu_with(monkeypatch, flags, kernels)
        fake = FakeMeasurements(bf16_fast)
        compute = choose(work, CPU, "auto", fake)
        assert compute.precision == "fp32" and compute.dtype is None
        assert "no" in compute.reason and "bf16" in compute.reason
        assert {p for _, p, _ in fake.asked} == {"fp32"}, "bf16 is not even measured where it is emulated"
        assert hardware.detect(CPU).native_bf16 is False


def test_auto_is_bf16_where_native_and_measured_faster(monkeypatch):
    cpu_with(monkeypatch, {"avx512f", "avx512_bf16"}, True)
    compute = choose(Workload("fastnet", 0.5), CPU, "auto", FakeMeasurements(bf16_fast))
    assert (compute.precision, compute.channels_last, compute.dtype) == ("bf16", True, torch.bfloat16)
    assert compute.images_per_s == 2100 and "native bf16" in compute.reason and "fp32" in compute.reason
    assert hardware.detect(CPU).native_bf16 is True


def test_native_bf16_still_loses_to_fp32_when_measured_slower(monkeypatch):
    cpu_with(monkeypatch, {"amx_bf16", "amx_tile"}, True)
    small_model = lambda work, p, cl: {"bf16": 8000.0, "fp32": 10000.0}[p] + (0 if cl else 2000)  # noqa: E731
    compute = choose(Workload("lenet"), CPU, "auto", FakeMeasurements(small_model))
    assert (compute.precision, compute.channels_last) == ("fp32", False)


def test_a_near_tie_keeps_the_rules_preference(monkeypatch):
    cpu_with(monkeypatch, {"avx512_bf16"}, True)
    close = lambda work, p, cl: {"bf16": 1000.0, "fp32": 1030.0}[p] if cl else 500.0  # noqa: E731
    assert choose(Workload("fastnet"), CPU, "auto", FakeMeasurements(close)).precision == "bf16"


def test_explicit_precision_is_kept_and_only_the_layout_measured(monkeypatch):
    cpu_with(monkeypatch, {"avx2"}, False)
    fake = FakeMeasurements(lambda work, p, cl: 100.0 if cl else 300.0)
    compute = choose(Workload("fastnet"), CPU, "bf16", fake)
    assert (compute.precision, compute.channels_last) == ("bf16", False) and "as asked" in compute.reason


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_cuda_uses_bf16_where_supported_else_fp16(monkeypatch, bf16, expected):
    gpu = Hardware("cuda", "Test GPU", "8.0", bf16, bf16, 8, "2.14.1")
    monkeypatch.setattr(hardware, "detect", lambda device: gpu)
    compute = choose(Workload("fastnet"), torch.device("cuda"), "auto", FakeMeasurements(bf16_fast))
    assert compute.precision == expected and compute.channels_last


def test_measurements_are_remembered_per_machine(tmp_path, monkeypatch):
    calls = []

    def fake_measure(work, precision, channels_last, device, beat=None):
        calls.append(precision)
        return 123.0, True

    monkeypatch.setattr(hardware, "measure", fake_measure)
    work = Workload("lenet", batch_size=64)
    assert Measurements(tmp_path).images_per_s(work, "fp32", True, CPU) == 123.0
    assert Measurements(tmp_path).images_per_s(work, "fp32", True, CPU) == 123.0
    assert calls == ["fp32"], "the second process reads the file"
    saved = json.loads((tmp_path / "measurements.json").read_text())
    assert list(saved) == [hardware.detect(CPU).fingerprint()]
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2_OTHER")  # another kernel limit makes it another machine
    Measurements(tmp_path).images_per_s(work, "fp32", True, CPU)
    assert calls == ["fp32", "fp32"]


def test_a_real_measurement_is_positive_and_a_hopeless_one_is_given_up():
    work = Workload("lenet", batch_size=32)
    speed, complete = hardware.measure(work, "fp32", True, CPU)
    assert speed > 0 and complete
    speed, complete = hardware.measure(work, "fp32", True, CPU, beat=speed * 1000)
    assert not complete


def test_settings_are_compared_over_rounds_and_only_full_measurements_kept(tmp_path, monkeypatch):
    # round 1: A 100, B 90, C hopeless; round 2: A 80, B 120 (a moment of load hid B's speed)
    results = iter([(100.0, True), (90.0, True), (10.0, False), (80.0, True), (120.0, True)])
    monkeypatch.setattr(hardware, "measure", lambda work, p, cl, device, beat=None: next(results))
    work = Workload("lenet", batch_size=32)
    a, b, c = ("fp32", True), ("fp32", False), ("bf16", True)
    speeds = Measurements(tmp_path).compare(work, [a, b, c], CPU)
    assert speeds == {a: 100.0, b: 120.0, c: 10.0}
    kept = json.loads((tmp_path / "measurements.json").read_text())[hardware.detect(CPU).fingerprint()]
    assert set(kept) == {work.key(*a), work.key(*b)}
    assert Measurements(tmp_path).compare(work, [a, b], CPU) == {a: 100.0, b: 120.0}  # from the file


def test_the_runs_compute_is_reported_and_recorded(tmp_path, monkeypatch):
    cpu_with(monkeypatch, {"avx2"}, False)
    data = synthetic_data(n_train=300, n_test=50)
    config = TrainConfig(model="lenet", epochs=1, batch_size=64, val_size=50)
    run_dir = RunDir(tmp_path, new_run_id("lenet"))
    run_dir.create(config)
    events = []
    execute_run(run_dir, config, data, on_event=events.append, measurements=Measurements(tmp_path / "cache"))
    start = [e for e in events if isinstance(e, StartEvent)]
    assert len(start) == 1 and start[0].compute["precision"] == "fp32"
    assert "Test CPU" in start[0].hardware and "no native bf16" in start[0].hardware
    status = run_dir.read_status()
    assert status["status"] == "finished" and status["compute"]["precision"] == "fp32"
    assert "no native bf16" in status["compute"]["reason"]
    assert "compute: cpu, fp32" in run_dir.read_log()


def test_expected_duration_adds_up_the_measured_parts():
    fake = FakeMeasurements(lambda work, p, cl: 1000.0 if work.train else 5000.0)
    config = TrainConfig(model="lenet", epochs=3, batch_size=100, val_size=1000, precision="fp32")
    estimate = expected_duration(config, 11_000, measurements=fake)
    # 10,000 training images per epoch at 1,000 img/s, 1,000 validation images at 5,000 img/s
    assert estimate.seconds == pytest.approx(SETUP_S + 3 * (10 + 0.2 + PER_EPOCH_S))
    assert estimate.train_images == 10_000 and "10,000 images" in estimate.describe()


def test_low_res_and_frozen_stem_epochs_use_their_own_throughput():
    def speed(work, p, cl):
        if not work.train:
            return 1e9
        return (4000.0 if work.image_size == 16 else 1000.0) * (2 if work.frozen_stem else 1)

    config = TrainConfig(model="fastnet", width=0.5, epochs=4, batch_size=100, val_size=0, low_res_epochs=1,
                         low_res_size=16, stem_bias_epochs=2, precision="fp32")
    seconds = expected_duration(config, 4000, measurements=FakeMeasurements(speed)).seconds
    assert seconds == pytest.approx(SETUP_S + 4 * PER_EPOCH_S + 4000 / 4000 + 4000 / 1000 + 2 * 4000 / 2000)


@pytest.mark.parametrize("scale", [1.0, 0.2])
def test_budgets_are_filled_and_widen_with_time(scale):
    def speed(work, p, cl):  # a width-0.5 epoch of 45,000 images takes 30 s at scale 1
        per_width = 1500 * scale * (0.5 / work.width) ** 1.5
        return (per_width * ((32 / work.image_size) ** 2 * 0.8 if work.image_size < 32 else 1)
                * (4 if not work.train else 1))

    base = PRESETS[BUDGET_BASE].config
    widths = []
    for seconds in BUDGETS.values():
        plan = plan_for_budget(seconds, base, 50_000, measurements=FakeMeasurements(speed))
        assert 0.8 * seconds <= plan.estimate.seconds <= seconds, plan.describe()
        plan.config.validate(50_000)
        widths.append(plan.config.width)
    assert widths == sorted(widths) and widths[-1] > widths[0]


def test_a_budget_shorter_than_one_epoch_trains_on_a_subset():
    slow = FakeMeasurements(lambda work, p, cl: 50.0)
    plan = plan_for_budget(120, PRESETS[BUDGET_BASE].config, 50_000, measurements=slow)
    assert plan.config.epochs == 1 and plan.config.train_size < 45_000 and plan.estimate.seconds <= 120 * 1.05


def test_remaining_time_and_duration_text():
    assert remaining_seconds(25, 100, 10.0) == 30.0
    assert remaining_seconds(0, 100, 0.0) is None
    assert format_duration(5) == "5s" and format_duration(125) == "2m05s"
    assert format_duration(3725) == "1h02m05s" and format_duration(None) == "–"
