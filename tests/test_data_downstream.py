"""Downstream data: retrieval/MC annotation readers, MSRVTT and frame-folder geometries, the
original's strided clip layout, training flips and the multiple-choice batch."""
from __future__ import annotations

import json

import av
import ml_collections
import numpy as np
import pytest

from data_pipelines.downstream_annotations import read_retrieval_annotations
from data_pipelines.geometry import bicubic_resize, bilinear_resize, nearest_resize
from data_pipelines.synthetic_videos import write_mp4
from data_pipelines.vocab import write_vocab
from hdvila_jax.data.config import get_data_config
from hdvila_jax.data.pipeline import make_eval_iterator, make_train_iterator
from hdvila_jax.data.text import ThreadLocalTokenizer
from hdvila_jax.video.clip_plan import plan_clip
from tests import data_helpers as h

torch = pytest.importorskip("torch")
F = torch.nn.functional
HW, LR_HW = (64, 96), (16, 24)


def _torch_resize(image: np.ndarray, hw: tuple[int, int], mode: str) -> np.ndarray:
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].double()
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    out = F.interpolate(tensor, size=hw, mode=mode, **kwargs)[0].permute(1, 2, 0).numpy()
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_resizes_match_the_original_kernels():
    image = np.random.default_rng(0).integers(0, 256, (45, 70, 3), np.uint8)
    np.testing.assert_array_equal(nearest_resize(image, (18, 28)), _torch_resize(image, (18, 28), "nearest"))
    # torch's bicubic (a = -0.75, half-pixel, clamped border) is OpenCV's INTER_CUBIC.
    np.testing.assert_array_equal(bicubic_resize(image, (180, 280)), _torch_resize(image, (180, 280), "bicubic"))
    diff = bilinear_resize(image, (100, 150)).astype(int) - _torch_resize(image, (100, 150), "bilinear")
    assert np.abs(diff).max() <= 1  # TF computes in float32


def test_retrieval_formats(tmp_path):
    path = str(tmp_path / "ann.jsonl")
    h.write_jsonl(path, [
        {"clip_id": "video7", "text": ["a man sings", "someone is singing"]},  # MSRVTT: list of captions
        {"clip_id": "didemo/clip_a", "text": "a dog runs. it jumps.", "num_frame": 30},  # paragraph
        {"clip_id": "1004_Juno_00.00.32-00.00.36", "text": "SOMEONE opens the door."},  # LSMDC
        {"clip_id": "video8", "text": "  "},
        {"clip_id": "video9", "text": ["fine", ""]},
        {"clip_id": "video10", "text": "x", "num_frame": 0},
        b'{"clip_id": "video11", "text": "unterminated',
        {"text": "no id"},
        {"clip_id": "video7", "text": "a third caption"},
    ])
    specs, skipped, warnings = read_retrieval_annotations(path, "/vids")
    assert [(s.clip_id, s.texts, s.num_frame, s.video_index) for s in specs] == [
        ("video7", ("a man sings", "someone is singing", "a third caption"), None, 0),
        ("didemo/clip_a", ("a dog runs. it jumps.",), 30, 1),
        ("1004_Juno_00.00.32-00.00.36", ("SOMEONE opens the door.",), None, 2)]
    assert specs[1].video_path == "/vids/clip_a.mp4"  # <videos>/<last path part>.mp4
    reasons = {s.item.rsplit(":", 1)[1]: s.reason for s in skipped}
    assert sorted(reasons) == ["4", "5", "6", "7", "8"]
    assert reasons["4"].startswith("empty caption") and reasons["5"].startswith("empty caption")
    assert reasons["6"].startswith("bad num_frame") and reasons["7"].startswith("malformed JSON")
    assert reasons["8"] == "missing key 'clip_id'"
    assert len(warnings) == 1 and warnings[0].reason == f"duplicate clip_id (video7): texts merged into {path}:1"


def test_strided_layout_is_the_originals_inference_sampling():
    """docs/fidelity.md §11.4: short rule with K clips, then c[::int(len(c)/K)][:K]."""
    for n, rate, num_frm, k in [(120, 4, 7, 4), (61, 4, 7, 4), (40, 2, 11, 8), (300, 3, 11, 4), (27, 4, 13, 8)]:
        half = (num_frm - 1) // 2
        r = rate if n >= 2 * half * rate + k else (n - k) // (2 * half)
        c = list(range(half * r, n - half * r))
        plan = plan_clip(n, rate, num_frm, min_clips=1, num_candidates=k, layout="strided")
        assert plan.sample_rate == r
        assert plan.middle_frames.tolist() == c[::int(len(c) / k)][:k], (n, rate, num_frm, k)
        np.testing.assert_array_equal(plan.lr_frames[plan.neighbour_slots], plan.middle_frames[:, None]
                                      + r * np.array([*range(-half, 0), *range(1, half + 1)]))


# ---------------------------------------------------------------- MSRVTT multiple choice, pipeline A

OPTIONS = [["a red circle moves left", "a red square moves left", "a blue circle moves left",
            "a red circle moves up", "a red circle moves right"],
           ["a green square moves up", "a green square moves down", "a white square moves up",
            "a green circle moves up", "a green triangle moves up"],
           ["a blue triangle moves right", "a blue triangle moves left", "a blue square moves right",
            "a purple triangle moves right", "a blue triangle moves up"]]
ANSWERS = [2, 0, 4]
NATIVE_HW = (48, 72)


@pytest.fixture(scope="module")
def mc_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc")
    videos = root / "videos"
    videos.mkdir()
    for i in range(3):
        write_mp4(str(videos / f"video{i}.mp4"), h.pattern_frames(30, NATIVE_HW, seed=i), fps=6)
    entries = [{"qid": 100 + i, "clip_name": f"msrvtt/video{i}", "options": OPTIONS[i], "answer": ANSWERS[i]}
               for i in range(3)]
    entries += [
        {"qid": 200, "clip_name": "video0", "options": OPTIONS[0][:4], "answer": 0},
        {"qid": 201, "clip_name": "video0", "options": OPTIONS[0][:4] + [" "], "answer": 0},
        {"qid": 202, "clip_name": "video0", "options": OPTIONS[0], "answer": 5},
        {"qid": 203, "clip_name": "video0", "options": OPTIONS[0], "answer": "1"},
        {"qid": 204, "clip_name": "video_missing", "options": OPTIONS[0], "answer": 1},
        b"{not json",
    ]
    h.write_jsonl(str(root / "mc_test.jsonl"), entries)
    report = h.build(str(videos), str(root / "mc_test.jsonl"), str(root / "records"), "--split", "mc_test",
                     "--format", "msrvtt_mc", "--geometry", "msrvtt", "--middle_layout", "strided",
                     "--num_candidates", "4", "--min_clips", "4", "--sample_rate", "4", num_shards=1)
    write_vocab(str(root / "vocab.txt"), [o for options in OPTIONS for o in options])
    return dict(root=root, videos=videos, report=report)


def test_mc_records_and_report(mc_build):
    ann = str(mc_build["root"] / "mc_test.jsonl")
    reasons = {s["item"]: s["reason"] for s in mc_build["report"]["skipped"]}
    assert set(reasons) == {f"{ann}:{n}" for n in (4, 5, 6, 7, 9)} | {"204"}
    assert reasons[f"{ann}:4"] == "wrong option count (4, expected 5)"
    assert reasons[f"{ann}:5"] == "empty option (index 4)"
    assert reasons[f"{ann}:6"].startswith("bad answer (5") and reasons[f"{ann}:7"].startswith("bad answer ('1'")
    assert reasons[f"{ann}:9"].startswith("malformed JSON")
    assert reasons["204"].startswith("missing video file") and "video_missing.mp4" in reasons["204"]
    counts = mc_build["report"]["skipped_counts"]
    assert counts["wrong option count"] == counts["empty option"] == 1 and counts["bad answer"] == 2
    records = h.records_by_id(str(mc_build["root"] / "records" / "mc_test-*.tfrecord"))
    assert set(records) == {"100", "101", "102"}  # clip_id = qid, video_id = clip name
    for i in range(3):
        record = records[str(100 + i)]
        assert (record.texts, record.answer, record.video_id) == (OPTIONS[i], ANSWERS[i], f"video{i}")
        assert record.middle_frames.tolist() == [12, 13, 14, 15]  # c = [12, 18), c[::1][:4]


def test_msrvtt_geometry_hr_is_bicubic_of_nearest_lr(mc_build):
    record = h.records_by_id(str(mc_build["root"] / "records" / "mc_test-*.tfrecord"))["101"]
    assert (record.frame_height, record.frame_width) == HW
    with av.open(str(mc_build["videos"] / "video1.mp4")) as container:  # decoded as the builder does
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    for index, jpeg in zip(record.lr_frames, record.lr_jpeg):
        stored, expected = h.decode_jpeg(jpeg), _torch_resize(frames[index], LR_HW, "nearest")
        assert stored.shape == (*LR_HW, 3)
        assert h.psnr(stored, expected) > 28
        assert h.psnr(stored, expected) > h.psnr(stored, bilinear_resize(frames[index], LR_HW)) + 3
    for index, jpeg in zip(record.middle_frames, record.hr_jpeg):
        stored = h.decode_jpeg(jpeg)
        expected = _torch_resize(_torch_resize(frames[index], LR_HW, "nearest"), HW, "bicubic")
        assert stored.shape == (*HW, 3)
        assert h.psnr(stored, expected) > 35
        # A direct resize of the native frame is a different picture.
        assert h.psnr(stored, expected) > h.psnr(stored, bilinear_resize(frames[index], HW)) + 5


def _reader_config(root, pattern: str, batch_size: int, **overrides) -> ml_collections.ConfigDict:
    data = get_data_config("tiny", root=str(root))
    data.update(train_files=pattern, val_files=pattern, train_n_clips=2, inference_n_clips=4, **overrides)
    return ml_collections.ConfigDict({"batch_size": batch_size, "data": data,
                                      "model": {"crop_size": (48, 64), "num_frames": 7}})


def test_mc_eval_batch(mc_build):
    root = mc_build["root"]
    config = _reader_config(root, str(root / "records" / "mc_test-*.tfrecord"), batch_size=4)
    batch = next(make_eval_iterator(config, 0, 1))
    shapes = {k: (v.dtype.name, v.shape) for k, v in batch.items()}
    assert shapes["mc_text_input_ids"] == shapes["mc_text_input_mask"] == ("int32", (4, 5, 12))
    assert shapes["mc_answer"] == ("int32", (4,)) and shapes["img_middle"] == ("uint8", (4, 4, 48, 64, 3))
    assert batch["valid"].tolist() == [True, True, True, False]
    order = batch["video_index"][:3]
    assert batch["mc_answer"][:3].tolist() == [ANSWERS[i] for i in order]
    tokenizer = ThreadLocalTokenizer(str(root / "vocab.txt"))
    for row, i in enumerate(order):
        for n, option in enumerate(OPTIONS[i]):
            ids, mask = tokenizer.encode(option, 12)
            np.testing.assert_array_equal(batch["mc_text_input_ids"][row, n], ids)
            np.testing.assert_array_equal(batch["mc_text_input_mask"][row, n], mask)
        np.testing.assert_array_equal(batch["text_input_ids"][row], batch["mc_text_input_ids"][row, 0])


def test_training_flips_whole_examples(mc_build):
    root = mc_build["root"]
    pattern = str(root / "records" / "mc_test-*.tfrecord")
    plain = make_train_iterator(_reader_config(root, pattern, 3), 0, 1)
    flipping = make_train_iterator(_reader_config(root, pattern, 3, flip_prob=0.5), 0, 1)
    flips = []
    for _ in range(6):  # same seed: same clips, crops and texts, flipped or not
        batch, reference = next(flipping), next(plain)
        np.testing.assert_array_equal(batch["video_index"], reference["video_index"])
        for b in range(3):
            mirrored = reference["img_middle"][b, :, :, ::-1]
            flipped = not np.array_equal(batch["img_middle"][b], reference["img_middle"][b])
            if flipped:
                np.testing.assert_array_equal(batch["img_middle"][b], mirrored)
                np.testing.assert_array_equal(batch["img_other"][b], reference["img_other"][b, :, :, :, ::-1])
            else:
                np.testing.assert_array_equal(batch["img_other"][b], reference["img_other"][b])
            flips.append(flipped)
    assert 3 <= sum(flips) <= 15  # 18 draws at p = 0.5: both outcomes occur
    evaluation = [make_eval_iterator(_reader_config(root, pattern, 4, flip_prob=p), 0, 1) for p in (0.0, 1.0)]
    np.testing.assert_array_equal(next(evaluation[0])["img_middle"], next(evaluation[1])["img_middle"])


# ---------------------------------------------------------------- frame folders, pipeline B

HR_SOURCE_HW = (40, 60)


@pytest.fixture(scope="module")
def frames_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    videos = root / "videos"
    counts = {"didemo/a": 30, "b": 26, "c": 30, "no_hr": 30}
    for n, (clip_id, count) in enumerate(counts.items()):
        base = clip_id.split("/")[-1]
        lr, hr = h.pattern_frames(count, LR_HW, seed=n, period=9.0), h.pattern_frames(count, HR_SOURCE_HW, seed=n,
                                                                                        period=9.0)
        for j in range(count):
            h.write_jpeg(str(videos / "video_frames_lr" / clip_id / f"{base}_{j:03d}.jpg"), lr[j])
            if clip_id != "no_hr":
                h.write_jpeg(str(videos / "video_frames" / clip_id / f"{base}_{j:03d}.jpg"), hr[j])
    h.write_jsonl(str(root / "test.jsonl"), [
        {"clip_id": "didemo/a", "text": "a paragraph. of two sentences.", "num_frame": 30},
        {"clip_id": "b", "text": "no num_frame: count the files"},
        {"clip_id": "c", "text": "num_frame disagrees", "num_frame": 28},
        {"clip_id": "no_hr", "text": "HR folder missing", "num_frame": 30},
        {"clip_id": "gone", "text": "no folders at all"},
    ])
    report = h.build(str(videos), str(root / "test.jsonl"), str(root / "records"), "--format", "retrieval",
                     "--geometry", "frames", "--num_frm", "11", "--middle_layout", "strided",
                     "--num_candidates", "4", "--min_clips", "4", num_shards=1)
    return dict(root=root, videos=videos, report=report, counts=counts)


def test_frame_folder_report(frames_build):
    reasons = {s["item"]: s["reason"] for s in frames_build["report"]["skipped"]}
    assert set(reasons) == {"no_hr", "gone"}
    assert reasons["gone"].startswith("missing frame folder")
    assert reasons["no_hr"].startswith("missing frame file") and "video_frames/no_hr/no_hr_" in reasons["no_hr"]
    warnings = {w["item"]: w["reason"] for w in frames_build["report"]["warnings"]}
    assert warnings == {"c": f"num_frame 28 != 30 frame files in {frames_build['videos']}/video_frames_lr/c"}


def test_frame_folder_records(frames_build):
    records = h.records_by_id(str(frames_build["root"] / "records" / "train-*.tfrecord"))
    assert set(records) == {"didemo/a", "b", "c"}
    assert [records[k].num_frames for k in ("didemo/a", "b", "c")] == [30, 26, 28]
    videos = frames_build["videos"]
    for clip_id, record in records.items():
        n, base = record.num_frames, clip_id.split("/")[-1]
        c = list(range(5 * 2, n - 5 * 2))
        assert record.middle_frames.tolist() == c[::int(len(c) / 4)][:4]
        assert (record.frame_height, record.frame_width, record.num_frm) == (*HW, 11)
        for index, jpeg in zip(record.middle_frames, record.hr_jpeg):
            source = h.decode_jpeg((videos / "video_frames" / clip_id / f"{base}_{index:03d}.jpg").read_bytes())
            stored = h.decode_jpeg(jpeg)
            assert stored.shape == (*HW, 3)
            assert h.psnr(stored, _torch_resize(source, HW, "bilinear")) > 35
            neighbour = h.decode_jpeg((videos / "video_frames" / clip_id / f"{base}_{index + 1:03d}.jpg")
                                      .read_bytes())
            assert h.psnr(stored, _torch_resize(source, HW, "bilinear")) > h.psnr(
                stored, _torch_resize(neighbour, HW, "bilinear")) + 5
        for index, jpeg in zip(record.lr_frames, record.lr_jpeg):
            source = h.decode_jpeg((videos / "video_frames_lr" / clip_id / f"{base}_{index:03d}.jpg").read_bytes())
            assert h.psnr(h.decode_jpeg(jpeg), source) > 32  # stored as read (re-encoded at 16x24)
    build = json.loads((frames_build["root"] / "records" / "train_build.json").read_text())
    assert (build["geometry"], build["middle_layout"], build["format"]) == ("frames", "strided", "retrieval")
