"""Search, the Encoder and evaluation with every path in a bucket, against fake-gcs-server on loopback
(``tests/gcs_emulator.py``): a gs:// checkpoint, gs:// video files, a gs:// index and its work folder,
the query's PNG, and ``hdvila_jax.evaluate``'s workdir and JSON. Each result equals the same done with
local files."""
import io
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from hdvila_jax import Encoder, EncoderError, storage
from hdvila_jax.search import build_video_index, list_videos, load_index, render, render_results, search_text
from hdvila_jax.search.build import index_config
from hdvila_jax.search.index import SearchError
from hdvila_jax.video.clips import FrameOptions
from tests import gcs_emulator, own_videos, train_helpers

VIDEOS = ("wide.mp4", "clips/qcif.mp4")  # 6 s and 10 s: 2 and 3 clips of 3 s
CLIP_SECONDS = 3.0
QUERIES = ["a red circle moves left", "a blue square moves right"]


@pytest.fixture(scope="module")
def model(gcs_server, tmp_path_factory):
    """A tiny random stage-1 model saved as converted variables with the run's config.json beside them,
    in a local folder and in a bucket; the module's videos, local and uploaded; the bucket's name."""
    from data_pipelines.vocab import write_vocab
    from hdvila_jax import sharding, variables_io
    from hdvila_jax.models import model_config_from_dict
    from hdvila_jax.train import train_state

    root = tmp_path_factory.mktemp("search_gcs")
    vocab = str(root / "vocab.txt")
    write_vocab(vocab, QUERIES)
    config = train_helpers.tiny_config(1, str(root))
    config.data.vocab_file = vocab
    mesh = sharding.make_mesh(config.mesh)
    variables = train_state.init_variables_sharded(config, model_config_from_dict(config.model.to_dict()), mesh)
    variables = {k: variables[k] for k in ("params", "batch_stats")}
    bucket = gcs_emulator.create_bucket(gcs_server)
    runs = dict(local=str(root / "run"), gs=f"gs://{bucket}/run")
    for run in runs.values():
        variables_io.save_variables(storage.join(run, "weights"), variables)
        storage.write_text(storage.join(run, "config.json"), config.to_json_best_effort(indent=2))
    videos = own_videos.write_videos(str(root / "videos"), names=VIDEOS)
    gcs_emulator.upload_tree(str(root / "videos"), f"gs://{bucket}/videos")
    return SimpleNamespace(config=config, bucket=bucket, root=root, videos=videos,
                           local=storage.join(runs["local"], "weights"), gs=storage.join(runs["gs"], "weights"))


def _gs_video(model, name: str) -> str:
    return f"gs://{model.bucket}/videos/{name}"


def test_encoder_from_gs_checkpoint_encodes_gs_videos_as_local_ones(model, monkeypatch):
    local = Encoder.from_checkpoint(model.local)
    remote = Encoder.from_checkpoint(model.gs)  # the run's config.json found beside the bucket's weights
    assert remote.origin == model.gs and remote.config.to_dict() == local.config.to_dict()

    def no_whole_reads(path):
        raise AssertionError(f"{path} read whole")

    monkeypatch.setattr(storage, "read_bytes", no_whole_reads)  # videos are streamed by ranged reads
    monkeypatch.setattr(storage, "local_copy", no_whole_reads)
    from_files = local.encode_videos([model.videos[n] for n in VIDEOS], CLIP_SECONDS, progress=False)
    from_bucket = remote.encode_videos([_gs_video(model, n) for n in VIDEOS], CLIP_SECONDS, progress=False)
    assert [v.source for v in from_bucket] == [_gs_video(model, n) for n in VIDEOS]
    assert [len(v.embeddings) for v in from_bucket] == [2, 3]
    for a, b in zip(from_files, from_bucket):
        np.testing.assert_array_equal(b.embeddings, a.embeddings)
        np.testing.assert_array_equal(b.starts, a.starts)
        np.testing.assert_array_equal(b.ends, a.ends)
        assert b.duration == a.duration and b.error is None
    assert np.abs(from_bucket[0].embeddings[0] - from_bucket[1].embeddings[0]).max() > 1e-3

    broken, missing = _gs_video(model, own_videos.BROKEN), _gs_video(model, "nope.mp4")
    bad = remote.encode_videos([broken, missing], skip_errors=True, progress=False)
    assert bad[0].error.startswith("unreadable: ") and bad[1].error == "missing video file"
    assert all(v.embeddings.shape == (0, remote.dim) for v in bad)
    with pytest.raises(EncoderError, match=f"^{missing}: missing video file$"):
        remote.encode_videos([missing], progress=False)


def test_frame_options_from_a_build_json_in_a_bucket(model):
    options = FrameOptions.for_crop(tuple(model.config.model.crop_size), model.config.model.num_frames,
                                    sample_rate=3)
    build = f"gs://{model.bucket}/records/train_build.json"
    storage.write_text(build, json.dumps(dict(geometry="resize", num_shards=1, **vars(options))))
    assert FrameOptions.from_build_json(build) == options


def test_list_videos_in_a_bucket(model):
    folder = f"gs://{model.bucket}/videos"
    expected = sorted(_gs_video(model, n) for n in (*VIDEOS, own_videos.BROKEN))
    storage.write_text(f"{folder}/docs/notes.txt", "not a video")
    storage.write_bytes(f"{folder}/.hidden.mp4", b"x")
    try:
        assert list_videos(folder) == list_videos(folder + "/") == expected  # video files at any depth
        assert list_videos(f"{folder}/*.mp4") == [_gs_video(model, n) for n in (own_videos.BROKEN, "wide.mp4")]
        assert list_videos(f"{folder}/.*.mp4") == [f"{folder}/.hidden.mp4"]
        assert list_videos(f"{folder}/docs/*") == [f"{folder}/docs/notes.txt"]  # a glob takes any name
        with pytest.raises(SearchError, match=r"--videos=.*matches no files"):
            list_videos(f"{folder}/*.mkv")
        with pytest.raises(SearchError, match=r"--videos=.*/docs': no files ending in \.mp4, "):
            list_videos(f"{folder}/docs")
    finally:
        storage.remove(f"{folder}/docs/notes.txt")
        storage.remove(f"{folder}/.hidden.mp4")


@pytest.mark.parametrize("where", ["local", "gs"])
def test_video_index_resumes_grows_and_queries(model, where, tmp_path, monkeypatch, request):
    """Index a folder of videos (local, or all in a bucket: videos, index, work folder, PNG), resume it,
    add a file and replace one, then query it and draw the hits."""
    monkeypatch.chdir(tmp_path)  # where a gs:// path taken for a local one would make a "gs:" folder
    if where == "gs":
        root = f"gs://{request.getfixturevalue('gcs_bucket')}"
        gcs_emulator.upload_tree(str(model.root / "videos"), f"{root}/videos")
    else:
        root = str(tmp_path)
        gcs_emulator.upload_tree(str(model.root / "videos"), f"{root}/videos")
    folder, out = f"{root}/videos", f"{root}/index"
    checkpoint = model.gs if where == "gs" else model.local
    encoder = Encoder.from_checkpoint(checkpoint)

    def build():
        return build_video_index(encoder, folder, out, CLIP_SECONDS, progress=False,
                                 manifest=dict(checkpoint=checkpoint))

    manifest, summary = build()
    broken = storage.join(folder, own_videos.BROKEN)
    assert summary.line().startswith(f"2 videos, 5 clips indexed, 1 skipped\n  skipped {broken}: unreadable: ")
    assert manifest["videos"] == storage.absolute(folder) and manifest["checkpoint"] == checkpoint
    index = load_index(out)
    assert index.ids == ["clips/qcif.mp4@0.0-3.0", "clips/qcif.mp4@3.0-6.0", "clips/qcif.mp4@6.0-9.0",
                         "wide.mp4@0.0-3.0", "wide.mp4@3.0-6.0"]
    assert [span[0] for span in index.spans] == [storage.join(folder, "clips/qcif.mp4")] * 3 + [
        storage.join(folder, "wide.mp4")] * 2
    expected = encoder.encode_videos([storage.join(folder, n) for n in ("clips/qcif.mp4", "wide.mp4")],
                                     CLIP_SECONDS, progress=False)
    np.testing.assert_allclose(index.embeddings, np.concatenate([v.embeddings for v in expected]), atol=1e-6)
    work = f"{out}/work"
    chunk0 = ["embeddings-00000.npy", "offsets-00000.npy", "settings.json", "thumbnails-00000.bin",
              "videos-00000.jsonl"]
    assert storage.listdir(work) == chunk0

    _, again = build()  # resumed: nothing encoded, nothing written to the work folder
    assert again.reused == 3 and again.line() == summary.line() and storage.listdir(work) == chunk0
    np.testing.assert_array_equal(load_index(out).embeddings, index.embeddings)

    # A new file, and the broken one replaced by a video: only those two are encoded, into chunk 1.
    storage.copy(model.videos["wide.mp4"], f"{folder}/more/again.mp4")
    storage.copy(model.videos["clips/qcif.mp4"], broken)
    _, grown = build()
    assert grown.reused == 2 and grown.line() == "4 videos, 10 clips indexed, 0 skipped"
    assert storage.listdir(work) == sorted(chunk0 + [n.replace("00000", "00001") for n in chunk0 if "-" in n])
    grown_index = load_index(out)
    rows = {clip_id: row for row, clip_id in enumerate(grown_index.ids)}
    for old, new in (("wide.mp4@3.0-6.0", "more/again.mp4@3.0-6.0"), ("clips/qcif.mp4@6.0-9.0", "broken.mp4@6.0-9.0")):
        np.testing.assert_array_equal(grown_index.embeddings[rows[new]], grown_index.embeddings[rows[old]])

    results = search_text(grown_index, QUERIES, top=3)
    texts = encoder.encode_texts(QUERIES)
    for query_hits, text in zip(results, texts):
        scores = grown_index.embeddings @ text
        assert [h.rank for h in query_hits] == [1, 2, 3]
        assert [h.row for h in query_hits] == np.argsort(-scores, kind="stable")[:3].tolist()
        np.testing.assert_allclose([h.score for h in query_hits], np.sort(scores)[::-1][:3], atol=1e-5)
        assert all(h.path.startswith(folder + "/") and 0 <= h.start < h.end for h in query_hits)
    png = f"{root}/hits/query.png"
    assert render_results(png, QUERIES, results, grown_index) == render.canvas_size(2, 3)
    assert Image.open(io.BytesIO(storage.read_bytes(png))).size == render.canvas_size(2, 3)
    assert not os.path.exists(tmp_path / "gs:")


def test_records_index_in_a_bucket_equals_the_local_one(model, gcs_bucket, tmp_path, tmp_path_factory):
    """``index --records`` with records, checkpoint and index in a bucket: the index of the local run."""
    from hdvila_jax.search import build_index

    demo = train_helpers.make_demo_data(str(tmp_path_factory.getbasetemp() / "demo_data"))
    root = f"gs://{gcs_bucket}"
    for path in storage.glob(os.path.join(demo, "records", "val-*")):  # the records and their sidecars
        storage.copy(path, f"{root}/records/{os.path.basename(path)}")
    build_index(model.config, model.local, os.path.join(demo, "records", "val-*.tfrecord"),
                        str(tmp_path / "index"), progress=False)
    remote = build_index(model.config, model.gs, f"{root}/records/val-*.tfrecord", f"{root}/index", progress=False)
    assert remote["records"] == f"{root}/records/val-*.tfrecord" and remote["checkpoint"] == model.gs
    a, b = load_index(str(tmp_path / "index")), load_index(f"{root}/index")
    assert len(b) == 8 and b.ids == a.ids and b.captions == a.captions and b.spans == a.spans
    np.testing.assert_array_equal(b.embeddings, a.embeddings)
    assert [b.thumbnail(i) for i in range(len(b))] == [a.thumbnail(i) for i in range(len(a))]
    hits = search_text(b, b.captions[:2], top=8)
    assert [sorted(h.id for h in query_hits) for query_hits in hits] == [sorted(b.ids)] * 2


def test_index_config_checks_records_in_a_bucket(model, gcs_bucket):
    config = train_helpers.tiny_config(1, str(model.root))
    with pytest.raises(SearchError, match="--records="):
        index_config(config, f"gs://{gcs_bucket}/records/train-*.tfrecord")
    storage.write_bytes(f"gs://{gcs_bucket}/records/train-00000-of-00001.tfrecord", b"")
    assert index_config(config, f"gs://{gcs_bucket}/records/train-*.tfrecord").data.val_files == (
        f"gs://{gcs_bucket}/records/train-*.tfrecord")


def test_cli_index_and_query_all_in_a_bucket(model, gcs_bucket, tmp_path):
    root = f"gs://{gcs_bucket}"
    gcs_emulator.upload_tree(str(model.root / "videos"), f"{root}/my videos")
    cli = [sys.executable, "-m", "hdvila_jax.search"]
    env = train_helpers.subprocess_env()
    index = subprocess.run([*cli, "index", f"--checkpoint={model.gs}", f"--videos={root}/my videos/*.mp4",
                            f"--out={root}/index", f"--clip_seconds={CLIP_SECONDS}"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert index.returncode == 0, index.stderr[-4000:]
    assert f"1 videos, 2 clips indexed, 1 skipped\n  skipped {root}/my videos/broken.mp4: unreadable" in index.stdout
    png = f"{root}/hits.png"
    query = subprocess.run([*cli, "query", f"--index={root}/index", *QUERIES, "--top=2", "--json", f"--png={png}"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert query.returncode == 0, query.stderr[-4000:]
    results = json.loads(query.stdout)
    assert [r["query"] for r in results] == QUERIES
    assert all([h["rank"] for h in r["hits"]] == [1, 2] and {h["path"] for h in r["hits"]} == {
        f"{root}/my videos/wide.mp4"} for r in results)
    assert f"wrote {png} ({render.canvas_size(2, 2)[0]}x{render.canvas_size(2, 2)[1]})" in query.stderr
    assert Image.open(io.BytesIO(storage.read_bytes(png))).size == render.canvas_size(2, 2)
    assert not os.listdir(tmp_path)  # nothing local: no "gs:" folder


@pytest.mark.slow
def test_evaluate_a_gs_checkpoint_into_a_gs_workdir(model, gcs_bucket, tmp_path_factory, tmp_path, monkeypatch):
    """``python -m hdvila_jax.evaluate`` of the bucket's weights on the demo records: the same metrics
    as evaluating the local copy, the table printed, metrics.jsonl and the JSON written to the bucket."""
    from hdvila_jax import evaluate

    base = tmp_path_factory.getbasetemp()
    train_helpers.make_demo_data(str(base / "demo_data"))  # read by the tiny variant as demo_data/records/
    config_file = os.path.join(train_helpers.REPO, "configs", "retrieval.py")
    monkeypatch.chdir(base)
    local = evaluate.evaluate_sets(config_file, ["tiny"], model.local, str(tmp_path / "eval"), batch_size=4)
    root = f"gs://{gcs_bucket}"
    proc = subprocess.run([sys.executable, "-m", "hdvila_jax.evaluate", f"--config={config_file}", "--sets=tiny",
                           f"--checkpoint={model.gs}", f"--workdir={root}/eval", f"--json={root}/eval.json",
                           "--batch_size=4"], env=train_helpers.subprocess_env(), cwd=base, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    written = json.loads(storage.read_text(f"{root}/eval.json"))
    assert written["checkpoint"] == model.gs
    assert local["tiny"]["num_videos"] == 8
    for key, value in local["tiny"].items():
        assert written["sets"]["tiny"][key] == pytest.approx(value, abs=1e-4), key
    assert "| tiny | 8 |" in proc.stdout and "warning: set tiny has only 8 videos" in proc.stderr
    rows = [json.loads(line) for line in storage.read_text(f"{root}/eval/tiny/metrics.jsonl").splitlines()]
    assert len(rows) == 1 and rows[0]["eval/num_videos"] == 8
