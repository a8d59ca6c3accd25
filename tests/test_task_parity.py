"""Our converter + stage-1 model + retrieval task functions reproduce the original's downstream retrieval.

Fixtures: every folder under ``$HDVILA_TASK_FIXTURES`` (default ``../shared/fixtures/tasks``) whose
``task.name`` is ``retrieval``; qa / mc folders are served by the QA test. Compared: the features,
``sim_t2v``, the task loss (``retrieval_loss`` at ``task.temp``), every intermediate the fixture has, the
MSRVTT multiple-choice features, scores and (exactly) predictions, and the per-parameter gradient norms,
with the tolerances of ``tests/reference_fixtures.py``.
"""
import pytest

from tests.reference_fixtures import check_gradient_norms, check_outputs, fixture_dirs, task_fixtures_root, task_name

TASKS = ("retrieval",)
FOLDERS = [f for f in fixture_dirs(task_fixtures_root()) if task_name(f) in TASKS]


def test_task_fixtures_exist():
    assert FOLDERS, f"no {TASKS} task fixtures under {task_fixtures_root()}"


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_task_outputs_match_reference(folder):
    check_outputs(folder)


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_task_gradient_norms_match_reference(folder):
    check_gradient_norms(folder)
