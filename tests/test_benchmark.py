"""The speed benchmark (examples/benchmark.py) on a tiny run: its table, JSON and plot agree, settings are checked."""

from __future__ import annotations

import json

import pytest
from conftest import CONFIG_DIR, TINY_IBNET

from ibnet_nemo.benchmark import BenchmarkSettings, ModelSpec, describe_device, run_benchmark, write_report


def test_benchmark_writes_a_consistent_table_json_and_plot(tmp_path):
    specs = (
        ModelSpec("QuartzNet 5x5", "quartznet_5x5"),
        ModelSpec("tiny IBNet", "ibnet_c192", TINY_IBNET),
        ModelSpec(
            "tiny IBNet, checkpoint_blocks",
            "ibnet_c192",
            (*TINY_IBNET, "++model.encoder.checkpoint_blocks=true"),
            inference=False,
        ),
    )
    settings = BenchmarkSettings(
        inference_shapes=((1, 1.0), (2, 0.5)), train_shape=(2, 0.5), inference_rounds=1, train_rounds=1, threads=1
    )
    results = run_benchmark(CONFIG_DIR, specs, settings)
    paths = write_report(results, settings, tmp_path / "out")

    quartznet, ibnet, checkpointed = results
    assert ibnet.params == checkpointed.params < quartznet.params
    assert set(ibnet.rtfx) == {"1x1s", "2x0.5s"} and not checkpointed.rtfx
    assert all(r > 0 for r in (*quartznet.rtfx.values(), *ibnet.rtfx.values()))
    assert all(r.train_step_s > 0 and r.train_peak_mib > 0 for r in results)
    table = paths["md"].read_text().splitlines()
    assert len(table) == 2 + len(specs)
    assert table[2].startswith("| QuartzNet 5x5 |") and table[2].count("(1.00)") == 4
    assert f"({ibnet.rtfx['1x1s'] / quartznet.rtfx['1x1s']:.2f})" in table[3]
    saved = json.loads(paths["json"].read_text())
    assert [r["label"] for r in saved["results"]] == [s.label for s in specs]
    assert saved["results"][1]["train_step_s"] == ibnet.train_step_s
    assert paths["png"].read_bytes().startswith(b"\x89PNG")


def test_benchmark_settings_name_a_bad_device_or_dtype():
    with pytest.raises(ValueError, match="device must be one of"):
        BenchmarkSettings(device="tpu")
    with pytest.raises(ValueError, match="autocast_dtype must be None or one of"):
        BenchmarkSettings(autocast_dtype="int8")
    assert describe_device(BenchmarkSettings(threads=3)) == "3 CPU threads, fp32"
    assert describe_device(BenchmarkSettings(autocast_dtype="bfloat16")) == "2 CPU threads, bfloat16 autocast"
