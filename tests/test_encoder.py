"""hdvila_jax.Encoder on real decoded H.264 files: the embedding of a file equals the embedding of
the same clip read back from records built by data_pipelines; clip windows, decoded frames, bad files."""
import os

import numpy as np
import pytest

from hdvila_jax import Encoder, EncoderError
from hdvila_jax.models import HDVILA, model_config_from_dict
from hdvila_jax.search.build import encode_records
from hdvila_jax import sharding, variables_io
from hdvila_jax.train import train_state
from hdvila_jax.video.clips import FrameOptions, clip_windows
from tests import data_helpers, own_videos, train_helpers
from data_pipelines.vocab import write_vocab


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(config, variables, mesh, video paths): a tiny random-init model and three videos + a broken file."""
    root = tmp_path_factory.mktemp("encoder")
    videos = own_videos.write_videos(str(root / "videos"))
    vocab = str(root / "vocab.txt")
    write_vocab(vocab, ["a red circle moves left", "a blue square moves right"])
    config = train_helpers.tiny_config(1, str(root))
    config.data.vocab_file = vocab
    model_cfg = model_config_from_dict(config.model.to_dict())
    mesh = sharding.make_mesh(config.mesh)
    variables = train_state.init_variables_sharded(config, model_cfg, mesh)
    return config, {k: variables[k] for k in ("params", "batch_stats")}, mesh, videos, root


def test_file_embedding_equals_record_embedding(setup):
    config, variables, mesh, videos, root = setup
    names = ["wide.mp4", "clips/qcif.mp4"]
    annotations = str(root / "clips.jsonl")
    data_helpers.write_jsonl(annotations, [{"clip_id": n, "text": "a caption"} for n in names])
    options = FrameOptions.for_crop(tuple(config.model.crop_size), config.model.num_frames, sample_rate=3)
    out = str(root / "records")
    data_helpers.build(os.path.dirname(videos["wide.mp4"]), annotations, out, "--num_candidates", "8",
                       frame_hw=(options.frame_height, options.frame_width), sample_rate=3, num_shards=1)
    config = config.copy_and_resolve_references()
    config.data.val_files = os.path.join(out, "train-*.tfrecord")
    from_records = encode_records(HDVILA(model_config_from_dict(config.model.to_dict())), variables, config, mesh,
                                  batch_size=4, progress=False)

    # The Encoder reads the build's options from its build.json (and batches 3 clips, padded to 4).
    encoder = Encoder(config, variables, mesh, FrameOptions.from_build_json(os.path.join(out, "train_build.json")),
                      batch_size=3)
    assert encoder.frame_options == options and encoder.batch_size == 3
    encoded = encoder.encode_videos([videos[n] for n in names], progress=False)
    from_files = np.concatenate([e.embeddings for e in encoded])
    assert from_files.shape == (2, config.model.hidden_size)
    np.testing.assert_allclose(from_files, from_records, atol=2e-5)
    # The two videos differ, so the equality is not that of a constant output.
    assert np.abs(from_files[0] - from_files[1]).max() > 1e-3
    assert [e.starts.tolist() for e in encoded] == [[0.0], [0.0]]
    np.testing.assert_allclose([e.ends[0] for e in encoded], [6.0, 10.0], atol=0.11)


def test_old_run_config_with_data_crop_and_frames_loads(setup, tmp_path):
    # A run's config.json from before the crop and frame count were the model's alone holds
    # data.crop_size and data.num_frm too; nothing reads them (here they even disagree with the model).
    config, variables, _, _, _ = setup
    old = config.copy_and_resolve_references()
    old.data.crop_size, old.data.num_frm = (128, 128), 9
    (tmp_path / "config.json").write_text(old.to_json_best_effort(indent=2))
    variables_io.save_variables(tmp_path / "variables", variables)
    encoder = Encoder.from_checkpoint(str(tmp_path / "variables"))
    assert encoder.crop_hw == tuple(config.model.crop_size) and encoder.frame_options.num_frm == 7
    assert (encoder.frame_options.frame_height, encoder.frame_options.frame_width) == (72, 240)


def test_from_checkpoint_names_what_is_wrong(setup, tmp_path):
    config, variables, _, _, _ = setup
    (tmp_path / "config.json").write_text(config.to_json_best_effort(indent=2))
    variables_io.save_variables(tmp_path / "variables", variables)
    with pytest.raises(EncoderError, match="^checkpoint '.*nowhere' does not exist$"):
        Encoder.from_checkpoint(str(tmp_path / "nowhere"))  # no config given: not "no config.json"
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderError, match="holds no checkpoint"):
        Encoder.from_checkpoint(str(tmp_path / "empty"), config=config)
    wider = config.copy_and_resolve_references()
    wider.model.hidden_size = 2 * config.model.hidden_size
    with pytest.raises(EncoderError, match=rf"^the config does not match this checkpoint \(model.hidden_size "
                                           rf"{wider.model.hidden_size} vs {config.model.hidden_size} \(the run's\)\)"):
        Encoder.from_checkpoint(str(tmp_path / "variables"), config=wider)


def test_windows_bad_files_and_texts(setup):
    config, variables, mesh, videos, _ = setup
    encoder = Encoder(config, variables, mesh, batch_size=4)
    texts = encoder.encode_texts(["a red circle moves left", "a blue square moves right", "x"])
    assert texts.shape == (3, encoder.dim) and encoder.dim == config.model.hidden_size
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1, rtol=1e-5)

    paths = [videos["hd.mp4"], videos[own_videos.BROKEN], videos["clips/qcif.mp4"]]
    with pytest.raises(EncoderError, match="broken.mp4: unreadable"):
        encoder.encode_videos(paths, clip_seconds=3.0, progress=False)
    hd, broken, qcif = encoder.encode_videos(paths, clip_seconds=3.0, skip_errors=True, progress=False)
    assert broken.error.startswith("unreadable") and broken.embeddings.shape == (0, encoder.dim)
    # 4 s of video in 3 s windows: one window (the 1 s tail is under half a stride); 10 s: 0-3, 3-6, 6-9.
    assert hd.starts.tolist() == [0.0] and hd.ends.tolist() == [3.0] and hd.error is None
    assert qcif.starts.tolist() == [0.0, 3.0, 6.0] and qcif.ends.tolist() == [3.0, 6.0, 9.0]
    assert qcif.embeddings.shape == (3, encoder.dim) and qcif.duration == pytest.approx(10.0, abs=0.11)
    np.testing.assert_allclose(np.linalg.norm(qcif.embeddings, axis=1), 1, rtol=1e-5)
    # A window is encoded like the same span on its own.
    alone = encoder.encode_videos([videos["clips/qcif.mp4"]], clip_seconds=3.0, stride_seconds=3.0,
                                  progress=False)[0]
    np.testing.assert_allclose(alone.embeddings, qcif.embeddings, atol=2e-5)
    assert np.abs(qcif.embeddings[0] - qcif.embeddings[2]).max() > 1e-4


def test_one_item_is_refused_and_zero_seconds_means_whole_files(setup):
    config, variables, mesh, videos, _ = setup
    encoder = Encoder(config, variables, mesh, batch_size=2)
    with pytest.raises(EncoderError, match=r"not one string: pass \['a dog'\]"):
        encoder.encode_texts("a dog")
    for one in (videos["hd.mp4"], data_helpers.pattern_frames(30, (90, 160))):
        with pytest.raises(EncoderError, match=r"a list of videos .*pass \[video\]"):
            encoder.encode_videos(one, progress=False)
    (whole,) = encoder.encode_videos([videos["clips/qcif.mp4"]], clip_seconds=0, progress=False)
    (none,) = encoder.encode_videos([videos["clips/qcif.mp4"]], clip_seconds=None, progress=False)
    assert whole.starts.tolist() == none.starts.tolist() and len(whole.embeddings) == 1
    np.testing.assert_array_equal(whole.embeddings, none.embeddings)


def test_decoded_frames_and_too_short(setup):
    config, variables, mesh, _, _ = setup
    encoder = Encoder(config, variables, mesh, batch_size=2)
    frames = data_helpers.pattern_frames(30, (90, 160))
    (out,) = encoder.encode_videos([frames], fps=10.0, progress=False)
    assert out.embeddings.shape == (1, encoder.dim) and out.ends.tolist() == [3.0]
    with pytest.raises(EncoderError, match="too short"):
        encoder.encode_videos([frames[:3]], progress=False)


def test_clip_windows_and_frame_options():
    assert clip_windows(0.0, 10.0, 4.0) == [(0.0, 4.0), (4.0, 8.0), (6.0, 10.0)]
    assert clip_windows(0.0, 10.2, 4.0, 3.0) == [(0.0, 4.0), (3.0, 7.0), (6.0, 10.0)]
    assert clip_windows(0.5, 2.0, 4.0) == [(0.5, 2.0)] and clip_windows(0.0, 7.0, None) == [(0.0, 7.0)]
    with pytest.raises(ValueError, match="must be positive"):
        clip_windows(0.0, 10.0, 0.0)
    assert FrameOptions.for_crop((640, 1024), 7) == FrameOptions()  # the paper's 720x1280 around 640x1024
    assert (FrameOptions.for_crop((64, 192), 7).frame_height, FrameOptions.for_crop((64, 192), 7).frame_width) == (72, 240)
