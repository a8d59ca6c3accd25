"""The original (our PyTorch port) in a process of its own, run on request: its train step for
``benchmarks.vs_reference``, its sub-modules for ``benchmarks.profile_step``.

    with step_process(stage=1, quick=False) as original:
        loss = original.request("step")                       # one train step, run in the worker
    with parts_process("acts.npz", quick=False) as original:
        seconds = original.request(["HR ResNet", "forward"])  # one call, timed in the worker

The benchmarks time ours and the original alternately, so that load from other jobs hits both
alike, but in separate processes. Both sides use OpenMP's libgomp (PyTorch's copy serves both once
it is loaded); in one process, with our oneDNN convolutions called from XLA's threads, the
original's stage-1 step took 1103-1245 ms against 987-1100 ms beside XLA's convolutions. We
believe libgomp, counting more threads than cores, makes every team sleep sooner; apart, each
side runs as it would alone.

The worker (``python -m benchmarks.torch_process step STAGE QUICK`` or ``... parts ACTS QUICK``,
QUICK 0 or 1) builds the same config as ``benchmarks.settings`` / ``step_builder`` give our side,
prints a ready line, then answers each JSON request it reads on stdin with a JSON result line:
"step" -> the loss; [part, "forward" | "forward_backward"] -> the seconds of one call of that
sub-module on our activations (the ``.npz`` file ACTS), timed in the worker so that the pipe's
round trip is not counted.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time


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

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self._process.pid

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


def parts_process(activations: str, quick: bool) -> OriginalProcess:
    """A worker timing the original's sub-modules (``benchmarks.parts``) of the stage-2 model on
    our activations, saved by ``numpy.savez`` in the file ``activations``."""
    return OriginalProcess("parts", activations, str(int(quick)))


def _serve(handle) -> None:
    print(READY, flush=True)
    for line in sys.stdin:
        print(RESULT_PREFIX + json.dumps(handle(json.loads(line))), flush=True)


def _serve_step(stage: int, quick: bool) -> None:
    import numpy as np

    from benchmarks.settings import tiny_setting
    from benchmarks.step_builder import build_step
    from benchmarks.torch_port import TorchTrainStep, torch_batch

    config = tiny_setting(stage, quick)
    built = build_step(config)
    original = TorchTrainStep(config, built.model_cfg)
    batch = torch_batch({k: np.asarray(v) for k, v in built.random_batch().items()})
    _serve(lambda command: original(batch))


def _serve_parts(activations: str, quick: bool) -> None:
    import numpy as np

    from benchmarks.parts import STAGE1_PARTS, STAGE2_PARTS
    from benchmarks.parts_torch import torch_parts
    from benchmarks.settings import tiny_setting
    from benchmarks.step_builder import build_step
    from benchmarks.torch_port import build_model

    with np.load(activations) as saved:
        acts = dict(saved)
    model_cfg = build_step(tiny_setting(2, quick)).model_cfg
    parts = torch_parts(build_model(model_cfg, 2), acts, tiny_setting(1, quick).temperature,
                        STAGE1_PARTS + STAGE2_PARTS)
    calls = {(p.name, kind): getattr(p, kind) for p in parts for kind in ("forward", "forward_backward")}

    def timed(command):
        call = calls[tuple(command)]
        start = time.perf_counter()
        call()
        return time.perf_counter() - start
    _serve(timed)


if __name__ == "__main__":
    from benchmarks.torch_port import set_threads

    set_threads()
    mode, first, quick = sys.argv[1:]
    if mode == "step":
        _serve_step(int(first), bool(int(quick)))
    elif mode == "parts":
        _serve_parts(first, bool(int(quick)))
    else:
        raise SystemExit(f"benchmarks.torch_process: mode {mode!r}; step or parts")
