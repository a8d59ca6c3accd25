"""Our sub-modules (``benchmarks.parts``) as jitted calls of the model's own modules on the
activations of one forward pass; dropout off, as in the PyTorch port."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from benchmarks import parts as P
from hdvila_jax.losses import contrastive_loss, masked_lm_loss
from hdvila_jax.models import HDVILA, ModelConfig, aggregate_clips
from hdvila_jax.models.variables import init_variables
from hdvila_jax.models.video_encoder import normalize_pixels


def _activations(m: HDVILA, batch: dict) -> dict:
    """Every part's inputs (and outputs), from one forward pass of the stage-2 model."""
    dtype = jnp.dtype(m.config.dtype)
    img_middle, img_other = batch["img_middle"], batch["img_other"]
    a = dict(hr=normalize_pixels(img_middle.reshape(-1, *img_middle.shape[2:]), dtype),
             lr=normalize_pixels(img_other.reshape(-1, *img_other.shape[3:]), dtype),
             ids=batch["text_input_ids"], mask=batch["text_input_mask"], mlm_labels=batch["mlm_labels"])
    _, _, a["hr_c4"], a["hr_c5"] = m.video.cnn_hr(a["hr"])
    a["lr_c4"] = m.video.cnn_lr(a["lr"])[-1]
    hr_grid, a["frames_in"] = m.video.grids(a["hr_c4"], a["hr_c5"], a["lr_c4"])
    a["frames_out"] = m.video.timesformer(a["frames_in"])
    a["grid"] = m.video.fuse_middle(hr_grid, a["frames_out"]).reshape(*img_middle.shape[:2], *hr_grid.shape[1:])
    a["text_seq"], a["text_pooled"] = m.text(a["ids"], a["mask"])
    a["video_pooled"] = a["grid"].mean(axis=(1, 2, 3))
    a["seq"], a["pooled2"] = m.fusion(a["text_seq"], a["mask"], a["grid"], False)
    return a


def _grids(m: HDVILA, hr_c4, hr_c5, lr_c4, frames_out):
    hr_grid, frames_in = m.video.grids(hr_c4, hr_c5, lr_c4)
    return frames_in, m.video.fuse_middle(hr_grid, frames_out)


def _contrastive(temperature: float):
    def loss(m: HDVILA, text_pooled, video_pooled):
        return contrastive_loss(m.contrastive.text(text_pooled), m.contrastive.video(video_pooled), temperature)[0]
    return loss


def _mlm(m: HDVILA, seq, labels):
    text_out = aggregate_clips(seq[:, :, :labels.shape[1]], m.config.score_agg_func)
    return masked_lm_loss(m.heads.mlm(text_out), labels)[0]


# name -> (parameter subtrees it owns, function of the model and its inputs, input names, float inputs)
SPECS: dict[str, tuple[tuple[str, ...], Callable, tuple[str, ...], tuple[str, ...]]] = {
    P.HR_RESNET: (("video/cnn_hr/",), lambda m, x: tuple(m.video.cnn_hr(x)[2:]), ("hr",), ()),
    P.LR_RESNET: (("video/cnn_lr/",), lambda m, x: m.video.cnn_lr(x)[-1], ("lr",), ()),
    P.GRIDS: (("video/grid_hr/", "video/grid_lr/", "video/fuse/"), _grids,
              ("hr_c4", "hr_c5", "lr_c4", "frames_out"), ("hr_c4", "hr_c5", "lr_c4", "frames_out")),
    P.TIMESFORMER: (("video/timesformer/",), lambda m, x: m.video.timesformer(x), ("frames_in",), ("frames_in",)),
    P.TEXT: (("text/",), lambda m, ids, mask: m.text(ids, mask), ("ids", "mask"), ()),
    P.CROSS_MODAL: (("fusion/",), lambda m, t, mask, g: m.fusion(t, mask, g, False), ("text_seq", "mask", "grid"),
                    ("text_seq", "grid")),
    P.MLM: (("heads/mlm/",), _mlm, ("seq", "mlm_labels"), ("seq",)),
}


def _part(name: str, model: HDVILA, variables: dict, acts: dict, spec) -> P.Part:
    prefixes, fn, input_names, float_names = spec
    flat = traverse_util.flatten_dict(variables["params"], sep="/")
    own = {k: v for k, v in flat.items() if k.startswith(prefixes)}
    rest = {k: v for k, v in flat.items() if k not in own}
    inputs = [acts[n] for n in input_names]
    diff = [i for i, n in enumerate(input_names) if n in float_names]

    def run(own_params, rest_params, *args):
        params = traverse_util.unflatten_dict({**rest_params, **own_params}, sep="/")
        return model.apply({"params": params, "batch_stats": variables["batch_stats"]}, *args, method=fn)

    def run_backward(own_params, rest_params, cotangent, *args):
        def f(own_params, *diff_args):
            full = list(args)
            for i, x in zip(diff, diff_args):
                full[i] = x
            return run(own_params, rest_params, *full)
        _, vjp = jax.vjp(f, own_params, *[args[i] for i in diff])
        return vjp(cotangent)

    out = jax.eval_shape(run, own, rest, *inputs)
    keys = iter(jax.random.split(jax.random.PRNGKey(1), len(jax.tree.leaves(out))))
    cotangent = jax.tree.map(lambda s: jax.random.normal(next(keys), s.shape, s.dtype), out)
    forward, backward = jax.jit(run), jax.jit(run_backward)
    return P.Part(name, lambda: jax.block_until_ready(forward(own, rest, *inputs)),
                  lambda: jax.block_until_ready(backward(own, rest, cotangent, *inputs)))


def jax_parts(cfg: ModelConfig, batch: dict[str, np.ndarray], temperature: float,
              names: tuple[str, ...]) -> tuple[list[P.Part], dict[str, np.ndarray]]:
    """Parts ``names`` of our model for ``batch`` (with ``mlm_labels``), and the activations they
    run on (numpy, for the PyTorch side)."""
    model = HDVILA(cfg)
    variables = init_variables(cfg, jax.random.PRNGKey(0), 2)
    acts = jax.jit(lambda v, b: model.apply(v, b, method=_activations))(variables, batch)
    specs = dict(SPECS)
    specs[P.CONTRASTIVE] = (("contrastive/",), _contrastive(temperature), ("text_pooled", "video_pooled"),
                            ("text_pooled", "video_pooled"))
    parts = [_part(n, model, variables, acts, specs[n]) for n in names]
    return parts, jax.tree.map(np.asarray, acts)
