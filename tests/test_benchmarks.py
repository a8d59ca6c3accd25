"""The benchmark scripts in their CI-sized (--quick) form, and the analytic FLOP count."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import perf_report
from benchmarks.interleave import median_interleaved
from benchmarks.model_flops import forward_flops, train_flops
from benchmarks.parts import STAGE1_PARTS, STAGE2_PARTS
from benchmarks.scaling import collectives_of
from benchmarks.settings import XLA_CPU_VARIANTS
from configs import model as model_configs
from configs import stage1
from hdvila_jax import huge_page_malloc
from hdvila_jax.kernels import onednn_conv
from hdvila_jax.models import HDVILA, conv, model_config_from_dict
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
def test_analytic_forward_flops_match_xla_cost_analysis(stage, monkeypatch):
    # XLA's count of the portable lowering: the CPU one runs small maps as im2col matmuls, which
    # also multiply the zero padding that the analytic count leaves out.
    monkeypatch.setattr(conv, "uses_cpu_lowering", lambda: False)
    cfg = small_config(crop_size=(128, 192), pixel_random_sampling_size=4)
    batch = example_batch(cfg, batch=2, clips=2, text_len=12)
    model = HDVILA(cfg)
    compiled = jax.jit(lambda v, b: model.apply(v, b, stage=stage)).lower(abstract_variables(cfg, stage), batch).compile()
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


def test_perf_report_rows_are_grouped_by_library():
    sep = perf_report.SEPARATOR
    report = "\n".join([
        "# Samples: 1K of event 'cpu-clock:ppp'",
        f"#      Samples{sep}Shared Object{sep}Symbol",
        f" 600  {sep}libjax_common.so {sep}[.] ynn::dot_fp32_5x64x1_1x16x1_avx512",
        f" 150  {sep}libjax_common.so {sep}[.] Eigen::internal::gemm_pack<float, long>::operator()(float*) const",
        f" 120  {sep}[JIT] tid 4678   {sep}[.] 0x00007fa84f95a1bc",
        f" 80   {sep}[JIT] tid 4679   {sep}[.] 0x00007fa84f95a3ca",
        f" 40   {sep}[kernel.kallsyms]{sep}[k] clear_page_erms",
        f" 10   {sep}libc.so.6        {sep}[.] __memmove_avx512_unaligned_erms",
        "",
    ])
    rows = perf_report.parse_report(report)
    assert rows[1] == (150, "libjax_common.so", "Eigen::internal::gemm_pack::operator")
    assert rows[2] == (120, "[JIT]", perf_report.UNNAMED)
    table = perf_report.by_library(rows, steps=2, top=2)
    assert [r["library"] for r in table] == ["libjax_common.so", "[JIT]", "other"]
    assert [r["share"] for r in table] == pytest.approx([0.75, 0.2, 0.05])
    # samples / FREQUENCY seconds of CPU time over 2 steps
    assert table[0]["cpu_ms_per_step"] == pytest.approx(1e3 * 750 / perf_report.FREQUENCY / 2)
    assert (table[0]["top_function"], table[0]["top_function_share"]) == ("ynn::dot_fp32_5x64x1_1x16x1_avx512", 0.6)
    assert table[2]["cpu_ms_per_step"] == pytest.approx(1e3 * 50 / perf_report.FREQUENCY / 2)


def test_profile_step_benchmark_quick(tmp_path):
    rows = run_benchmark("profile_step", "--quick", tmp_path=tmp_path)
    assert [r["part"] for r in rows] == list(STAGE1_PARTS + STAGE2_PARTS)
    for r in rows:
        assert r["convs"] == "xla"
        for side in ("ours", "original"):
            assert r[f"{side}_forward_ms"] > 0 and r[f"{side}_forward_backward_ms"] > 0


def test_vs_reference_benchmark_quick(tmp_path):
    rows = run_benchmark("vs_reference", "--quick", "--xla_variants=default,no_ynn", "--convs=onednn,xla",
                         tmp_path=tmp_path)
    assert [(r["stage"], r["convs"], r["xla_variant"]) for r in rows] == [
        (stage, conv, variant) for stage in (1, 2) for conv in ("onednn", "xla") for variant in ("default", "no_ynn")]
    for r in rows:
        assert np.isfinite(r["ours_loss"]) and np.isfinite(r["original_loss"])
        assert r["ratio"] == pytest.approx(r["ours_examples_per_s"] / r["original_examples_per_s"])
    for stage_rows in (rows[:4], rows[4:]):  # the same step under other kernels: the same loss
        for other in stage_rows[1:]:
            assert other["ours_loss"] == pytest.approx(stage_rows[0]["ours_loss"], rel=1e-4)
        assert len({r["original_loss"] for r in stage_rows}) == 1  # one original per stage


@pytest.mark.skipif(not huge_page_malloc.takes_effect(), reason=huge_page_malloc.NEEDS)
def test_page_faults_benchmark_quick(tmp_path):
    small, huge, cached = run_benchmark("page_faults", "--quick", tmp_path=tmp_path)
    assert [r["malloc"] for r in (small, huge, cached)] == ["4 KiB pages", "huge pages", "huge pages + block cache"]
    assert (small["glibc_tunables"], huge["glibc_tunables"]) == ("glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=1")
    assert (small["preloaded"], huge["preloaded"]) == ("", "") and cached["preloaded"].startswith("block_cache-")
    assert small["temp_mib"] == huge["temp_mib"] == cached["temp_mib"] > 64  # above what glibc keeps in a thread's heap
    # Without huge pages every 4 KiB page of the temporaries faults in again on every step.
    assert small["minor_faults_per_step"] > 0.9 * small["temp_mib"] * 256
    assert huge["minor_faults_per_step"] < 0.1 * small["minor_faults_per_step"]
    assert huge["kernel_cores"] < small["kernel_cores"]
    # The block cache keeps the temporaries mapped (tests/test_block_cache.py measures it alone); over
    # 2 steps the rest of the process's faults vary too much between runs to order it against huge pages.
    assert cached["minor_faults_per_step"] < 0.1 * small["minor_faults_per_step"]


@pytest.mark.parametrize("variant", sorted(XLA_CPU_VARIANTS))
def test_xla_cpu_variants_are_accepted_and_decide_who_runs_the_convolutions(variant):
    x, k = jax.ShapeDtypeStruct((2, 16, 16, 64), np.float32), jax.ShapeDtypeStruct((3, 3, 64, 64), np.float32)
    block = jax.jit(lambda x, k: jax.nn.relu(conv.conv2d(jax.nn.relu(conv.conv2d(x, k)), k) + x))
    with onednn_conv.used(False):  # XLA's convolutions, which the variants are about
        hlo = block.lower(x, k).compile(compiler_options=XLA_CPU_VARIANTS[variant] or None).as_text()
    # jaxlib 0.10: YNNPACK takes each convolution by default; without it in the fusion types they go
    # back to Eigen; ynn_graphs fuses both with the elementwise work between them into one graph.
    expected = dict(default=2, no_ynn=0, ynn_dot_reduce=0, ynn_graphs=1)[variant]
    assert hlo.count('"__ynn_fusion"') == expected


def test_residuals_benchmark_quick(tmp_path):
    rows = run_benchmark("residuals", "--quick", tmp_path=tmp_path)
    by_policy = {r["policy"]: r for r in rows}
    assert list(by_policy) == ["none", "stage", "block", "block_dots"]
    mib = {p: r["activation_mib"] for p, r in by_policy.items()}
    # Remat keeps fewer activations; keeping the conv/matmul outputs keeps more than keeping none.
    assert 0 < mib["stage"] < mib["block"] < mib["block_dots"] < mib["none"]
    # Under remat the backward pass keeps the float32 parameters themselves (arguments); without, the
    # bf16 copies the forward made of them (activations).
    assert by_policy["none"]["argument_mib"] < by_policy["stage"]["argument_mib"]


def test_scaling_benchmark_quick(tmp_path):
    dp1, fsdp2 = run_benchmark("scaling", "--quick", tmp_path=tmp_path)
    assert (dp1["mode"], dp1["devices"], fsdp2["mode"], fsdp2["devices"]) == ("dp", 1, "fsdp", 2)
    assert dp1["collectives"] == {} and dp1["sharded_params"] == 0
    assert fsdp2["sharded_params"] > 0 and fsdp2["collectives"]["all-gather"]["count"] > 0
    assert fsdp2["loss_rel_diff"] < 1e-5
    assert fsdp2["update_rel_diff"] < 1e-3
