"""Video QA annotation readers (MSRVTT-QA, TGIF-FrameQA, TGIF multiple choice): the specs they read and the
bad lines they skip or warn about."""
from __future__ import annotations

import json

from data_pipelines.qa_annotations import (read_msrvtt_qa_annotations, read_tgif_frameqa_annotations,
                                           read_tgif_mc_annotations)
from tests import data_helpers as h


def test_msrvtt_qa_reader(tmp_path):
    path = str(tmp_path / "qa.jsonl")
    h.write_jsonl(path, [
        {"video_id": "video7", "question": "what is a man doing?", "answer": " sing ", "answer_type": "what"},
        {"video_id": "video7", "question": "who sings?", "answer": "man"},  # no answer_type: warning
        b'{"video_id": "video8", "question": ',
        {"question": "where?", "answer": "x", "answer_type": "where"},
        {"video_id": "video8", "question": "  ", "answer": "x", "answer_type": "what"},
        {"video_id": "video8", "question": "what?", "answer_type": "what"},
        {"video_id": "video8", "question": "what?", "answer": "", "answer_type": "what"},
        {"video_id": "video8", "question": "how many?", "answer": 3, "answer_type": "how"},
        {"video_id": "video9", "question": "when?", "answer": "night", "answer_type": "when"},
    ])
    specs, skipped, warnings = read_msrvtt_qa_annotations(path, "/vids")
    assert [(s.clip_id, s.video_index, s.video_id, s.video_path, s.texts, s.answer_text, s.answer_type, s.answer)
            for s in specs] == [
        ("0", 0, "video7", "/vids/video7.mp4", ("what is a man doing?",), "sing", "what", None),
        ("1", 1, "video7", "/vids/video7.mp4", ("who sings?",), "man", "unknown", None),
        ("8", 8, "video9", "/vids/video9.mp4", ("when?",), "night", "when", None)]  # question id = 0-based line
    assert specs[2].line == f"{path}:9"
    reasons = h.reasons(skipped, path)
    assert reasons == {"3": reasons["3"], "4": "missing key 'video_id'", "5": "empty question",
                       "6": "missing key 'answer'", "7": "empty answer", "8": "bad answer (3, expected a string)"}
    assert reasons["3"].startswith("malformed JSON")
    assert h.reasons(warnings) == {f"{path}:2": "missing key 'answer_type': stored as 'unknown'"}


def test_tgif_frameqa_reader_prefers_mp4_then_gif(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("both.mp4", "both.gif", "gif_only.gif"):
        (videos / name).write_bytes(b"x")
    path = str(tmp_path / "frameqa.jsonl")
    h.write_jsonl(path, [
        {"gif_name": name, "question": "what is the color of the cat", "answer": "white", "answer_type": "color"}
        for name in ("both", "gif_only", "neither")] + [{"video_id": "both", "question": "q", "answer": "a"}])
    specs, skipped, warnings = read_tgif_frameqa_annotations(path, str(videos))
    assert [s.video_path for s in specs] == [str(videos / "both.mp4"), str(videos / "gif_only.gif"),
                                             str(videos / "neither.mp4")]
    assert [(s.clip_id, s.video_id, s.answer_text, s.answer_type) for s in specs] == [
        ("0", "both", "white", "color"), ("1", "gif_only", "white", "color"), ("2", "neither", "white", "color")]
    assert h.reasons(skipped, path) == {"4": "missing key 'gif_name'"} and warnings == []


def test_tgif_mc_reader(tmp_path):
    path = str(tmp_path / "action.jsonl")
    good = {"gif_name": "tumblr_a", "question": "what does the man do 3 times", "options": h.MC_OPTIONS, "answer": 1}
    h.write_jsonl(path, [
        good,
        {**good, "options": h.MC_OPTIONS[:4]},
        {**good, "options": h.MC_OPTIONS + ["extra"]},
        {**good, "options": "runs"},
        {**good, "options": h.MC_OPTIONS[:2] + [""] + h.MC_OPTIONS[3:]},
        {**good, "answer": 5},
        {**good, "answer": -1},
        {**good, "answer": "1"},
        {**good, "answer": True},
        {k: v for k, v in good.items() if k != "answer"},
        {k: v for k, v in good.items() if k != "options"},
        {**good, "question": ""},
        {k: v for k, v in good.items() if k != "gif_name"},
        [1, 2],
        {**good, "gif_name": "tumblr_b", "answer": 4},
    ])
    specs, skipped, warnings = read_tgif_mc_annotations(path, "/gifs")
    assert [(s.clip_id, s.video_index, s.video_id, s.answer, s.answer_text) for s in specs] == [
        ("0", 0, "tumblr_a", 1, None), ("14", 14, "tumblr_b", 4, None)]
    # "question option" with one space and no [SEP] (docs/fidelity.md §11.6)
    assert specs[0].texts == tuple(f"what does the man do 3 times {o}" for o in h.MC_OPTIONS)
    assert specs[0].video_path == "/gifs/tumblr_a.mp4"
    reasons = h.reasons(skipped, path)
    assert reasons == {
        "2": "wrong option count (4, expected 5)", "3": "wrong option count (6, expected 5)",
        "4": "wrong option count (not a list, expected 5)", "5": "empty option (index 2)",
        "6": "bad answer (5, expected an integer in [0, 5))", "7": "bad answer (-1, expected an integer in [0, 5))",
        "8": "bad answer ('1', expected an integer in [0, 5))", "9": "bad answer (True, expected an integer in [0, 5))",
        "10": "missing key 'answer'", "11": "missing key 'options'", "12": "empty question",
        "13": "missing key 'gif_name'", "14": "not a JSON object"}
    assert warnings == []


def test_json_list_question_ids_are_positions(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps([{"video_id": "v", "question": "q?"},
                                {"video_id": "v", "question": "q?", "answer": "a", "answer_type": "what"}]))
    specs, skipped, _ = read_msrvtt_qa_annotations(str(path), "/vids")
    assert [(s.clip_id, s.line) for s in specs] == [("1", f"{path}[1]")]
    assert h.reasons(skipped) == {f"{path}[0]": "missing key 'answer'"}
