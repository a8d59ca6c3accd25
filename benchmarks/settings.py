"""The CPU setting in which our step is compared with the original PyTorch HD-VILA (issue 10).

``tiny_setting(stage)`` is the trainer config ``configs/stage{1,2}.py:tiny`` with these overrides
(docs/performance.md, CPU comparison): ResNet-50, hidden 64, 4 BERT layers (2 text + 2 cross-modal), TimeSformer depth 2,
128x192 crops, batch 4 x 2 clips, 12 tokens, float32. Visual-token sampling is off
(``pixel_random_sampling_size=0``): the PyTorch port has none, so both sides run the same
cross-modal sequence. ``quick=True`` keeps the plain tiny config (ResNet-18, 64x192, one clip)
for CI.
"""
from __future__ import annotations

import os

import ml_collections

from configs import stage1, stage2

TINY_MODEL = dict(resnet_depth=50, crop_size=(128, 192), hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=128, timesformer_depth=2, timesformer_heads=4, pixel_random_sampling_size=0,
                  dtype="float32")


def tiny_setting(stage: int, quick: bool = False) -> ml_collections.ConfigDict:
    """The stage-``stage`` trainer config of the comparison setting (see the module docstring)."""
    config = (stage1 if stage == 1 else stage2).get_config("tiny")
    config.model.pixel_random_sampling_size = 0
    if quick:
        return config
    config.model.update(TINY_MODEL)
    config.data.train_n_clips = 2
    config.data.max_txt_len = 12
    config.batch_size = 4
    return config


def pin_cpus(threads: int = 0) -> int:
    """Pin this process (and the workers it starts) to its first ``threads`` CPUs (0: all it may
    use), which is the number of threads XLA:CPU then runs on: call it before JAX's first
    computation. Returns the number of CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if threads:
        cpus = cpus[:threads]
        os.sched_setaffinity(0, cpus)
    return len(cpus)
