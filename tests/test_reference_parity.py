"""Our converter + model reproduce the original PyTorch HD-VILA on every parity fixture.

Fixtures: every folder under ``$HDVILA_PARITY_FIXTURES`` (default ``shared/fixtures`` beside the repo), and every
downstream task folder under ``$HDVILA_TASK_FIXTURES`` (default ``shared/fixtures/tasks``) whose
``task.name`` is served here (``retrieval``: features, ``sim_t2v``, the summed task loss, the MSRVTT
multiple-choice features, scores and (exactly) predictions; ``qa`` / ``mc``: per-clip logits
``[K, B, C]``, clip-aggregated logits, (exactly) predictions, per-example and mean loss, head input
and hidden layer, and the text / cross-modal intermediates).
Tolerances (``tests/reference_fixtures.py``, from the fixtures' README): relative error below
1e-4 per tensor (float32), losses within 1e-5 relative, per-parameter gradient L2 norms
within 1e-3 relative plus 1e-6 of the largest reference norm.
"""
import pytest

from tests.reference_fixtures import (check_gradient_norms, check_outputs, fixture_dirs, fixtures_root,
                                      task_fixtures_root, task_name)

TASKS = ("retrieval", "qa", "mc")
TASK_FOLDERS = [f for f in fixture_dirs(task_fixtures_root()) if task_name(f) in TASKS]
FOLDERS = fixture_dirs(fixtures_root()) + TASK_FOLDERS


def test_fixtures_exist():
    assert fixture_dirs(fixtures_root()), f"no parity fixtures (folders with config.json) under {fixtures_root()}"
    assert TASK_FOLDERS, f"no {TASKS} task fixtures under {task_fixtures_root()}"


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_outputs_match_reference(folder):
    check_outputs(folder)


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_gradient_norms_match_reference(folder):
    check_gradient_norms(folder)
