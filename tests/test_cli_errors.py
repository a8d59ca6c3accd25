"""User mistakes on the command lines end in one ``error:`` line naming the flag or field, exit 1, no
traceback (issue 31: ``hdvila_jax.main``, ``evaluate``, ``search``, ``convert``; ``--debug`` and the shared
``hdvila_jax.cli_errors``); the data commands' are in ``test_data_cli_errors.py``."""
import os
import pickle
import subprocess
import sys

import pytest

from hdvila_jax import cli_errors
from tests import train_helpers

TINY = os.path.join(train_helpers.REPO, "configs", "stage1.py:tiny")


def _fails(args: list[str], cwd) -> str:
    """Run ``python -m ARGS`` expecting exit 1 and no traceback; its last stderr line."""
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=train_helpers.subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("override, expected", [
    ("--config.batch_sise=8", "error: --config.batch_sise: config has no field 'batch_sise'; did you mean batch_size"),
    ("--config.model.hidden_sizee=8",
     "error: --config.model.hidden_sizee: config.model has no field 'hidden_sizee'; did you mean hidden_size"),
    ("--config.nothing_like_it=1", "error: --config.nothing_like_it: config has no field 'nothing_like_it'; "
                                   "config has: batch_size, best_metric,"),
    ("--config.batch_size=-3", "error: config.batch_size: must be a positive integer, got -3"),
])
def test_main_names_the_bad_config_field(override, expected, tmp_path):
    last = _fails(["hdvila_jax.main", f"--config={TINY}", f"--workdir={tmp_path / 'run'}", override], tmp_path)
    assert last.startswith(expected), last
    assert not os.path.exists(tmp_path / "run" / "checkpoints")  # stopped before anything was made


def test_main_refuses_a_workdir_that_is_a_file(tmp_path):
    workdir = tmp_path / "notes.txt"
    workdir.write_text("keep me")
    assert _fails(["hdvila_jax.main", f"--config={TINY}", f"--workdir={workdir}"], tmp_path) == (
        f"error: --workdir={workdir} is a file; name a folder (new or a run's)")
    assert workdir.read_text() == "keep me"


def test_evaluate_with_no_set_found_is_an_error(tmp_path):
    last = _fails(["hdvila_jax.evaluate", f"--checkpoint={tmp_path / 'ckpt'}", "--sets=msrvtt,didemo",
                   f"--data_root={tmp_path / 'nothing'}", f"--workdir={tmp_path / 'eval'}"], train_helpers.REPO)
    assert last.startswith("error: no set could be evaluated: no records match msrvtt (") and "didemo (" in last


def test_search_query_refuses_an_empty_text(tmp_path):
    last = _fails(["hdvila_jax.search", "query", f"--index={tmp_path / 'index'}", "a dog", " "], tmp_path)
    assert last == "error: query 2 of 2 is empty: give each query some text"


def test_evaluate_warns_about_a_set_too_small_to_mean_much():
    from hdvila_jax import evaluate
    warning = evaluate.small_set_warning("tiny", 8)
    assert warning.startswith("warning: set tiny has only 8 videos: its recalls move in steps of 12.5 points")
    assert evaluate.small_set_warning("msrvtt", 1000) == ""


def test_convert_and_build_name_a_missing_file(tmp_path):
    missing = tmp_path / "nope.bin"
    assert _fails(["hdvila_jax.convert", "--model_config=configs/model.py:tiny", f"--output={tmp_path / 'out'}",
                   f"--bert={missing}"], train_helpers.REPO) == f"error: checkpoint file not found: {missing}"
    assert _fails(["data_pipelines.build_tfrecords", "--videos", str(tmp_path), "--annotations",
                   str(tmp_path / "a.jsonl"), "--output", str(tmp_path / "records")], train_helpers.REPO) == (
        f"error: --annotations {tmp_path / 'a.jsonl'}: no such file")
    assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "records")


def test_debug_shows_the_traceback_before_the_same_line(tmp_path):
    """--debug (hdvila_jax.cli_errors): the traceback, then the one line, exit 1; also for a config field
    named before absl parsed --debug itself."""
    for override, last in (("--config.batch_size=-3", "error: config.batch_size: must be a positive integer, got -3"),
                           ("--config.batch_sise=8", "error: --config.batch_sise: config has no field 'batch_sise'")):
        proc = subprocess.run([sys.executable, "-m", "hdvila_jax.main", f"--config={TINY}",
                               f"--workdir={tmp_path / 'run'}", override, "--debug"], cwd=tmp_path,
                              env=train_helpers.subprocess_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1 and "Traceback" in proc.stderr, proc.stderr[-3000:]
        assert proc.stderr.strip().splitlines()[-1].startswith(last)
    proc = subprocess.run([sys.executable, "-m", "hdvila_jax.search", "query", f"--index={tmp_path}", " ", "--debug"],
                          cwd=tmp_path, env=train_helpers.subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "SearchError" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: query 1 of 1 is empty: give each query some text"


def test_debug_in_argv_takes_the_last_word():
    assert cli_errors.debug_in_argv(["prog", "--debug"])
    assert cli_errors.debug_in_argv(["prog", "--nodebug", "--debug=true"])
    assert not cli_errors.debug_in_argv(["prog", "--debug", "--nodebug"])
    assert not cli_errors.debug_in_argv(["prog", "--debug=false", "--debugger"])


class _Mistake(Exception):
    pass


def test_user_errors_stops_on_a_named_cause_and_lets_bugs_through(capsys):
    with pytest.raises(SystemExit) as stopped:
        with cli_errors.user_errors(_Mistake, debug=False):
            try:
                raise _Mistake("--flag X: no such file")
            except _Mistake as err:
                raise RuntimeError("a worker failed") from err  # wrapped, as an input worker's error arrives
    assert stopped.value.code == 1
    assert capsys.readouterr().err == "error: --flag X: no such file\n"
    with pytest.raises(KeyError):  # not a user's mistake: the traceback is wanted
        with cli_errors.user_errors(_Mistake, debug=False):
            raise KeyError("bug")
    with pytest.raises(SystemExit) as stopped:
        with cli_errors.user_errors(debug=True):
            raise cli_errors.UserError("--x: bad")
    err = capsys.readouterr().err
    assert stopped.value.code == 1 and "Traceback" in err and err.endswith("error: --x: bad\n")
    # Ctrl-C ends the process at once (no interpreter shutdown under XLA's threads): in a process of its own.
    script = ("from hdvila_jax import cli_errors\n"
              "with cli_errors.user_errors(interrupted='interrupted (Ctrl-C)', debug=False):\n"
              "    raise KeyboardInterrupt\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 130 and proc.stderr == "interrupted (Ctrl-C)\n"


def test_user_error_is_the_same_after_pickling():
    error = pickle.loads(pickle.dumps(cli_errors.UserError("--x: bad")))
    assert error.code == "error: --x: bad" and error.message == "--x: bad"
