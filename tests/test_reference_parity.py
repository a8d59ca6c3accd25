"""Our converter + model reproduce the original PyTorch HD-VILA on every parity fixture.

Fixtures: every folder under ``$HDVILA_PARITY_FIXTURES`` (default ``../shared/fixtures``).
Tolerances from the fixtures' README: relative error below 1e-4 per tensor (float32),
losses within 1e-5 relative, per-parameter gradient L2 norms within 1e-3 relative.
"""
import functools

import numpy as np
import pytest

from tests.reference_fixtures import fixture_dirs, fixtures_root, run_fixture

TENSOR_RTOL = 1e-4
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-3
# Gradients that are zero in exact arithmetic (e.g. attention key biases: softmax ignores a
# constant added to a row of logits) come out as float32 round-off, ~1e-9 here, in both
# implementations. Reference norms below this fraction of the largest one are such noise:
# ours must be as small, but their ratio means nothing.
ROUNDOFF_FRACTION = 1e-6
SCALARS = ("loss", "mlm_loss", "mlm_acc")

FOLDERS = fixture_dirs(fixtures_root())


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


@functools.lru_cache(maxsize=None)
def _run(folder):
    return run_fixture(folder)


def test_fixtures_exist():
    assert FOLDERS, f"no parity fixtures (folders with config.json) under {fixtures_root()}"


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_outputs_match_reference(folder):
    meta, ours, ref, _, _ = _run(folder)
    missing = sorted(set(ref) - set(ours))
    assert not missing, f"{folder.name}: outputs we do not produce: {missing}"
    errors = {}
    for name, value in ref.items():
        assert ours[name].shape == value.shape, f"{name}: shape {ours[name].shape} vs reference {value.shape}"
        if name in SCALARS and value == 0:  # e.g. the MLM accuracy of a random model: must be exactly 0 too
            assert ours[name] == 0, f"{name}: ours {ours[name]} vs reference 0"
            continue
        assert np.linalg.norm(value) > 0, f"{name}: reference is all zeros, comparison would be meaningless"
        errors[name] = relative_error(ours[name], value)
    print(f"\n{folder.name}: worst relative error {max(errors.values()):.2e} "
          f"({max(errors, key=errors.get)})")
    bad = {n: e for n, e in errors.items() if e >= (LOSS_RTOL if n in SCALARS else TENSOR_RTOL)}
    assert not bad, f"{folder.name}: relative errors over tolerance: {bad}"


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_gradient_norms_match_reference(folder):
    _, _, _, ours, ref = _run(folder)
    ref_norms = {k: v[0] for k, v in ref["l2_and_sum"].items()}
    without_grad = set(ref["params_without_grad"])
    # Every parameter the reference trains must exist in ours (no silently dropped weights).
    assert not (set(ref_norms) - set(ours)), f"parameters we lack: {sorted(set(ref_norms) - set(ours))}"
    floor = ROUNDOFF_FRACTION * max(ref_norms.values())
    noise = {k for k, n in ref_norms.items() if n < floor}
    loud = {k: ours[k] for k in noise if ours[k] >= floor}
    assert not loud, f"gradients the reference has as round-off (< {floor:.1e}) are large in ours: {loud}"
    errors = {k: abs(ours[k] - n) / n for k, n in ref_norms.items() if k not in noise}
    worst = max(errors, key=errors.get)
    print(f"\n{folder.name}: worst gradient-norm relative error {errors[worst]:.2e} ({worst})")
    assert errors[worst] < GRAD_RTOL, {k: e for k, e in errors.items() if e >= GRAD_RTOL}
    # What the reference's loss does not reach, ours does not reach either.
    reached = {k: ours[k] for k in without_grad & set(ours) if ours[k] != 0.0}
    assert not reached, f"gradients where the reference has none: {reached}"
