"""The original's train step (``benchmarks.torch_port``) in a process of its own, stepped on request.

    with OriginalProcess(stage=1, quick=False) as original:
        loss = original.step()      # one step of the original, run in the worker

``benchmarks.vs_reference`` times our step and the original's alternately, so that load from
other jobs hits both alike, but in separate processes. Both sides use OpenMP's libgomp (PyTorch's
copy serves both once it is loaded); in one process, with our oneDNN convolutions called from
XLA's threads, the original's stage-1 step took 1103-1245 ms against 987-1100 ms beside XLA's
convolutions. We believe libgomp, counting more threads than cores, makes every team sleep sooner;
apart, each side runs as it would alone.

The worker (``python -m benchmarks.torch_process STAGE QUICK``, QUICK 0 or 1) builds the same
config and random batch as ``benchmarks.settings`` / ``step_builder`` give our side, prints a ready
line, then runs one step per line it reads on stdin and answers with the loss.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile

READY = "original ready"
LOSS_PREFIX = "original loss "


class OriginalProcess:
    """A worker process running the original's stage-``stage`` train step in the benchmarks'
    setting (``quick``: the CI-sized one), on as many threads as this process may use."""

    def __init__(self, stage: int, quick: bool):
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.torch_process", str(stage), str(int(quick))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self._read_until(READY)

    def _read_until(self, prefix: str) -> str:
        for line in self._process.stdout:
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        self._stderr.seek(0)
        raise RuntimeError(f"the original's worker exited ({self._process.wait()}):\n{self._stderr.read()[-4000:]}")

    def step(self) -> float:
        """Run one train step of the original in the worker; its loss."""
        self._process.stdin.write("step\n")
        self._process.stdin.flush()
        return json.loads(self._read_until(LOSS_PREFIX))

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait()
        self._stderr.close()

    def __enter__(self) -> OriginalProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(stage: int, quick: bool) -> None:
    """The worker: build the original's step, then run one step per line read on stdin."""
    import numpy as np

    from benchmarks.settings import tiny_setting
    from benchmarks.step_builder import build_step
    from benchmarks.torch_port import TorchTrainStep, set_threads, torch_batch

    set_threads()
    config = tiny_setting(stage, quick)
    built = build_step(config)
    original = TorchTrainStep(config, built.model_cfg)
    batch = torch_batch({k: np.asarray(v) for k, v in built.random_batch().items()})
    print(READY, flush=True)
    for _ in sys.stdin:
        print(LOSS_PREFIX + json.dumps(original(batch)), flush=True)


if __name__ == "__main__":
    serve(int(sys.argv[1]), bool(int(sys.argv[2])))
