"""Our converter + model reproduce the original PyTorch HD-VILA on every parity fixture.

Fixtures: every folder under ``$HDVILA_PARITY_FIXTURES`` (default ``../shared/fixtures``).
Tolerances (``tests/reference_fixtures.py``, from the fixtures' README): relative error below
1e-4 per tensor (float32), losses within 1e-5 relative, per-parameter gradient L2 norms
within 1e-3 relative.
"""
import pytest

from tests.reference_fixtures import check_gradient_norms, check_outputs, fixture_dirs, fixtures_root

FOLDERS = fixture_dirs(fixtures_root())


def test_fixtures_exist():
    assert FOLDERS, f"no parity fixtures (folders with config.json) under {fixtures_root()}"


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_outputs_match_reference(folder):
    check_outputs(folder)


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_gradient_norms_match_reference(folder):
    check_gradient_norms(folder)
