"""Ordinary H.264 mp4 files of different sizes and lengths (and a broken one), as a user's folder
of videos would hold, written with PyAV for the Encoder, search and custom-data tests."""
from __future__ import annotations

import os

from data_pipelines.synthetic_videos import MovingShape, write_moving_shape_video

# name -> (height, width, fps, seconds, content)
VIDEOS = {
    "hd.mp4": (720, 1280, 8, 4.0, MovingShape("red", "circle", "left")),
    "wide.mp4": (272, 640, 12, 6.0, MovingShape("blue", "square", "right")),
    "clips/qcif.mp4": (144, 176, 10, 10.0, MovingShape("green", "triangle", "up")),
}
BROKEN = "broken.mp4"


def write_videos(folder: str, names: tuple[str, ...] = tuple(VIDEOS), broken: bool = True) -> dict[str, str]:
    """Write the named videos (and a garbage ``broken.mp4``) under ``folder``; returns name -> path."""
    paths = {}
    for name in names:
        height, width, fps, seconds, content = VIDEOS[name]
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            write_moving_shape_video(path, content, int(fps * seconds), height, width, fps, seed=len(paths))
        paths[name] = path
    if broken:
        paths[BROKEN] = os.path.join(folder, BROKEN)
        with open(paths[BROKEN], "wb") as f:
            f.write(b"this is not a video file\n" * 40)
    return paths


def tiny_run(base: str) -> str:
    """The checkpoints dir of a 2-step tiny stage-1 run on the demo records under ``base`` (trained
    once per test session: the folder is reused)."""
    from hdvila_jax.train import trainer
    from tests import train_helpers

    workdir = os.path.join(base, "tiny_run")
    checkpoints = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(os.path.join(checkpoints, "2")):
        root = train_helpers.make_demo_data(os.path.join(base, "demo_data"))
        config = train_helpers.tiny_config(1, root, total_steps=2, ckpt_every_steps=2)
        trainer.train_and_evaluate(config, workdir)
    return checkpoints
