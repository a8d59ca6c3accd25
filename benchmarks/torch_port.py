"""The original HD-VILA (our PyTorch port in ``reference/``) set up like one of our
trainer configs, for the side-by-side CPU benchmarks: the same shapes, the same number of
threads as XLA:CPU, and its train step (forward, backward, gradient clipping, AdamW).

The port has the original's module tree in eval mode: BatchNorm uses its running statistics
(as ours and the original's training do), there is no dropout (ours has it) and no visual-token
sampling (benchmarks.settings turns ours off).
"""
from __future__ import annotations

import ml_collections
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.settings import pin_cpus
from hdvila_jax.convert.reference_config import SHARED_FIELDS
from hdvila_jax.models import ModelConfig
from reference.model import HDVILA, make_config

# Parameters of the original that stage 2 trains (the cross-modal half of BERT and the heads);
# the rest is the frozen stage-1 model, as ``config.optimizer.frozen`` of configs/stage2.py.
STAGE2_TRAINABLE = ("transformer.bert.visual_embeddings.", "transformer.bert.pooler2.", "transformer.cls.")
BERT_LAYERS = "transformer.bert.encoder.layer."


def set_threads(threads: int = 0) -> int:
    """Pin this process to its first ``threads`` CPUs (0: all it may use), which is the number of
    threads XLA:CPU then runs on (call it before JAX's first computation), and give PyTorch as many
    threads, with denormals flushed to zero as XLA:CPU does. Returns the number of threads."""
    count = pin_cpus(threads)
    torch.set_num_threads(count)
    torch.set_flush_denormal(True)
    return count


def reference_config(cfg: ModelConfig) -> dict:
    """The original's config dict for our model config."""
    return make_config(**{k: getattr(cfg, k) for k in SHARED_FIELDS if k != "pixel_random_sampling_size"},
                       bert_mean=int(cfg.bert_mean))


def build_model(cfg: ModelConfig, stage: int, seed: int = 0) -> HDVILA:
    """The original's stage-``stage`` pretraining model, randomly initialised, in eval mode."""
    torch.manual_seed(seed)
    return HDVILA(reference_config(cfg), stage=stage).eval()


def torch_batch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Our NHWC uint8 batch as the original's inputs (NCHW float32 pixels, int64 tokens)."""
    out = {}
    for name, value in batch.items():
        value = np.asarray(value)
        if name in ("img_middle", "img_other"):
            out[name] = torch.from_numpy(np.ascontiguousarray(np.moveaxis(value, -1, -3)).astype(np.float32))
        else:
            out[name] = torch.from_numpy(value.astype(np.int64))
    return out


def symmetric_info_nce(text: torch.Tensor, video: torch.Tensor, temperature: float) -> torch.Tensor:
    """The original's stage-1 loss on normalised features ``[B, D]``: the mean of the text-to-video
    and video-to-text cross entropies of ``text @ video.T / temperature``."""
    logits = text @ video.T / temperature
    labels = torch.arange(logits.shape[0])
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def _trained_in_stage2(name: str, first_cross_layer: int) -> bool:
    if name.startswith(BERT_LAYERS):
        return int(name[len(BERT_LAYERS):].split(".")[0]) >= first_cross_layer
    return name.startswith(STAGE2_TRAINABLE)


def trainable_parameters(model: HDVILA, stage: int) -> list[torch.nn.Parameter]:
    """Stage 1 trains everything; stage 2 only the cross-modal layers and heads (the others get
    ``requires_grad=False``, so autograd records nothing for the frozen towers)."""
    first_cross_layer = model.config.num_hidden_layers // 2
    for name, p in model.named_parameters():
        p.requires_grad_(stage == 1 or _trained_in_stage2(name, first_cross_layer))
    return [p for p in model.parameters() if p.requires_grad]


class TorchTrainStep:
    """The original's train step for a trainer ``config`` of ours: ``step(batch) -> loss``."""

    def __init__(self, config: ml_collections.ConfigDict, model_cfg: ModelConfig):
        self.stage = config.stage
        self.temperature = config.get("temperature", 1.0)
        self.model = build_model(model_cfg, config.stage, config.seed)
        self.params = trainable_parameters(self.model, config.stage)
        opt = config.optimizer
        lr = next(iter(opt.groups.values())).lr
        self.grad_clip = opt.grad_clip_norm
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=(opt.b1, opt.b2), eps=opt.eps,
                                           weight_decay=next(iter(opt.groups.values())).weight_decay)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Stage 1: the symmetric InfoNCE (mean of both directions); stage 2: the MLM loss."""
        out = self.model(**batch)
        if self.stage == 2:
            return out["mlm_loss"]
        return symmetric_info_nce(out["text_features"], out["vis_features"], self.temperature)

    def __call__(self, batch: dict[str, torch.Tensor]) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        return float(loss.detach())
