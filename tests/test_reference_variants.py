"""Parity on fixtures beyond the shared ones, made here by the PyTorch port of the original model.

``reference/`` (the top-level package) re-implements the original HD-VILA forward pass (same module tree, state_dict keys
and computations); ``test_torch_port_reproduces_shared_fixtures`` shows it reproduces the shared fixtures.
Each variant (other seeds, frame sizes incl. the native 640x1024 grid, batch sizes, clip counts, score
aggregations, ResNet depths, bert_mean) is written to a temporary folder and checked by the very checks of
``tests/reference_fixtures.py`` that ``test_reference_parity.py`` runs, with the same tolerances. The
task variants are checked like the shared task fixtures: retrieval (other frame counts F, batch sizes, clip
counts, 640x1024) and video QA (clip aggregations mean / max / lse, 1-3 clips, batch 1-3), open-ended (``qa``:
3 or 11 answers, 640x1024) and multiple choice (``mc``: 3 or 5 choices).
"""
import functools
import pathlib

import pytest

pytest.importorskip("torch")

from tests.reference_fixtures import (DEFAULT_ROOT, DEFAULT_TASK_ROOT, check_gradient_norms, check_outputs,  # noqa: E402
                                     fixture_dirs, task_name)
from tests.test_float64_gradients import assert_float64_agrees  # noqa: E402
from reference.make_fixture import (TASK_STAGE, fixture_roundoff, make_fixture,  # noqa: E402
                                                reproduce_fixture)

# The port runs the original's computation op for op: it must match the shared fixtures to round-off.
# Gradients: |L2 diff| <= PORT_GRAD_RTOL * L2 + PORT_ATOL_FRACTION * (largest L2), and the signed sums
# (which cancel) |sum diff| <= PORT_SUM_RTOL * L2 + the same floor. The fixtures were written on
# another CPU whose convolution kernels sum in another order, and so does each CPU the tests run on:
# on an Intel AVX-512 host the port's float32 ResNet weight-gradient norms moved by up to ~1e-5 and
# their sums by up to ~3e-4 of the L2 norm; on an AMD EPYC host (PyTorch's AVX2 kernels) by up to
# 8.8e-5 (cnn_low.layer1.0.downsample.1 of mc_tiny) and 8.0e-2 (cnn.layer4.0.conv1 of retrieval_tiny,
# a sum that nearly cancels). Hence the project's float32 bound, 1e-4, on the norms, and 0.1 on the
# sums, which only catches gross errors. Gradients that are zero in exact arithmetic (attention key
# biases, ~1e-8) are noise on every machine.
PORT_RTOL = 1e-5
PORT_GRAD_RTOL = 1e-4
PORT_SUM_RTOL = 0.1
PORT_ATOL_FRACTION = 1e-6

# Tiny BERT / TimeSformer (vocab 1000, hidden 64, 4 layers) and ResNet-18 keep this short; the shared
# fixtures cover ResNet-50. Seeds are ones make_fixture does not refuse as fragile (a ReLU input within
# round-off of its kink can move a backbone gradient norm by ~1e-3 in any float32 implementation).
VARIANTS = {
    "s2_mean_bertmean0_b3c1": dict(stage=2, score_agg="mean", bert_mean=0, batch=3, clips=1, resnet_depth=18,
                                   seed=5),
    "s1_bertmean0_c3_192x128": dict(stage=1, bert_mean=0, batch=2, clips=3, hw=(192, 128), resnet_depth=18,
                                    seed=23),
    "s2_max_c3_seq10": dict(stage=2, score_agg="max", batch=2, clips=3, seq=10, resnet_depth=18, seed=14),
    # The native TimeSformer grid 10x16: no position-embedding resizing; 160 visual tokens.
    "s2_640x1024_b1c1": dict(stage=2, hw=(640, 1024), batch=1, clips=1, resnet_depth=18, seed=17),
}
RETRIEVAL = dict(task="retrieval", stage=1, resnet_depth=18)
QA = dict(task="qa", resnet_depth=18)
MC = dict(task="mc", resnet_depth=18)
TASK_VARIANTS = {
    # F != 7: time_embed resized linearly to F, the TimeSformer output kept at index (F-1)/2.
    # Seed 4 put one HR ResNet ReLU input 3e-7 rms from its kink: our float32 landed on the other side (1.7e-3 on
    # cnn.layer1.0.bn2.weight); in float64 ours matches the port to 1e-14 (tests/test_float64_gradients.py).
    "retrieval_f11_b3c2": dict(RETRIEVAL, frames=11, batch=3, clips=2, seed=7),
    "retrieval_f13_b2c1": dict(RETRIEVAL, frames=13, batch=2, clips=1, seed=7),
    "retrieval_640x1024_b2c1": dict(RETRIEVAL, hw=(640, 1024), batch=2, clips=1, seed=17),
    # Video QA: score_agg is the clip aggregation of the [K, B, C] logits, answers the answers / choices C. Each
    # aggregation also runs over several clips (with one clip all three are the identity): max and mean here, lse
    # in the shared qa_tiny and at 640x1024; mc over two clips is the shared mc_tiny. The 640x1024 seed: 31 came
    # near make_fixture's refusal threshold (reference gradient round-off 1.1e-4 of 2.5e-4), 33 gives 4.0e-5.
    "qa_max_a11_b1c3": dict(QA, score_agg="max", answers=11, batch=1, clips=3, seed=31),
    "qa_mean_a3_b3c1": dict(QA, score_agg="mean", answers=3, batch=3, clips=1, seed=31),
    "mc_mean_n5_b2c3": dict(MC, score_agg="mean", answers=5, batch=2, clips=3, seed=31),
    "mc_lse_n3_b3c1": dict(MC, score_agg="lse", answers=3, batch=3, clips=1, seed=31),
    "qa_640x1024_lse_b1c2": dict(QA, score_agg="lse", answers=11, batch=1, clips=2, hw=(640, 1024), seed=33),
}
SLOW = {"retrieval_640x1024_b2c1", "qa_640x1024_lse_b1c2"}
ALL_VARIANTS = {**VARIANTS, **TASK_VARIANTS}
# The port is checked against the shared pretraining fixtures and the shared task fixtures of the tasks it writes.
SHARED = fixture_dirs(DEFAULT_ROOT) + [f for f in fixture_dirs(DEFAULT_TASK_ROOT) if task_name(f) in TASK_STAGE]


@pytest.fixture(scope="module")
def variants_root(tmp_path_factory):
    return tmp_path_factory.mktemp("reference_variants")


@functools.lru_cache(maxsize=None)
def _folder(root: pathlib.Path, name: str) -> pathlib.Path:
    # The float64 fragility check runs only when a comparison fails (see _explained).
    return make_fixture(root / name, check_roundoff=False, **ALL_VARIANTS[name])


def _explained(check, folder):
    """Run a parity check; on failure, say how far the fixture's float32 reference is from float64."""
    try:
        check(folder)
    except AssertionError as e:
        out_err, grad_err, worst_out, worst_grad = fixture_roundoff(folder)
        raise AssertionError(f"{e}\n(this fixture's float32 reference (and perturbed reruns) vs float64: outputs {out_err:.1e} "
                             f"({worst_out}), gradient L2 norms {grad_err:.1e} ({worst_grad}))") from e


@pytest.mark.parametrize("folder", SHARED, ids=lambda f: f.name)
def test_torch_port_reproduces_shared_fixtures(folder):
    out_err, grad_err, loss_err, same_without_grad = reproduce_fixture(folder)
    bad = {k: e for k, e in out_err.items() if e >= PORT_RTOL}
    assert not bad, f"port outputs differ from {folder.name}: {bad}"
    assert loss_err < PORT_RTOL
    floor = PORT_ATOL_FRACTION * max(ref for _, _, ref in grad_err.values())
    bad = {k: (l2, total, ref) for k, (l2, total, ref) in grad_err.items()
           if l2 > PORT_GRAD_RTOL * ref + floor or total > PORT_SUM_RTOL * ref + floor}
    assert not bad, f"port gradient (|L2 diff|, |sum diff|, L2) differ from {folder.name}: {bad}"
    assert same_without_grad, "the port's parameters with / without gradient differ from the fixture's"


# Variants whose gradient norms are known not to match (xfail, strict): none.
KNOWN_GRADIENT_GAPS: dict[str, str] = {}


def _params(names, xfail=None):
    marks = {n: [pytest.mark.slow] if n in SLOW else [] for n in names}
    for n, reason in (xfail or {}).items():
        marks[n].append(pytest.mark.xfail(strict=True, reason=reason))
    return [pytest.param(n, marks=m) for n, m in marks.items()]


@pytest.mark.parametrize("name", _params(ALL_VARIANTS))
def test_variant_outputs_match_reference(name, variants_root):
    _explained(check_outputs, _folder(variants_root, name))


@pytest.mark.parametrize("name", _params(ALL_VARIANTS, KNOWN_GRADIENT_GAPS))
def test_variant_gradient_norms_match_reference(name, variants_root):
    folder = _folder(variants_root, name)
    try:
        _explained(check_gradient_norms, folder)
    except AssertionError:
        # A ReLU input within float32 round-off of its kink moves a backbone gradient norm by ~1e-3 in any
        # float32 implementation, and whether one sits there depends on the CPU's summation order (seed 7 of
        # retrieval_f11_b3c2: 1.3e-3 on cnn.layer1.1.conv1.weight on an AMD EPYC host, none on an Intel one).
        # Then ours and the port must agree in float64, where round-off is ~1e-16 (tests/test_float64_gradients.py).
        if ALL_VARIANTS[name].get("task") != "retrieval":  # the float64 comparison serves retrieval fixtures
            raise
        assert_float64_agrees(folder)
