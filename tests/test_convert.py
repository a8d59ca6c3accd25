"""Converters: round trips, strictness and clear errors, file formats, the command line."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from hdvila_jax.convert import (ConversionError, convert_hdvila, export_hdvila, load_bert, load_resnet,
                                load_state_dict)
from hdvila_jax.convert.rules import bert_rules, resnet_rules
from hdvila_jax.convert.loader import export_rules
from hdvila_jax.variables_io import restore_variables
from tests.model_helpers import init_small, small_config

CFG = small_config()


@pytest.fixture(scope="module")
def stage2_vars():
    return init_small(CFG, stage=2, seed=1)


def assert_trees_equal(a, b):
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("stage", [1, 2])
def test_hdvila_round_trip(stage, stage2_vars):
    variables = init_small(CFG, stage, seed=2)
    state_dict = export_hdvila(variables, CFG, stage)
    assert "transformer.bert.encoder.layer.0.attention.self.query.weight" in state_dict
    assert ("transformer.cls.predictions.bias" in state_dict) == (stage == 2)
    assert_trees_equal(convert_hdvila(state_dict, CFG, stage), variables)


def test_known_unused_reference_keys_are_accepted(stage2_vars):
    state_dict = export_hdvila(stage2_vars, CFG, 2)
    extra = {"cnn_low.layer4.0.conv1.weight": np.ones((512, 256, 3, 3), np.float32),
             "timesformer.norm.weight": np.ones(32, np.float32),
             "cnn.bn1.num_batches_tracked": np.zeros((), np.int64),
             "transformer.cls.predictions.decoder.bias": state_dict["transformer.cls.predictions.bias"]}
    assert_trees_equal(convert_hdvila({**state_dict, **extra}, CFG, 2), stage2_vars)


def test_missing_key_is_named(stage2_vars):
    state_dict = export_hdvila(stage2_vars, CFG, 2)
    del state_dict["timesformer.blocks.1.temporal_fc.weight"]
    with pytest.raises(ConversionError, match=r"missing from the checkpoint:\s+timesformer.blocks.1.temporal_fc.weight"):
        convert_hdvila(state_dict, CFG, 2)


def test_unexpected_key_is_named(stage2_vars):
    state_dict = export_hdvila(stage2_vars, CFG, 2)
    state_dict["transformer.bert.encoder.layer.9.output.dense.weight"] = np.ones((32, 64), np.float32)
    with pytest.raises(ConversionError, match=r"unexpected in the checkpoint:\s+transformer.bert.encoder.layer.9"):
        convert_hdvila(state_dict, CFG, 2)


def test_wrong_shape_is_named(stage2_vars):
    state_dict = export_hdvila(stage2_vars, CFG, 2)
    state_dict["transformer.t_proj.weight"] = np.ones((32, 16), np.float32)
    with pytest.raises(ConversionError, match=r"transformer.t_proj.weight: checkpoint \(32, 16\).*"
                                              r"contrastive/text_proj/kernel expects \(32, 32\)"):
        convert_hdvila(state_dict, CFG, 2)


def test_untied_decoder_bias_is_refused(stage2_vars):
    state_dict = export_hdvila(stage2_vars, CFG, 2)
    state_dict["transformer.cls.predictions.decoder.bias"] = state_dict["transformer.cls.predictions.bias"] + 1
    with pytest.raises(ConversionError, match="decoder.bias differs"):
        convert_hdvila(state_dict, CFG, 2)


def _bert_state_dict(variables, prefix="bert."):
    """An HF-layout BERT checkpoint (with ``cls.``) holding the BERT parts of ``variables``."""
    return export_rules(variables, bert_rules(CFG, prefix, with_mlm_head=True))


def test_bert_into_stage2_model(stage2_vars):
    donor = init_small(CFG, stage=2, seed=7)
    state_dict = _bert_state_dict(donor)
    state_dict["bert.pooler.dense.weight"] = np.ones((32, 32), np.float32)  # HF pooler: unused by HD-VILA
    del state_dict["cls.predictions.decoder.weight"]  # tied checkpoints omit it
    loaded, report = load_bert(stage2_vars, state_dict, CFG)
    assert report.ignored == ["bert.pooler.dense.weight"]
    p, d = loaded["params"], donor["params"]
    np.testing.assert_array_equal(p["fusion"]["encoder"]["layer_3"]["ffn_in"]["kernel"],
                                  d["fusion"]["encoder"]["layer_3"]["ffn_in"]["kernel"])
    np.testing.assert_array_equal(p["heads"]["mlm"]["decoder"]["kernel"], d["text"]["embeddings"]["word"]["embedding"].T)
    # Parts BERT does not hold keep their values.
    np.testing.assert_array_equal(p["fusion"]["pooler"]["dense"]["kernel"],
                                  stage2_vars["params"]["fusion"]["pooler"]["dense"]["kernel"])


def test_bert_without_prefix_into_stage1_model_and_legacy_names():
    variables = init_small(CFG, stage=1, seed=3)
    donor = init_small(CFG, stage=2, seed=8)
    state_dict = {k.replace("LayerNorm.weight", "LayerNorm.gamma"): v for k, v in _bert_state_dict(donor, "").items()}
    loaded, report = load_bert(variables, state_dict, CFG)
    assert any(k.startswith("encoder.layer.3.") for k in report.ignored)  # cross-modal half: no place in stage 1
    np.testing.assert_array_equal(loaded["params"]["text"]["embeddings"]["norm"]["scale"],
                                  donor["params"]["text"]["embeddings"]["norm"]["scale"])


def test_bert_with_too_few_layers_is_refused_unless_allowed(stage2_vars):
    state_dict = {k: v for k, v in _bert_state_dict(stage2_vars).items() if "layer.3." not in k}
    with pytest.raises(ConversionError, match=r"bert.encoder.layer.3.attention.self.query.weight"):
        load_bert(stage2_vars, state_dict, CFG)
    _, report = load_bert(stage2_vars, state_dict, CFG, allow_missing=True)
    assert len(report.missing) == 16


def test_resnet_into_both_branches(stage2_vars):
    donor = init_small(CFG, stage=2, seed=9)
    state_dict = {f"backbone.{k}": v for k, v in
                  export_rules(donor, resnet_rules("", ("video", "cnn_hr"), CFG.resnet_depth)).items()}
    state_dict["backbone.fc.weight"] = np.ones((10, 512), np.float32)
    loaded, report = load_resnet(stage2_vars, state_dict, CFG)
    assert report.ignored == ["fc.weight"]
    for branch in ("cnn_hr", "cnn_lr"):
        for coll in ("params", "batch_stats"):
            np.testing.assert_array_equal(loaded[coll]["video"][branch]["layer3_1"]["bn2"]["scale" if coll == "params" else "var"],
                                          donor[coll]["video"]["cnn_hr"]["layer3_1"]["bn2"]["scale" if coll == "params" else "var"])
    assert "layer4_0" not in loaded["params"]["video"]["cnn_lr"]


def test_file_formats(tmp_path, stage2_vars):
    state_dict = export_hdvila(stage2_vars, CFG, 2)
    torch.save({"state_dict": {k: torch.tensor(v) for k, v in state_dict.items()}, "meta": {"epoch": 3}},
               tmp_path / "ckpt.pt")
    np.savez(tmp_path / "ckpt.npz", **state_dict)
    from safetensors.numpy import save_file
    save_file(state_dict, str(tmp_path / "ckpt.safetensors"))
    for name in ("ckpt.pt", "ckpt.npz", "ckpt.safetensors"):
        loaded = load_state_dict(tmp_path / name)
        assert sorted(loaded) == sorted(state_dict)
        np.testing.assert_array_equal(loaded["transformer.t_proj.weight"], state_dict["transformer.t_proj.weight"])


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_is_refused(tmp_path):
    torch.save({"x": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt: not a loadable weights-only torch checkpoint"):
        load_state_dict(tmp_path / "evil.pt")
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        load_state_dict(tmp_path / "nope.bin")


def test_command_line_writes_orbax_checkpoint(tmp_path, stage2_vars):
    state_dict = export_hdvila(stage2_vars, CFG, 2)
    torch.save({k: torch.tensor(v) for k, v in state_dict.items()}, tmp_path / "hdvila.pt")
    overrides = [f"--model_config.{k}={v}" for k, v in
                 dict(resnet_depth=18, hidden_size=32, intermediate_size=64, timesformer_heads=2,
                      num_attention_heads=2, pixel_random_sampling_size=1).items()]
    cmd = [sys.executable, "-m", "hdvila_jax.convert", "--model_config=configs/model.py:tiny",
           "--model_config.crop_size=(64, 128)", *overrides, "--stage=2",
           f"--hdvila={tmp_path / 'hdvila.pt'}", f"--output={tmp_path / 'out'}"]
    subprocess.run(cmd, check=True, cwd=os.path.dirname(os.path.dirname(__file__)), capture_output=True)
    assert_trees_equal(restore_variables(tmp_path / "out").variables, stage2_vars)
    # The trainer starts from it as init.stage1_checkpoint / init.restore (variables only): restored
    # into a target tree, the stage-1 part alone out of the stage-2 checkpoint.
    restored = restore_variables(str(tmp_path / "out"), stage2_vars, "config.init.stage1_checkpoint")
    assert restored.directory == str(tmp_path / "out") and restored.unused == [] and restored.step == 0
    assert_trees_equal(restored.variables, stage2_vars)
    stage1_part = {name: {k: v for k, v in stage2_vars[name].items() if k in ("video", "text", "contrastive")}
                   for name in ("params", "batch_stats")}
    subset = restore_variables(str(tmp_path / "out"), stage1_part, "config.init.stage1_checkpoint")
    assert_trees_equal(subset.variables, stage1_part)
    assert subset.unused and all(not p.split("/")[1] in ("video", "text", "contrastive") for p in subset.unused)


# ---- files and output in a bucket (fake-gcs-server on loopback: tests/gcs_emulator.py) ---------------------------

def test_state_dicts_from_a_bucket_load_as_local_files_and_stay_weights_only(tmp_path, stage2_vars, gcs_bucket):
    from safetensors.numpy import save_file

    from hdvila_jax import storage
    state_dict = export_hdvila(stage2_vars, CFG, 2)
    torch.save({"state_dict": {k: torch.tensor(v) for k, v in state_dict.items()}}, tmp_path / "ckpt.pt")
    np.savez(tmp_path / "ckpt.npz", **state_dict)
    save_file(state_dict, str(tmp_path / "ckpt.safetensors"))
    torch.save({"x": _Payload()}, tmp_path / "evil.pt")
    bucket = f"gs://{gcs_bucket}/weights"
    for name in ("ckpt.pt", "ckpt.npz", "ckpt.safetensors", "evil.pt"):
        storage.copy(tmp_path / name, f"{bucket}/{name}")
    for name in ("ckpt.pt", "ckpt.npz", "ckpt.safetensors"):
        loaded = load_state_dict(f"{bucket}/{name}")
        assert sorted(loaded) == sorted(state_dict)
        for key, value in state_dict.items():
            np.testing.assert_array_equal(loaded[key], value)
    with pytest.raises(ValueError, match=f"{bucket}/evil.pt: not a loadable weights-only torch checkpoint"):
        load_state_dict(f"{bucket}/evil.pt")
    with pytest.raises(FileNotFoundError, match=f"{bucket}/nope.bin"):
        load_state_dict(f"{bucket}/nope.bin")


def test_init_bert_from_a_bucket(tmp_path, stage2_vars, gcs_bucket):
    """The trainer's pretrained initialisation (``config.init.bert``) reads a PyTorch BERT file in a bucket."""
    import ml_collections

    from hdvila_jax import storage
    from hdvila_jax.models.variables import abstract_variables
    from hdvila_jax.train.startup import pretrained_variables
    donor = init_small(CFG, stage=2, seed=7)
    torch.save({k: torch.tensor(v) for k, v in _bert_state_dict(donor).items()}, tmp_path / "pytorch_model.bin")
    bert = f"gs://{gcs_bucket}/bert/pytorch_model.bin"
    storage.copy(tmp_path / "pytorch_model.bin", bert)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          abstract_variables(CFG, 2))
    config = ml_collections.ConfigDict(dict(stage=2, init=dict(bert=bert, resnet="")))
    loaded = pretrained_variables(config, CFG, stage2_vars, target)
    p, d = loaded["params"], donor["params"]
    np.testing.assert_array_equal(p["fusion"]["encoder"]["layer_3"]["ffn_in"]["kernel"],
                                  d["fusion"]["encoder"]["layer_3"]["ffn_in"]["kernel"])
    np.testing.assert_array_equal(p["text"]["embeddings"]["word"]["embedding"],
                                  d["text"]["embeddings"]["word"]["embedding"])
    np.testing.assert_array_equal(p["video"]["cnn_hr"]["conv1"]["kernel"],  # not in BERT: the random values kept
                                  stage2_vars["params"]["video"]["cnn_hr"]["conv1"]["kernel"])


def test_command_line_reads_and_writes_a_bucket(tmp_path, stage2_vars, gcs_bucket, monkeypatch):
    from hdvila_jax import storage
    monkeypatch.chdir(tmp_path)
    torch.save({k: torch.tensor(v) for k, v in export_hdvila(stage2_vars, CFG, 2).items()}, tmp_path / "hdvila.pt")
    root = f"gs://{gcs_bucket}"
    storage.copy(tmp_path / "hdvila.pt", f"{root}/hdvila.pt")
    overrides = [f"--model_config.{k}={v}" for k, v in
                 dict(resnet_depth=18, hidden_size=32, intermediate_size=64, timesformer_heads=2,
                      num_attention_heads=2, pixel_random_sampling_size=1).items()]
    repo = os.path.dirname(os.path.dirname(__file__))
    cmd = [sys.executable, "-m", "hdvila_jax.convert", f"--model_config={repo}/configs/model.py:tiny",
           "--model_config.crop_size=(64, 128)", *overrides, "--stage=2", f"--hdvila={root}/hdvila.pt",
           f"--output={root}/converted"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=repo), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    restored = restore_variables(f"{root}/converted")
    assert restored.directory == f"{root}/converted"
    assert_trees_equal(restored.variables, stage2_vars)
    assert os.listdir(tmp_path) == ["hdvila.pt"]  # nothing local: no "gs:" folder
