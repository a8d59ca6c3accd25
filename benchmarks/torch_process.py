"""The original (our PyTorch port) in a process of its own, running its train step on request
for ``benchmarks.vs_reference``.

    with step_process(stage=1, quick=False) as original:
        loss = original.request("step")                       # one train step, run in the worker

The benchmarks time ours and the original alternately, so that load from other jobs hits both
alike, but in separate processes. Both sides use OpenMP's libgomp (PyTorch's copy serves both once
it is loaded); in one process, with our oneDNN convolutions called from XLA's threads, the
original's stage-1 step took 1103-1245 ms against 987-1100 ms beside XLA's convolutions. We
believe libgomp, counting more threads than cores, makes every team sleep sooner; apart, each
side runs as it would alone.

The worker (``python -m benchmarks.torch_process step STAGE QUICK``, QUICK 0 or 1) builds the
same config as ``benchmarks.settings`` gives our side, prints a ready line, then answers each
request "step" it reads on stdin with the loss of one train step, as a JSON result line.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile


READY = "original ready"
RESULT_PREFIX = "original result "


class OriginalProcess:
    """A worker process (``python -m benchmarks.torch_process *args``) on as many threads as this
    process may use."""

    def __init__(self, *args: str):
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._process = subprocess.Popen([sys.executable, "-m", "benchmarks.torch_process", *args],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self._read_until(READY)

    def _read_until(self, prefix: str) -> str:
        for line in self._process.stdout:
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        self._stderr.seek(0)
        raise RuntimeError(f"the original's worker exited ({self._process.wait()}):\n{self._stderr.read()[-4000:]}")

    def request(self, command: object) -> object:
        """Send one request to the worker and return its JSON answer."""
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        return json.loads(self._read_until(RESULT_PREFIX))

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait()
        self._stderr.close()

    def __enter__(self) -> OriginalProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def step_process(stage: int, quick: bool) -> OriginalProcess:
    """A worker running the original's stage-``stage`` train step in the benchmarks' setting
    (``quick``: the CI-sized one) on request "step"."""
    return OriginalProcess("step", str(stage), str(int(quick)))


def _serve(handle) -> None:
    print(READY, flush=True)
    for line in sys.stdin:
        print(RESULT_PREFIX + json.dumps(handle(json.loads(line))), flush=True)


def _serve_step(stage: int, quick: bool) -> None:
    import numpy as np

    from benchmarks.settings import tiny_setting
    from hdvila_jax.train.step_builder import build_step
    from benchmarks.torch_port import TorchTrainStep, torch_batch

    config = tiny_setting(stage, quick)
    built = build_step(config)
    original = TorchTrainStep(config, built.model_cfg)
    batch = torch_batch({k: np.asarray(v) for k, v in built.random_batch().items()})
    _serve(lambda command: original(batch))


if __name__ == "__main__":
    from benchmarks.torch_port import set_threads

    set_threads()
    mode, stage, quick = sys.argv[1:]
    if mode != "step":
        raise SystemExit(f"benchmarks.torch_process: mode {mode!r}; only step")
    _serve_step(int(stage), bool(int(quick)))
