"""Convert PyTorch weights into an orbax checkpoint of our Flax variables.

Full HD-VILA checkpoint (released layout):
    python -m hdvila_jax.convert --model_config=configs/model.py:paper --stage=2 \
        --hdvila=hdvila_stage2.pt --output=/ckpt/hdvila_stage2
Pretrained parts, the rest randomly initialised (as the reference starts stage 1):
    python -m hdvila_jax.convert --model_config=configs/model.py:paper --stage=1 \
        --bert=bert-large-uncased/pytorch_model.bin --resnet=resnet50.pth --output=/ckpt/init

Every file and the output may be local or ``gs://`` (``--output=gs://bucket/ckpt/hdvila_stage2``).
"""
from __future__ import annotations

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from hdvila_jax import cli_errors
from hdvila_jax.convert import convert_hdvila, load_bert, load_resnet, load_state_dict
from hdvila_jax.storage import StorageError
from hdvila_jax.models import model_config_from_dict
from hdvila_jax.models.variables import init_variables
from hdvila_jax.variables_io import save_variables

_MODEL = config_flags.DEFINE_config_file("model_config", None, "Model config file, e.g. configs/model.py:paper.")
_STAGE = flags.DEFINE_enum("stage", "1", ["1", "2"], "Model stage: 1 (towers) or 2 (with the cross-modal encoder).")
_HDVILA = flags.DEFINE_string("hdvila", None, "A full HD-VILA state_dict (.pt/.bin/.safetensors/.npz; "
                              "local or gs://).")
_BERT = flags.DEFINE_string("bert", None, "An HF BERT checkpoint for the text (and cross-modal) layers "
                            "(local or gs://).")
_RESNET = flags.DEFINE_string("resnet", None, "A torchvision/mmdetection ResNet checkpoint for both ResNets "
                              "(local or gs://).")
_OUTPUT = flags.DEFINE_string("output", None, "New orbax checkpoint directory to write (local or gs://).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random initialisation of parts not loaded.")
_ALLOW_MISSING = flags.DEFINE_bool("allow_missing", False, "Accept a BERT checkpoint with fewer layers than the model.")
cli_errors.define_debug_flag()


def convert(model_config, stage: int, hdvila: str | None, bert: str | None, resnet: str | None,
            seed: int = 0, allow_missing: bool = False) -> dict:
    """The variables the command line would save (see the module docstring)."""
    cfg = model_config_from_dict(model_config.to_dict())
    if hdvila and (bert or resnet):
        raise ValueError("--hdvila already holds every weight: give either --hdvila or --bert/--resnet")
    if not (hdvila or bert or resnet):
        raise ValueError("nothing to convert: give --hdvila, or --bert and/or --resnet")
    if hdvila:
        return convert_hdvila(load_state_dict(hdvila), cfg, stage)
    variables = jax.device_get(init_variables(cfg, jax.random.PRNGKey(seed), stage))
    for path, loader, kwargs in ((bert, load_bert, dict(allow_missing=allow_missing)), (resnet, load_resnet, {})):
        if path:
            variables, report = loader(variables, load_state_dict(path), cfg, **kwargs)
            logging.info("%s: %s", path, report.summary())
    return variables


def main(argv: list[str]) -> None:
    """Convert and save (see the module docstring); a user's mistake is one ``error:`` line."""
    del argv
    if _MODEL.value is None or _OUTPUT.value is None:
        raise app.UsageError("--model_config and --output are required")
    # a missing or foreign file, a bad flag
    with cli_errors.user_errors(ValueError, OSError, ImportError, StorageError):
        variables = convert(_MODEL.value, int(_STAGE.value), _HDVILA.value, _BERT.value, _RESNET.value,
                            _SEED.value, _ALLOW_MISSING.value)
    save_variables(_OUTPUT.value, variables)
    logging.info("wrote %s", _OUTPUT.value)


if __name__ == "__main__":
    app.run(main)
