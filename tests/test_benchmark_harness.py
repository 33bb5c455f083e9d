from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import harness


def test_measure_counts_the_flops_of_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    calls = []

    def fn() -> None:
        calls.append(1)
        a @ b

    monkeypatch.setattr(harness, "matmul_gflops", lambda *a, **k: 250.0)  # timed right after the row
    monkeypatch.setattr(harness, "_reset_peak", lambda: calls.append("trim"))
    stats = harness.measure(fn, repeat=3, warmup=1, flops=True)
    assert stats["gflop"] == pytest.approx(2 * 64 * 32 * 16 / 1e9)
    assert stats["gflops_per_s"] == pytest.approx(stats["gflop"] / stats["median_s"])
    assert stats["matmul_gflops"] == 250.0
    assert stats["efficiency"] == pytest.approx(stats["gflops_per_s"] / 250.0)
    # the counted call, the heap returned, one untimed call on fresh memory, then the three timed ones
    assert calls == [1, "trim", 1, 1, 1, 1] and stats["min_s"] <= stats["median_s"] and stats["cpu_s"] >= 0.0


def test_previous_rows_keeps_the_selected_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(harness, "matmul_gflops", lambda *a: 1.0)
    monkeypatch.setattr(harness, "matmul_peak", lambda *a: 2.0)
    assert harness.previous_rows("x", lambda row: True) == []
    harness.write_results("x", [{"row": "speed", "seconds": 1.0}, {"row": "quality", "dice": 0.5}])
    assert harness.previous_rows("x", lambda row: "dice" in row) == [{"row": "quality", "dice": 0.5}]


def test_results_record_the_cpu_flags_that_decide_bf16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(harness, "matmul_gflops", lambda *a: 1.0)
    monkeypatch.setattr(harness, "matmul_peak", lambda *a: 2.0)
    monkeypatch.setattr(harness, "cpu_flags", lambda: {"fpu", "avx512f", "amx_bf16", "sse2"})
    import json

    saved = json.loads(harness.write_results("y", []).read_text())["machine"]
    assert saved["cpu_flags"] == ["amx_bf16", "avx512f"] and saved["fp32_matmul_4096_gflops"] == 2.0
    assert saved["bf16_hardware"] is True  # AMX


def test_a_speed_row_sets_ours_beside_the_reference_of_a_machine_like_this(monkeypatch: pytest.MonkeyPatch) -> None:
    timing = {"median_s": 2.0, "gflop": 100.0, "matmul_gflops": 200.0, "peak_rss_mb": 10.0}
    monkeypatch.setattr(harness, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    row = harness.speed_row("spin", "volume", "fp32", timing)
    assert row["efficiency"] == 0.25 and row["ref_seconds"] == 20.6  # the AMD bf16 machine's reference time
    assert row["speedup"] == round(20.6 / 2.0, 2) and row["target_speedup"] == 2.0
    assert row["speedup_by_efficiency"] == round(0.25 / 0.30, 2)
    monkeypatch.setattr(harness, "cpu_flags", lambda: {"avx512f"})
    row = harness.speed_row("spin", "step", "fp32", timing)
    assert row["ref_seconds"] == 4.22 and row["target_speedup"] == 1.5  # the Intel machine's, no bf16
    row = harness.speed_row("easysr", "volume", "fp32", timing)
    assert row["speedup_by_efficiency"] == round(0.25 / 0.23, 2)  # derived from PERF.md's time and FLOPs
    monkeypatch.setitem(harness.REFERENCE, ("easysr", "volume"), {**harness.REFERENCE[("easysr", "volume")],
                                                                  "efficiency": None})
    row = harness.speed_row("easysr", "volume", "fp32", timing)
    assert row["speedup_by_efficiency"] is None  # no reference efficiency: judged by time alone


def test_the_summary_lists_every_speed_row_with_its_machine(tmp_path: Path) -> None:
    import json

    from benchmarks.summary import summary

    machine = {"cpu": "Some CPU", "cores": 2, "threads": 2, "cpu_flags": ["avx512_bf16", "avx512f"],
               "bf16_hardware": True, "fp32_matmul_4096_gflops": 200.0, "load_average": 0.5}
    rows = [{"row": "larger volume", "seconds": 50.0, "efficiency": 0.9},
            {"row": "step: fp32", "seconds": 2.0, "efficiency": 0.5, "ref_seconds": 5.2, "speedup": 0.6,
             "target_speedup": 1.5, "speedup_by_efficiency": 2.4, "ref_efficiency_12_07": 0.21},
            {"row": "quality", "dice": 0.8},
            {"row": "DSC fusion", "seconds": None, "ref_seconds": None, "efficiency": None, "mean": 0.4},
            {"row": "training seconds", "seconds": 500.0, "ref_seconds": None, "efficiency": None},
            {"row": "volume: fp32", "seconds": 20.0, "ref_seconds": 20.6, "speedup": 1.03, "target_speedup": 2.0}]
    (tmp_path / "spin.json").write_text(json.dumps({"when": "today", "machine": machine, "rows": rows}))
    text = summary(tmp_path)
    assert "bf16/AMX flags: avx512_bf16 (bf16 hardware: yes)" in text and "200.0 GFLOP/s" in text
    assert "| spin | step: fp32 | 2 | 0.5 | 0.32 |" in text and text.count("| spin |") == 3  # needs 1.5 x 0.21
    assert "| spin | larger volume | 50 | 0.9 |" in text
    assert text.splitlines()[-2].endswith("| yes |")  # by efficiency, whatever the other machine's time
    assert text.splitlines()[-1].endswith("| no (by time) |")
