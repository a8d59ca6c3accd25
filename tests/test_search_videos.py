"""``python -m hdvila_jax.search index --videos`` over a folder of ordinary mp4 files (720p, 640x272,
176x144, 4-10 s) plus a garbage file, with the checkpoint of a 2-step tiny run, then ``query --json``."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hdvila_jax.search import load_index, render
from hdvila_jax.search.video_files import list_videos
from hdvila_jax.search.videos import IndexSummary
from tests import own_videos, train_helpers

CLI = [sys.executable, "-m", "hdvila_jax.search"]


def test_list_videos_and_summary_line(tmp_path):
    paths = own_videos.write_videos(str(tmp_path), names=("clips/qcif.mp4",))
    (tmp_path / "notes.txt").write_text("not a video")
    assert list_videos(str(tmp_path)) == sorted([paths["clips/qcif.mp4"], paths[own_videos.BROKEN]])
    assert list_videos(str(tmp_path / "*.txt")) == [str(tmp_path / "notes.txt")]
    with pytest.raises(ValueError, match="--videos=.*matches no files"):
        list_videos(str(tmp_path / "*.mkv"))
    line = IndexSummary(2, 5, [("/v/broken.mp4", "unreadable: bad data")]).line()
    assert line == "2 videos, 5 clips indexed, 1 skipped\n  skipped /v/broken.mp4: unreadable: bad data"


def test_a_damaged_chunk_list_is_encoded_again(tmp_path, caplog):
    from hdvila_jax.search.videos import _WorkDir
    settings = dict(clip_seconds=3.0)
    _WorkDir(str(tmp_path), settings)
    work = tmp_path / "work"
    good = dict(path="/v/a.mp4", state=[1, 2], chunk=0, row=0, windows=[[0, 3]], duration=3.0, error=None, skipped=[])
    (work / "videos-00000.jsonl").write_text(json.dumps(good) + "\n")
    (work / "videos-00001.jsonl").write_text(json.dumps(dict(good, path="/v/b.mp4")) + '\n{"path": "/v/c.mp')
    again = _WorkDir(str(tmp_path), settings)
    assert list(again.done) == ["/v/a.mp4"] and again.chunks == 2  # chunk 1 is redone as chunk 2
    assert again.finished("/v/a.mp4", [1, 2]) and not again.finished("/v/b.mp4", [1, 2])
    assert "videos-00001.jsonl is damaged" in caplog.text


@pytest.mark.slow
def test_index_folder_of_videos_then_query_json(tmp_path_factory):
    base = str(tmp_path_factory.getbasetemp())
    checkpoints = own_videos.tiny_run(base)
    folder = str(tmp_path_factory.mktemp("my_videos"))
    paths = own_videos.write_videos(folder)
    os.symlink("loop.mp4", os.path.join(folder, "loop.mp4"))  # a link to itself
    os.symlink(os.path.join(folder, "gone", "x.mp4"), os.path.join(folder, "gone.mp4"))  # leads nowhere
    out = os.path.join(folder + "_index")
    env = train_helpers.subprocess_env()
    index_cmd = [*CLI, "index", f"--checkpoint={checkpoints}", f"--videos={folder}", f"--out={out}",
                 "--clip_seconds=3"]
    proc = subprocess.run(index_cmd, env=env, cwd=train_helpers.REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # hd: 4 s -> 1 clip; wide: 6 s -> 2; qcif: 10 s -> 3 (the 1 s tail is under half a stride).
    assert "3 videos, 6 clips indexed, 3 skipped" in proc.stdout
    assert f"skipped {paths[own_videos.BROKEN]}: unreadable" in proc.stdout
    assert f"skipped {os.path.join(folder, 'loop.mp4')}: unreadable: Too many levels of symbolic links" in proc.stdout
    assert f"skipped {os.path.join(folder, 'gone.mp4')}: missing video file" in proc.stdout

    index = load_index(out)
    durations = {paths[name]: own_videos.VIDEOS[name][3] for name in own_videos.VIDEOS}
    by_file = {}
    for path, start, end in index.spans:
        assert 0 <= start < end <= durations[path] + 0.01
        by_file[path] = by_file.get(path, 0) + 1
    assert by_file == {paths["hd.mp4"]: 1, paths["wide.mp4"]: 2, paths["clips/qcif.mp4"]: 3}
    assert index.manifest["summary"]["skipped"][0]["path"] == paths[own_videos.BROKEN]

    # Resuming encodes nothing again and gives the same index.
    again = subprocess.run(index_cmd, env=env, cwd=train_helpers.REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "resumed: 6 files read back" in again.stdout, again.stdout
    np.testing.assert_array_equal(load_index(out).embeddings, index.embeddings)

    png = os.path.join(folder + "_hits.png")
    query = subprocess.run([*CLI, "query", f"--index={out}", "a red circle moves left", "a blue square", "--top=4",
                            "--json", f"--png={png}"], env=env, cwd=train_helpers.REPO, capture_output=True,
                           text=True, timeout=600)
    assert query.returncode == 0, query.stderr[-4000:]
    results = json.loads(query.stdout)
    assert [r["query"] for r in results] == ["a red circle moves left", "a blue square"]
    for result in results:
        hits = result["hits"]
        assert [h["rank"] for h in hits] == [1, 2, 3, 4]
        assert all(set(h) >= {"path", "start", "end", "score", "rank"} for h in hits)
        assert all(h["path"] in by_file and h["start"] < h["end"] for h in hits)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert Image.open(png).size == render.canvas_size(2, 4)
