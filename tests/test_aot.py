"""Ahead-of-time compilation for a TPU topology on this CPU host (libtpu, never a TPU): the
trainer's step, traced for TPU, with memory, FLOPs and fit reported."""
import importlib.util
import os

import pytest

from hdvila_jax import accelerators, aot
from tests.train_helpers import tiny_config

# libtpu comes with the [test] extra on Linux x86-64 (jax[tpu]); elsewhere there is nothing to compile with.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other test processes may hold libtpu's lock


def _config():
    return tiny_config(1, "unused", **{"data.val_files": "unused-*.tfrecord"})


def test_topology_names_are_parsed_and_bad_ones_named():
    assert aot.chips_in("v5p:2x2x1") == 4 and aot.chips_in("v5e:2x4") == 8 and aot.chips_in("v5p:4x4x4") == 64
    with pytest.raises(aot.AotError, match="v5p-8"):
        aot.chips_in("v5p-8")
    with pytest.raises(aot.AotError, match="--topology='v99:2x2'"):
        aot.topology_devices("v99:2x2")
    for bad in (0, -2):  # named as the flag the user set, not as the batch size it would make
        with pytest.raises(aot.AotError, match=f"^--per_chip_batch={bad}: must be a positive integer$"):
            aot.compile_for_topology(_config(), "v5e:2x4", per_chip_batch=bad)


def test_tpu_step_is_traced_with_tpu_convolutions():
    # On CPU, 1x1 convolutions become matmuls and small maps im2col; for TPU every one stays a convolution.
    from hdvila_jax.train.step_builder import build_step
    import jax
    config = _config()
    config.batch_size = config.eval_batch_size = 4
    tpu = build_step(config, aot.topology_devices("v5e:2x2")).lower().as_text()
    cpu = build_step(config, jax.devices("cpu")[:1]).lower().as_text()
    kernels = sum(1 for line in tpu.splitlines() if "stablehlo.convolution" in line)
    assert kernels > 2 * cpu.count("stablehlo.convolution") > 0
    # The tiny model's 38 convolution kernels (two ResNet-18s, the grid and fuse layers), each run forward
    # and for its kernel gradient (and, but for the first, its input gradient).
    assert kernels >= 2 * 38


@pytest.mark.slow
def test_fused_attention_compiles_to_mosaic_kernels_per_shard(tmp_path):
    # The tiny step with config.model.fused_attention, all-FSDP over 4 v5e chips: each TimeSformer block's
    # spatial and temporal attentions are a forward and a backward Mosaic kernel each inside the step's
    # shard_map, and libtpu compiles them. (The eval step is traced without a mesh: XLA's attention,
    # nothing to partition.)
    config = _config()
    config.model.fused_attention = True
    config.mesh.data, config.mesh.fsdp = 1, -1
    hlo = tmp_path / "step.hlo"
    row = aot.compile_for_topology(config, "v5e:2x2", per_chip_batch=2, hlo_path=str(hlo))
    kernels = [line for line in hlo.read_text().splitlines() if 'custom_call_target="tpu_custom_call"' in line]
    assert len(kernels) == 4 * config.model.timesformer_depth
    assert sum("forward_kernel" in k for k in kernels) == sum("backward_kernel" in k for k in kernels)
    assert sum("temporal_forward_kernel" in k for k in kernels) == config.model.timesformer_depth
    assert row["fits"] and row["eval"]["fits"] and row["flops_per_chip_step"] > 0


@pytest.fixture(scope="module")
def report():
    return aot.compile_for_topology(_config(), "v5e:2x2", per_chip_batch=2)


@pytest.mark.slow
def test_tiny_train_and_eval_steps_compile_for_v5e_and_fit(report):
    assert (report["topology"], report["chip"], report["chips"], report["devices"]) == ("v5e:2x2", "TPU v5e", 4, 4)
    assert report["global_batch"] == 8 and report["per_chip_batch"] == 2 and report["mesh"] == {"data": 4, "fsdp": 1}
    assert report["libtpu_flags"] == "--xla_tpu_enable_windowed_einsum_for_reduce_scatter=false"  # what it compiled with
    for row in (report, report["eval"]):
        assert row["fits"] and 0 < row["peak_bytes_per_chip"] < 16 * accelerators.GIB
        assert row["peak_bytes_per_chip"] == (row["arguments_bytes_per_chip"] + row["outputs_bytes_per_chip"]
                                              - row["aliased_bytes_per_chip"] + row["temporaries_bytes_per_chip"])
        assert row["flops_per_chip_step"] > 0 and row["hbm_bytes_accessed_per_chip_step"] > 0
    assert report["aliased_bytes_per_chip"] > 0  # the train state is donated
    # A train step (forward + backward over 2 examples per chip) costs more than encoding 2 eval examples.
    assert report["flops_per_chip_step"] > report["eval"]["flops_per_chip_step"]
    assert aot.fit_error(report) is None


@pytest.mark.slow
def test_a_step_that_does_not_fit_is_named(report):
    small = dict(report, fits=False, hbm_bytes_per_chip=2 ** 20)
    error = aot.fit_error(small)
    assert "the train step does not fit" in error and "per chip of 0.00 GiB HBM (TPU v5e)" in error
    assert "eval step" not in error and "--per_chip_batch" in error


def test_hlo_profile_counts_ops_by_kind_and_the_bytes_they_write():
    from hdvila_jax.hlo_profile import op_profile
    hlo = """HloModule m

%fused_conv (p0: bf16[2,8,8,4], p1: bf16[3,3,4,4]) -> bf16[2,8,8,4] {
  %p0 = bf16[2,8,8,4]{3,2,1,0} parameter(0)
  %p1 = bf16[3,3,4,4]{3,2,1,0} parameter(1)
  ROOT %c = bf16[2,8,8,4]{3,2,1,0} convolution(%p0, %p1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
}

%fused_relu (p0: bf16[2,8,8,4]) -> bf16[2,8,8,4] {
  %p0 = bf16[2,8,8,4]{3,2,1,0} parameter(0)
  %z = bf16[] constant(0)
  %b = bf16[2,8,8,4]{3,2,1,0} broadcast(%z), dimensions={}
  ROOT %m = bf16[2,8,8,4]{3,2,1,0} maximum(%p0, %b)
}

%body (s: (s32[], f32[16])) -> (s32[], f32[16]) {
  %s = (s32[], f32[16]{0}) parameter(0)
  %x = f32[16]{0} get-tuple-element(%s), index=1
  %ar = f32[16]{0} all-reduce(%x), to_apply=%add
  ROOT %t = (s32[], f32[16]{0}) tuple(%i, %ar)
}

ENTRY %main (x: bf16[2,8,8,4], k: bf16[3,3,4,4]) -> bf16[2,8,8,4] {
  %x = bf16[2,8,8,4]{3,2,1,0:T(8,128)(2,1)} parameter(0)
  %k = bf16[3,3,4,4]{3,2,1,0} parameter(1)
  %ags = (bf16[1,8,8,4]{3,2,1,0}, bf16[2,8,8,4]{3,2,1,0}, u32[]) all-gather-start(%x), dimensions={0}
  %agd = bf16[2,8,8,4]{3,2,1,0} all-gather-done(%ags)
  %conv = bf16[2,8,8,4]{3,2,1,0} fusion(%agd, %k), kind=kOutput, calls=%fused_conv
  %w = (s32[], f32[16]{0}) while(%init), condition=%cond, body=%body
  ROOT %relu = bf16[2,8,8,4]{3,2,1,0} fusion(%conv), kind=kLoop, calls=%fused_relu
}
"""
    rows = {r["kind"]: (r["count"], r["output_bytes"]) for r in op_profile(hlo)}
    activation = 2 * 8 * 8 * 4 * 2  # bytes of one bf16[2,8,8,4]
    assert rows == {"convolution / matmul fusion": (1, activation), "elementwise / copy fusion": (1, activation),
                    "all-gather": (1, activation), "all-reduce": (1, 16 * 4)}


def test_module_profile_groups_bytes_by_model_part_and_pass():
    from hdvila_jax.hlo_profile import NO_SOURCE, OUTSIDE_MODEL, module_profile
    hlo = """HloModule m

ENTRY %main (x: f32[4,8]) -> f32[4,8] {
  %x = f32[4,8]{1,0} parameter(0)
  %a = f32[4,8]{1,0} add(%x, %x), metadata={op_name="jit(step)/jvp(M)/M.encode/video/timesformer/block_0/attn/add"}
  %b = f32[4,8]{1,0} add(%a, %x), metadata={op_name="jit(step)/jvp(M)/M.encode/video/timesformer/block_1/dot_general"}
  %c = f32[4,8]{1,0} add(%b, %x), metadata={op_name="jit(step)/transpose(jvp(M))/M.encode/video/cnn_hr/conv1/mul"}
  %d = f32[4,8]{1,0} copy(%c)
  ROOT %e = f32[4,8]{1,0} multiply(%d, %x), metadata={op_name="jit(step)/mul"}
}
"""
    rows = {r["part"]: (r["count"], r["output_bytes"]) for r in module_profile(hlo)}
    one = 4 * 8 * 4
    assert rows == {"forward video/timesformer": (2, 2 * one), "backward video/cnn_hr": (1, one),
                    NO_SOURCE: (1, one), OUTSIDE_MODEL: (1, one)}


@pytest.mark.parametrize("qa_type", ["open", "multiple_choice"])
def test_qa_eval_step_lowers_for_tpu(qa_type):
    from configs import qa
    from hdvila_jax.train.step_builder import build_step
    config = qa.get_config("tiny")
    config.qa.type = qa_type
    config.model.num_qa_outputs = 7 if qa_type == "open" else 1  # the open answer vocabulary's size
    config.batch_size = config.eval_batch_size = 4
    built = build_step(config, aot.topology_devices("v5e:2x2"))
    text = aot.eval_step_lowered(built).as_text()
    choices = "5x" if qa_type == "multiple_choice" else ""  # the candidate answers of each question
    assert "stablehlo.convolution" in text and f"tensor<4x{choices}" in text


def test_libtpus_refusal_is_read_as_a_step_that_does_not_fit():
    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (18.09G) "
               "exceeds available HBM (15.75G).\nmore detail")
    row = aot.refused_report(message, 1, accelerators.chip_of("TPU v5e"))
    assert row["fits"] is False and row["peak_bytes_per_chip"] is None
    assert row["temporaries_bytes_per_chip"] == pytest.approx(18.09 * 2 ** 30)
    assert row["available_hbm_bytes_per_chip"] == pytest.approx(15.75 * 2 ** 30)
    assert row["compile_refused"] == message.splitlines()[0]
    error = aot.fit_error(dict(row, chip="TPU v5e"))
    assert error.startswith("the train step does not fit: libtpu refused to compile it: 18.09 GiB of temporaries "
                            "per chip exceed the 15.75 GiB of HBM available (TPU v5e)")
    unnamed = aot.refused_report("RESOURCE_EXHAUSTED: out of memory", 1, accelerators.chip_of("TPU v5e"))
    assert unnamed["temporaries_bytes_per_chip"] is None
    assert "libtpu refused to compile it (RESOURCE_EXHAUSTED: out of memory)" in aot.fit_error(dict(unnamed, chip="x"))


@pytest.mark.slow
def test_a_step_libtpu_refuses_is_reported_not_a_traceback(tmp_path):
    # 9000 tiny examples per chip need 19.5 GiB of temporaries on a 16 GiB v5e: libtpu refuses to compile it
    # (6000 needed 18 GiB before the stems pooled before their ReLU, 13.5 GiB since).
    import json
    import subprocess
    import sys
    out = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "hdvila_jax.aot", "--config=configs/stage1.py:tiny", "--topology=v5e:2x2",
         "--per_chip_batch=9000", "--eval=false", f"--json={out}"],
        capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=600)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: the train step does not fit: libtpu refused to compile it: ")
    assert "fits: False" in result.stdout and "compile_refused: RESOURCE_EXHAUSTED" in result.stdout
    report = json.loads(out.read_text())
    assert report["fits"] is False and report["per_chip_batch"] == 9000
    assert report["temporaries_bytes_per_chip"] > report["available_hbm_bytes_per_chip"] > 15 * accelerators.GIB


@pytest.mark.parametrize("flag, message", [
    ("--per_chip_batch=0", "error: --per_chip_batch=0: must be a positive integer"),
    ("--config.model.remat_policy=nope", "error: model config field 'remat_policy': must be one of")])
def test_aot_command_line_mistakes_are_one_line(flag, message):
    import subprocess
    import sys
    command = [sys.executable, "-m", "hdvila_jax.aot", "--config=configs/stage1.py:tiny", "--topology=v5e:2x2",
               "--per_chip_batch=2", "--eval=false", flag]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    debug = subprocess.run(command + ["--debug"], capture_output=True, text=True,
                           env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert debug.returncode == 1 and "Traceback" in debug.stderr  # --debug shows where it came from


def test_config_libtpu_flags_reach_libtpu():
    # A flag libtpu does not know stops it: the config's flags are in LIBTPU_INIT_ARGS when it starts.
    import subprocess
    import sys
    command = [sys.executable, "-m", "hdvila_jax.aot", "--config=configs/stage1.py:tiny", "--topology=v5e:2x2",
               "--per_chip_batch=2", "--eval=false", "--config.libtpu_flags=--xla_tpu_no_such_flag_here=1"]
    env = {k: v for k, v in os.environ.items() if k != "LIBTPU_INIT_ARGS"}
    result = subprocess.run(command, capture_output=True, text=True, env=dict(env, JAX_PLATFORMS="cpu"), timeout=600)
    assert result.returncode != 0 and "Unknown command line flag 'xla_tpu_no_such_flag_here'" in result.stderr
