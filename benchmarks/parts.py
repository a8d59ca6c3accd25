"""What ``benchmarks.profile_step`` times: the sub-modules of one train step, each as a forward
and a forward + backward call that blocks until done."""
from __future__ import annotations

import dataclasses
from typing import Callable

# Row names, in the order of the step; stage-2-only parts last.
HR_RESNET, LR_RESNET, GRIDS, TIMESFORMER, TEXT, CONTRASTIVE, CROSS_MODAL, MLM = (
    "HR ResNet", "LR ResNet", "grid encoders", "TimeSformer", "BERT text layers", "contrastive loss",
    "cross-modal layers", "MLM head + loss")
STAGE1_PARTS = (HR_RESNET, LR_RESNET, GRIDS, TIMESFORMER, TEXT, CONTRASTIVE)
STAGE2_PARTS = (CROSS_MODAL, MLM)


@dataclasses.dataclass
class Part:
    """One sub-module on fixed inputs: ``forward()`` and ``forward_backward()`` (gradients of its
    parameters and of its float inputs, for a fixed random cotangent) run it once and block."""

    name: str
    forward: Callable[[], None]
    forward_backward: Callable[[], None]
