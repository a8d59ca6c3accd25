"""Synthetic MP4 videos of a coloured shape moving in one direction over a textured background.

Used by the demo generator, the tests and the benchmark. Frames are deterministic given
the seed; the background is a smooth colour gradient with mild noise (never flat), the
shape moves at a constant speed so its direction is visible across a clip's frames.
"""
from __future__ import annotations

import dataclasses

import av
import numpy as np

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "white": (245, 245, 245),
    "purple": (150, 60, 190),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
# The downstream demo's caption style: other words for the same concepts, like human captions
# (MSRVTT) after ASR-transcript pretraining. A pretrained model has never seen these words.
DOWNSTREAM_WORDS = {"red": "crimson", "green": "emerald", "blue": "azure", "yellow": "golden", "white": "ivory",
                    "purple": "violet", "circle": "disc", "square": "box", "triangle": "wedge", "left": "west",
                    "right": "east", "up": "north", "down": "south"}


@dataclasses.dataclass(frozen=True)
class MovingShape:
    """One synthetic video's content; `caption` names colour, shape and direction."""

    colour: str
    shape: str
    direction: str

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} moves {self.direction}"

    @property
    def downstream_caption(self) -> str:
        """The same content in the downstream demo's words ("the crimson disc heads west")."""
        words = [DOWNSTREAM_WORDS[w] for w in (self.colour, self.shape, self.direction)]
        return "the {} {} heads {}".format(*words)


def _shape_mask(shape: str, height: int, width: int, cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy * dy + dx * dx <= radius * radius
    if shape == "square":
        return (np.abs(dy) <= radius) & (np.abs(dx) <= radius)
    if shape == "triangle":
        return (dy <= radius) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) / 2)
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(30, 120, size=3)
    tilt = rng.uniform(-60, 60, size=(2, 3))
    yy = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    xx = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    image = base + tilt[0] * yy + tilt[1] * xx + rng.normal(0, 6, size=(height, width, 3))
    return np.clip(image, 0, 255)


def render_frames(content: MovingShape, num_frames: int, height: int, width: int,
                  seed: int) -> np.ndarray:
    """The uint8 RGB frames [T, H, W, 3] of a shape crossing the frame in its direction."""
    rng = np.random.default_rng(seed)
    background = _background(height, width, rng)
    radius = max(3.0, min(height, width) / 8)
    dy, dx = DIRECTIONS[content.direction]
    # Travel from one side to the other over the video, starting at a random lateral spot.
    cy0 = rng.uniform(radius, height - radius) if dy == 0 else (radius if dy > 0 else height - radius)
    cx0 = rng.uniform(radius, width - radius) if dx == 0 else (radius if dx > 0 else width - radius)
    travel_y, travel_x = dy * (height - 2 * radius), dx * (width - 2 * radius)
    colour = np.asarray(COLOURS[content.colour], np.float32)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        progress = t / max(1, num_frames - 1)
        mask = _shape_mask(content.shape, height, width, cy0 + travel_y * progress,
                           cx0 + travel_x * progress, radius)
        frame = background.copy()
        frame[mask] = colour
        frames[t] = frame.astype(np.uint8)
    return frames


def write_mp4(path: str, frames: np.ndarray, fps: int, codec: str = "libx264",
              gop_size: int | None = None, crf: int = 20) -> None:
    """Encodes uint8 RGB frames [T, H, W, 3] (even H and W) into an MP4 with PyAV."""
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast"}
        if gop_size is not None:
            stream.codec_context.gop_size = gop_size
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_moving_shape_video(path: str, content: MovingShape, num_frames: int, height: int,
                             width: int, fps: int, seed: int, **encode_kwargs) -> None:
    """Renders `content` and writes it as an MP4."""
    write_mp4(path, render_frames(content, num_frames, height, width, seed), fps, **encode_kwargs)
