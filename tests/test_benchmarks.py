"""The benchmark scripts in their CI-sized (--quick) form, and the analytic FLOP count."""
import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks.interleave import median_interleaved
from benchmarks.model_flops import forward_flops, train_flops
from benchmarks.scaling import collectives_of
from configs import model as model_configs
from configs import stage1
from hdvila_jax.models import HDVILA, model_config_from_dict
from hdvila_jax.models.variables import abstract_variables, example_batch
from tests.model_helpers import small_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_benchmark(module: str, *args: str, tmp_path) -> list[dict]:
    out = tmp_path / f"{module}.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args, f"--json={out}"], cwd=REPO, env=env,
                   check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def test_paper_stage1_flops_match_the_published_count():
    cfg = model_config_from_dict(model_configs.get_config("paper").to_dict())
    # 1.89 TFLOP per example (issue 5; counted with zero-padding taps, which we leave out: 0.6% less).
    assert train_flops(cfg, 1, clips=2, text_len=50) / 1e12 == pytest.approx(1.89, rel=0.01)


@pytest.mark.parametrize("stage", [1, 2])
def test_analytic_forward_flops_match_xla_cost_analysis(stage):
    # XLA's count of the portable lowering: the CPU one runs small maps as im2col matmuls, which
    # also multiply the zero padding that the analytic count leaves out.
    cfg = small_config(crop_size=(128, 192), pixel_random_sampling_size=4, lowering_platform="gpu")
    batch = example_batch(cfg, batch=2, clips=2, text_len=12)
    model = HDVILA(cfg)
    forward = lambda v, b: model.apply(v, b, stage=stage)
    compiled = jax.jit(forward).lower(abstract_variables(cfg, stage), batch).compile()
    analysis = compiled.cost_analysis()
    xla = (analysis[0] if isinstance(analysis, (list, tuple)) else analysis)["flops"]
    ours = 2 * forward_flops(cfg, stage, clips=2, text_len=12, visual_tokens=6)
    # XLA also counts normalisation, activations and softmax, which the analytic count leaves out.
    assert ours == pytest.approx(xla, rel=0.03)


def test_collectives_are_read_from_hlo():
    hlo = """
  %all-reduce.1 = f32[1024,64]{1,0} all-reduce(f32[1024,64]{1,0} %p), replica_groups={{0,1}}, to_apply=%add
  %ag = (bf16[8,16]{1,0}, f32[4]{0}) all-gather-start(bf16[4,16]{1,0} %a, f32[2]{0} %b), dimensions={0}
  %agd = (bf16[8,16]{1,0}, f32[4]{0}) all-gather-done((bf16[8,16]{1,0}, f32[4]{0}) %ag)
  %add.3 = f32[1024,64]{1,0} add(f32[1024,64]{1,0} %x, f32[1024,64]{1,0} %y)
  %rs = f32[32]{0} reduce-scatter(f32[64]{0} %g), dimensions={0}, to_apply=%add
"""
    stats = collectives_of(hlo)
    assert stats == {"all-reduce": {"count": 1, "bytes": 1024 * 64 * 4},
                     "all-gather": {"count": 1, "bytes": 8 * 16 * 2 + 4 * 4},
                     "reduce-scatter": {"count": 1, "bytes": 32 * 4}}


def test_train_step_benchmark_quick(tmp_path):
    (row,) = run_benchmark("train_step", "--config=configs/stage1.py:tiny", "--quick", "--dtypes=float32",
                           tmp_path=tmp_path)
    assert row["stage"] == 1 and row["dtype"] == "float32" and row["batch_size"] == 4
    assert row["step_ms"] > 0 and row["compile_s"] > 0 and np.isfinite(row["loss"])
    assert row["examples_per_s"] == pytest.approx(row["batch_size"] / (row["step_ms"] / 1e3))
    assert row["xla_gflop_per_step"] > 0 and row["analytic_gflop_per_step"] > 0
    assert 0 < row["mfu"] < 1.5  # CPU peak is a measured matmul, so MFU can exceed it a little only by noise


def test_memory_benchmark_quick(tmp_path):
    rows = run_benchmark("memory", "--quick", tmp_path=tmp_path)
    assert [(r["remat"], r["scheduler"]) for r in rows] == [("none", "memory"), ("stage", "memory")]
    cfg = model_config_from_dict(stage1.get_config("tiny").model.to_dict())
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_variables(cfg, 1)["params"]))
    for row in rows:
        assert row["devices"] == 8 and row["stage"] == 1
        assert row["peak"] == row["arguments"] + row["outputs"] - row["aliased"] + row["temporaries"]
        assert row["aliased"] > 0  # the train state is donated
        # FSDP: each device holds far less than the whole float32 state (params + 2 Adam moments).
        assert row["arguments"] < 0.5 * 3 * 4 * params


def test_median_interleaved_alternates_and_skips_the_untimed_calls():
    calls = []

    def timer(name, values):
        values = iter(values)
        return lambda: calls.append(name) or next(values)
    # Per round: one untimed call, then the timed one; the first round is warm-up.
    medians = median_interleaved(dict(a=timer("a", [9, 9, 9, 1, 9, 3, 9, 2]), b=timer("b", [8, 8, 8, 5, 8, 7, 8, 4])),
                                 reps=3, warmup=1, untimed_per_turn=1)
    assert medians == dict(a=2, b=5)
    assert calls == ["a", "a", "b", "b"] * 4
    # Turns of one untimed and two timed calls, no warm-up round: the median of all timed calls.
    calls.clear()
    medians = median_interleaved(dict(a=timer("a", [9, 1, 2, 9, 3, 4]), b=timer("b", [9, 5, 6, 9, 7, 8])),
                                 reps=2, warmup=0, untimed_per_turn=1, timed_per_turn=2)
    assert medians == dict(a=2.5, b=6.5)
    assert calls == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3


def test_vs_reference_benchmark_quick(tmp_path):
    rows = run_benchmark("vs_reference", "--quick", "--convs=onednn,xla", tmp_path=tmp_path)
    assert [(r["stage"], r["convs"]) for r in rows] == [(stage, conv) for stage in (1, 2) for conv in ("onednn", "xla")]
    for r in rows:
        assert np.isfinite(r["ours_loss"]) and np.isfinite(r["original_loss"])
        assert r["ratio"] == pytest.approx(r["ours_examples_per_s"] / r["original_examples_per_s"])
    for stage_rows in (rows[:2], rows[2:]):  # the same step under other kernels: the same loss
        for other in stage_rows[1:]:
            assert other["ours_loss"] == pytest.approx(stage_rows[0]["ours_loss"], rel=1e-4)
        assert len({r["original_loss"] for r in stage_rows}) == 1  # one original per stage


def test_scaling_benchmark_quick(tmp_path):
    dp1, fsdp2 = run_benchmark("scaling", "--quick", tmp_path=tmp_path)
    assert (dp1["mode"], dp1["devices"], fsdp2["mode"], fsdp2["devices"]) == ("dp", 1, "fsdp", 2)
    assert dp1["collectives"] == {} and dp1["sharded_params"] == 0
    assert fsdp2["sharded_params"] > 0 and fsdp2["collectives"]["all-gather"]["count"] > 0
    assert fsdp2["loss_rel_diff"] < 1e-5
    assert fsdp2["update_rel_diff"] < 1e-3


def test_aot_table_shows_a_step_libtpu_refused():
    # In a process of its own: the table's module defines absl flags that other benchmarks define too.
    script = """
from benchmarks import aot_table
refused = dict(config="c", topology="v5e:2x4", remat="none", per_chip_batch=12, fits=False,
               compile_refused="RESOURCE_EXHAUSTED: ...", peak_bytes_per_chip=None,
               temporaries_bytes_per_chip=17.82 * 2 ** 30, hbm_bytes_per_chip=16 * 2 ** 30)
print(aot_table._needs(refused))
aot_table.print_table([refused])
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                         check=True, capture_output=True, text=True).stdout.strip().splitlines()
    assert out[0] == "refused by libtpu: 17.8 GiB of temporaries"
    assert "| 12 | no | > 17.8 (refused) | 16 |" in out[-1]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed")
def test_attention_bytes_compiles_each_formulation_and_the_kernel_moves_fewest(tmp_path):
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other test processes may hold libtpu's lock
    rows = run_benchmark("attention_bytes", "--topology=v5e:2x2", "--clips=8", tmp_path=tmp_path)
    spatial = {r["formulation"]: r for r in rows if r["sublayer"] == "spatial"}
    temporal = {r["formulation"]: r for r in rows if r["sublayer"] == "temporal"}
    assert set(spatial) == set(temporal) == {"heads-major", "token-major", "fused"}
    assert all(r["bytes_accessed"] > 0 and r["flops"] > 0 and r["xla_estimated_s"] is None for r in rows)  # v5e: none
    # The same matmuls either way (the kernel's estimate adds its recomputed q k^T: 1 of the sublayer's
    # 3 + 2 x 3 projection matmul groups is small).
    assert spatial["fused"]["flops"] == pytest.approx(spatial["heads-major"]["flops"], rel=0.05)
    assert spatial["fused"]["bytes_accessed"] < 0.6 * spatial["heads-major"]["bytes_accessed"]
    assert temporal["fused"]["flops"] == pytest.approx(temporal["heads-major"]["flops"], rel=0.05)
    assert temporal["fused"]["bytes_accessed"] < 0.6 * temporal["heads-major"]["bytes_accessed"]
