"""The original's sub-modules (``benchmarks.parts``, our PyTorch port) on the same activations as
ours (``benchmarks.parts_jax``), in eval mode; gradients of the part's parameters and float inputs."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import parts as P
from benchmarks.torch_port import symmetric_info_nce
from tests.torch_reference.model import HDVILA


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, -1, -3)


def _inputs(acts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our activations in the original's layouts (NCHW maps, ``[N, T, C, h, w]`` frames,
    ``[clips * B, 1, h, w, D]`` clip-major grids, clip-major cross-modal output)."""
    grid = acts["grid"]
    return dict(hr=_nchw(acts["hr"]), lr=_nchw(acts["lr"]), hr_c4=_nchw(acts["hr_c4"]), hr_c5=_nchw(acts["hr_c5"]),
                lr_c4=_nchw(acts["lr_c4"]), frames_in=_nchw(acts["frames_in"]), frames_out=_nchw(acts["frames_out"]),
                ids=acts["ids"].astype(np.int64), mask=acts["mask"].astype(np.int64), text_seq=acts["text_seq"],
                grid=np.swapaxes(grid, 0, 1).reshape(-1, 1, *grid.shape[2:]), text_pooled=acts["text_pooled"],
                video_pooled=acts["video_pooled"], seq=np.swapaxes(acts["seq"], 0, 1),
                mlm_labels=acts["mlm_labels"].astype(np.int64))


def _grids(m: HDVILA, hr_c4, hr_c5, lr_c4, frames_out):
    """``extract_features`` of the original between the backbones and the TimeSformer, and after it."""
    hr_grid = m.grid_encoder(hr_c5)
    hr_low = m.grid_encoder_low(F.interpolate(hr_c4, scale_factor=1 / 4, recompute_scale_factor=False))
    lr = m.grid_encoder_low(lr_c4)
    lr = lr.reshape(hr_grid.shape[0], -1, *lr.shape[1:])
    half = (lr.shape[1] + 1) // 2
    frames_in = torch.cat((lr[:, :half], hr_low[:, None], lr[:, half:]), 1)
    return frames_in, m.grid_encoder_combine(torch.cat((hr_grid, frames_out[:, half]), 1))


def _text(m: HDVILA, ids, mask):
    """Stage-1 text states and the mean-pooled pooler1 output (``encode_text`` before the projection)."""
    seq, _ = m.transformer.bert.forward_stage1(ids, mask)
    pooler = m.transformer.bert.pooler1
    pooled = (seq * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    return seq, pooler.activation(pooler.dense(pooled))


def _contrastive(temperature: float):
    def loss(m: HDVILA, text_pooled, video_pooled):
        t = F.normalize(m.transformer.t_proj(text_pooled), dim=-1)
        v = F.normalize(m.transformer.v_proj(video_pooled), dim=-1)
        return symmetric_info_nce(t, v, temperature)
    return loss


def _cross_modal(m: HDVILA, text_seq, mask, grid):
    clips = grid.shape[0] // text_seq.shape[0]
    return m.transformer.bert.forward_stage2(clips, text_seq.repeat(clips, 1, 1), grid, mask.repeat(clips, 1))


def _mlm(m: HDVILA, seq, labels):
    """The original's MLM head and loss from the clip-major cross-modal output ``[clips, B, L+Lv, D]``."""
    text_out = torch.logsumexp(seq, dim=0)[:, :labels.shape[1]]
    logits = m.transformer.cls.predictions(text_out)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


# name -> (function of the model and its inputs, input names, float inputs)
SPECS: dict[str, tuple[Callable, tuple[str, ...], tuple[str, ...]]] = {
    P.HR_RESNET: (lambda m, x: m.cnn(x)[2:], ("hr",), ()),
    P.LR_RESNET: (lambda m, x: m.cnn_low.forward_to_stage(x), ("lr",), ()),
    P.GRIDS: (_grids, ("hr_c4", "hr_c5", "lr_c4", "frames_out"), ("hr_c4", "hr_c5", "lr_c4", "frames_out")),
    P.TIMESFORMER: (lambda m, x: m.timesformer(x), ("frames_in",), ("frames_in",)),
    P.TEXT: (_text, ("ids", "mask"), ()),
    P.CROSS_MODAL: (_cross_modal, ("text_seq", "mask", "grid"), ("text_seq", "grid")),
    P.MLM: (_mlm, ("seq", "mlm_labels"), ("seq",)),
}


def _part(name: str, model: HDVILA, inputs: dict[str, np.ndarray], spec) -> P.Part:
    fn, input_names, float_names = spec
    args = [torch.from_numpy(np.array(inputs[n])) for n in input_names]
    with torch.no_grad():
        out = fn(model, *args)
    outs = out if isinstance(out, tuple) else (out,)
    generator = torch.Generator().manual_seed(1)
    cotangents = [torch.randn(o.shape, generator=generator) for o in outs]

    def forward():
        with torch.no_grad():
            fn(model, *args)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        grad_args = [a.detach().requires_grad_(n in float_names) for a, n in zip(args, input_names)]
        out = fn(model, *grad_args)
        torch.autograd.backward(out if isinstance(out, tuple) else (out,), cotangents)

    return P.Part(name, forward, forward_backward)


def torch_parts(model: HDVILA, acts: dict[str, np.ndarray], temperature: float,
                names: tuple[str, ...]) -> list[P.Part]:
    """Parts ``names`` of the original stage-2 ``model`` on our activations ``acts``."""
    model.requires_grad_(True)
    specs = dict(SPECS)
    specs[P.CONTRASTIVE] = (_contrastive(temperature), ("text_pooled", "video_pooled"),
                            ("text_pooled", "video_pooled"))
    return [_part(n, model, _inputs(acts), specs[n]) for n in names]
