"""TGIF data: GIF decoding and the TGIF letterbox geometry (pipeline C), alone and in a build."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_pipelines import build_tfrecords
from data_pipelines.geometry import TGIF_PAD_VALUE, bicubic_resize, letterbox_size, tgif_lr_frame
from hdvila_jax.video.decode import decode_rgb_frames, probe_video
from tests import data_helpers as h


GIF_HW = (40, 70)


def _gif_frames(num_frames: int, hw: tuple[int, int]) -> np.ndarray:
    """Distinct frames of few colours (exact in a GIF palette): a bar moving over blocks."""
    frames = np.zeros((num_frames, *hw, 3), np.uint8)
    frames[..., 0] = (np.arange(hw[1]) // 10 * 30)[None, None, :]
    frames[..., 1] = (np.arange(hw[0]) // 10 * 50)[None, :, None]
    for t in range(num_frames):
        frames[t, :, 2 * t:2 * t + 4] = (250, 250, 30 + 10 * t)
    return frames


def _write_gif(path: str, frames: np.ndarray, duration_ms: int = 80) -> None:
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)


def test_gif_decoding(tmp_path):
    frames = _gif_frames(16, GIF_HW)
    path = str(tmp_path / "anim.gif")
    _write_gif(path, frames)
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width) == (16, *GIF_HW)
    assert info.fps == pytest.approx(12.5)  # 80 ms per frame
    decoded = decode_rgb_frames(path, None, np.array([0, 5, 15]))
    assert sorted(decoded) == [0, 5, 15]
    for index, frame in decoded.items():
        np.testing.assert_array_equal(frame, frames[index])


@pytest.mark.parametrize("hw", [(40, 70), (45, 70), (100, 33), (300, 301), (192, 100), (500, 250)])
def test_tgif_letterbox_matches_torch(hw):
    torch = pytest.importorskip("torch")
    image = np.random.default_rng(sum(hw)).integers(0, 256, (*hw, 3), np.uint8)
    # The original's get_resize_size: longer side 192, the other int(192 * short / long).
    expected_size = (192, int(192 * (hw[1] / hw[0]))) if hw[0] >= hw[1] else (int(192 * (hw[0] / hw[1])), 192)
    assert letterbox_size(hw, 192) == expected_size
    lr = tgif_lr_frame(image, 192)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].double()
    resized = torch.nn.functional.interpolate(tensor, size=expected_size, mode="bilinear", align_corners=False)
    reference = np.clip(np.rint(resized[0].permute(1, 2, 0).numpy()), 0, 255)
    assert lr.shape == (192, 192, 3) and lr.dtype == np.uint8
    assert np.abs(lr[:expected_size[0], :expected_size[1]].astype(int) - reference).max() <= 1
    pad = np.ones((192, 192), bool)
    pad[:expected_size[0], :expected_size[1]] = False
    assert (lr[pad] == TGIF_PAD_VALUE).all()


@pytest.fixture(scope="module")
def tgif_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("tgif")
    videos = root / "gifs"
    videos.mkdir()
    frames = _gif_frames(16, GIF_HW)
    _write_gif(str(videos / "tumblr_x.gif"), frames)
    h.write_jsonl(str(root / "action.jsonl"), [
        {"gif_name": "tumblr_x", "question": "what does the bar do", "options": h.MC_OPTIONS, "answer": 3}])
    args = build_tfrecords.parse_args([
        "--videos", str(videos), "--annotations", str(root / "action.jsonl"), "--output", str(root / "records"),
        "--format", "tgif_mc", "--geometry", "tgif", "--num_shards", "1", "--workers", "1",
        "--sample_rate", "2", "--num_candidates", "2", "--min_clips", "2"])
    report = build_tfrecords.build(args)
    record = h.records_by_id(str(root / "records" / "train-*.tfrecord"))["0"]
    return dict(frames=frames, report=report, record=record)


def test_tgif_records_are_letterboxed(tgif_build):
    record, frames = tgif_build["record"], tgif_build["frames"]
    assert tgif_build["report"]["records"] == 1 and tgif_build["report"]["skipped"] == []
    assert (record.frame_height, record.frame_width, record.num_frames, record.answer) == (768, 768, 16, 3)
    assert record.texts == [f"what does the bar do {o}" for o in h.MC_OPTIONS]
    rows = letterbox_size(GIF_HW, 192)[0]  # 109 of 192 rows hold the picture, the rest is padding
    assert rows == 109
    for index, jpeg in zip(record.lr_frames, record.lr_jpeg):
        stored = h.decode_jpeg(jpeg).astype(int)
        assert stored.shape == (192, 192, 3)
        assert np.abs(stored[rows + 16:] - TGIF_PAD_VALUE).max() <= 2  # past JPEG's 16-row chroma blocks
        assert h.psnr(stored[:rows - 3], tgif_lr_frame(frames[index], 192)[:rows - 3]) > 30
    for index, jpeg in zip(record.middle_frames, record.hr_jpeg):
        stored = h.decode_jpeg(jpeg)
        expected = bicubic_resize(tgif_lr_frame(frames[index], 192), (768, 768))
        assert stored.shape == (768, 768, 3)
        assert h.psnr(stored, expected) > 35
        assert np.abs(stored[4 * rows + 24:].astype(int) - TGIF_PAD_VALUE).max() <= 2
        neighbour = bicubic_resize(tgif_lr_frame(frames[index + 1], 192), (768, 768))
        assert h.psnr(stored, expected) > h.psnr(stored, neighbour) + 3
