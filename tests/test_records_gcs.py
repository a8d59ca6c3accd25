"""Clip records, vocab and answer vocabulary read from a bucket (fake-gcs-server on loopback,
``tests/gcs_emulator.py``) with every guarantee they have on local disk, and the clear errors of a
bucket or server that cannot be used."""
import json
import os
import socket
import time

import pytest

from hdvila_jax import storage
from hdvila_jax.data import tfrecord_source
from hdvila_jax.data.answers import load_ans2label
from hdvila_jax.data.text import ThreadLocalTokenizer
from hdvila_jax.data.tfrecord_source import CorruptRecord, CorruptRecordError, TFRecordDataSource
from tests import train_helpers
from tests.gcs_emulator import upload_tree


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return train_helpers.make_demo_data(str(tmp_path_factory.getbasetemp() / "demo_data"))


def _records(source) -> list:
    return [source[i] for i in range(len(source))]


def test_records_in_a_bucket_read_as_on_disk(gcs_bucket, demo_root, tmp_path):
    remote = f"gs://{gcs_bucket}/demo"
    upload_tree(os.path.join(demo_root, "records"), f"{remote}/records")
    pattern = "records/train-*.tfrecord"
    local_files = storage.glob(os.path.join(demo_root, pattern))
    remote_files = storage.glob(f"{remote}/{pattern}")
    assert [os.path.basename(p) for p in remote_files] == [os.path.basename(p) for p in local_files]
    assert len(remote_files) >= 2
    local = _records(TFRecordDataSource(local_files))
    assert _records(TFRecordDataSource(remote_files)) == local and len(local) == 16

    # a shard without its sidecar is indexed by walking its headers (buffered ranged reads)
    storage.remove(tfrecord_source.sidecar_path(remote_files[0]))
    assert tfrecord_source.record_offsets(remote_files[0]) == tfrecord_source.record_offsets(local_files[0])
    assert _records(TFRecordDataSource(remote_files)) == local

    # the same damage in both places: the same record marked, the same reason
    data = bytearray(storage.read_bytes(local_files[1]))
    offsets = tfrecord_source.record_offsets(local_files[1])
    data[offsets[1] + 20] ^= 0xFF  # inside the second record's payload
    damaged_local = str(tmp_path / os.path.basename(local_files[1]))
    storage.write_bytes(damaged_local, bytes(data))
    storage.write_bytes(remote_files[1], bytes(data))
    marked = [_records(TFRecordDataSource([path], on_corrupt="mark")) for path in (damaged_local, remote_files[1])]
    bad = [[(i, r.offset, r.reason) for i, r in enumerate(records) if isinstance(r, CorruptRecord)]
           for records in marked]
    assert bad[0] == bad[1] == [(1, offsets[1], "data CRC mismatch")]
    with pytest.raises(CorruptRecordError, match=f"record 1: {remote_files[1]} at byte {offsets[1]}"):
        TFRecordDataSource([remote_files[1]])[1]

    # cut short: the tail is one unreadable-shard entry, as locally
    storage.write_bytes(remote_files[1], bytes(data[:offsets[2] + 30]))
    storage.remove(tfrecord_source.sidecar_path(remote_files[1]))
    tail = TFRecordDataSource([remote_files[1]], on_corrupt="mark")[2]
    assert isinstance(tail, CorruptRecord) and tail.kind == "shard" and tail.offset == offsets[2]


def test_vocab_and_answer_vocabulary_from_a_bucket(gcs_bucket, demo_root):
    remote = f"gs://{gcs_bucket}/demo"
    storage.copy(os.path.join(demo_root, "vocab.txt"), f"{remote}/vocab.txt")
    for vocab in (f"{remote}/vocab.txt", remote):  # the file, or the folder holding it
        from_bucket = ThreadLocalTokenizer(vocab)
        from_disk = ThreadLocalTokenizer(os.path.join(demo_root, "vocab.txt"))
        caption = "a red circle moves left"
        assert [a.tolist() for a in from_bucket.encode(caption, 12)] == [a.tolist() for a in
                                                                          from_disk.encode(caption, 12)]
        assert from_bucket.vocab_size == from_disk.vocab_size
    with pytest.raises(FileNotFoundError, match=f"data.vocab_file: no WordPiece vocab at {remote}/none.txt"):
        ThreadLocalTokenizer(f"{remote}/none.txt")
    storage.write_text(f"{remote}/ans2label.json", json.dumps({"yes": 1, "no": 0}))
    assert load_ans2label(f"{remote}/ans2label.json") == {"no": 0, "yes": 1}


def test_a_missing_bucket_or_a_dead_server_is_a_clear_error_within_seconds(gcs_server, monkeypatch):
    monkeypatch.setattr(storage, "_probed", set())
    start = time.monotonic()
    with pytest.raises(storage.StorageError, match="bucket gs://no-such-bucket does not exist"):
        storage.exists("gs://no-such-bucket/run")
    for name in ("ab", "Upper", "-dash"):  # tensorstore (orbax) would fail on each only when saving
        with pytest.raises(storage.StorageError, match=f"'{name}' is not a bucket name"):
            storage.exists(f"gs://{name}/run")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, never listening: connection refused
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", dead)
        with pytest.raises(storage.StorageError, match=f"no GCS server answers at STORAGE_EMULATOR_HOST={dead}"):
            storage.glob("gs://any-bucket/records/*.tfrecord")
    assert time.monotonic() - start < 15
