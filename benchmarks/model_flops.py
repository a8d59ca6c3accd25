"""Analytic FLOP count of HD-VILA (a multiply-add = 2 FLOPs; convolutions, matmuls and
attention only: normalisation, activations and pooling are left out as negligible).

    python -m benchmarks.model_flops            # the paper config, stage 1 and 2

Forward + backward is counted as 3x the forward pass (the backward of a matmul or
convolution costs two of them); in stage 2 the frozen stage-1 towers run forward only.
"""
from __future__ import annotations

from benchmarks.reporting import print_markdown_table
from configs import model as model_configs
from hdvila_jax.models import ModelConfig, model_config_from_dict
from hdvila_jax.models.resnet import STAGE_BLOCKS


def _valid_taps(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(output size, kernel taps that fall inside the input summed over outputs) along one axis
    of a convolution padded by ``kernel // 2``; taps on the zero padding cost nothing."""
    pad, out = kernel // 2, -(-size // stride)
    taps = sum(1 for o in range(out) for t in range(kernel) if 0 <= o * stride - pad + t < size)
    return out, taps


def _conv(h: int, w: int, cin: int, cout: int, kernel: int, stride: int) -> tuple[int, int, int]:
    ho, taps_h = _valid_taps(h, kernel, stride)
    wo, taps_w = _valid_taps(w, kernel, stride)
    return 2 * taps_h * taps_w * cin * cout, ho, wo


def resnet_flops(depth: int, h: int, w: int, num_stages: int = 4) -> int:
    """Forward FLOPs of the ResNet on one ``h x w`` image up to ``num_stages``."""
    flops, h, w = _conv(h, w, 3, 64, 7, 2)
    h, w, cin = -(-h // 2), -(-w // 2), 64
    bottleneck = depth not in (18, 34)
    for stage, blocks in enumerate(STAGE_BLOCKS[depth][:num_stages]):
        planes = 64 * 2**stage
        out = planes * (4 if bottleneck else 1)
        for b in range(blocks):
            stride = 2 if b == 0 and stage > 0 else 1
            if bottleneck:
                f1, _, _ = _conv(h, w, cin, planes, 1, 1)
                f2, ho, wo = _conv(h, w, planes, planes, 3, stride)
                f3, _, _ = _conv(ho, wo, planes, out, 1, 1)
            else:
                f1, ho, wo = _conv(h, w, cin, planes, 3, stride)
                f2, _, _ = _conv(ho, wo, planes, planes, 3, 1)
                f3 = 0
            flops += f1 + f2 + f3
            if b == 0 and (stride != 1 or cin != out):
                flops += _conv(h, w, cin, out, 1, stride)[0]
            h, w, cin = ho, wo, out
    return flops


def bert_layer_flops(length: int, width: int, ffn: int) -> int:
    """One BERT layer on ``length`` tokens."""
    return 4 * 2 * length * width * width + 2 * 2 * length * width * ffn + 2 * 2 * length * length * width


def clip_flops(cfg: ModelConfig) -> int:
    """Forward FLOPs of the video encoder for one clip (HR frame + its LR neighbours)."""
    h, w = cfg.crop_size
    d = cfg.hidden_size
    c4, c5 = cfg.backbone_channels[2], cfg.backbone_channels[3]
    gh, gw = cfg.grid_size
    cells, frames = gh * gw, cfg.num_frames
    tokens = frames * cells
    flops = resnet_flops(cfg.resnet_depth, h, w) + (frames - 1) * resnet_flops(cfg.resnet_depth, h // 4, w // 4, 3)
    flops += 2 * (h // 32) * (w // 32) * c5 * d + frames * 2 * cells * c4 * d  # grid_hr, grid_lr
    mlp = int(d * cfg.timesformer_mlp_ratio)
    block = (2 * (2 * tokens * d * 3 * d + 2 * tokens * d * d)            # temporal + spatial qkv, proj
             + 2 * tokens * d * d + 2 * 2 * tokens * d * mlp                # temporal_fc, MLP
             + 4 * cells * frames * frames * d + 4 * frames * cells * cells * d)  # attention
    return flops + cfg.timesformer_depth * block + 2 * cells * 2 * d * d     # + fuse


def forward_flops(cfg: ModelConfig, stage: int, clips: int, text_len: int, visual_tokens: int | None = None) -> int:
    """Forward FLOPs per example: stage 1 (towers) or stage 2 (towers + cross-modal + MLM head)."""
    d, layers = cfg.hidden_size, cfg.num_text_layers
    flops = clips * clip_flops(cfg) + layers * bert_layer_flops(text_len, d, cfg.intermediate_size)
    if stage == 2:
        if visual_tokens is None:
            visual_tokens = cfg.grid_size[0] * cfg.grid_size[1]
        cross = cfg.num_hidden_layers - layers
        flops += clips * cross * bert_layer_flops(text_len + visual_tokens, d, cfg.intermediate_size)
        flops += 2 * text_len * d * (d + cfg.vocab_size)  # MLM head
    return flops


def train_flops(cfg: ModelConfig, stage: int, clips: int, text_len: int, visual_tokens: int | None = None) -> int:
    """Forward + backward FLOPs per example: 3x forward, but the frozen towers of stage 2 only 1x."""
    total = 3 * forward_flops(cfg, stage, clips, text_len, visual_tokens)
    if stage == 2:
        total -= 2 * forward_flops(cfg, 1, clips, text_len)
    return total


def main() -> None:
    cfg = model_config_from_dict(model_configs.get_config("paper").to_dict())
    print_markdown_table(
        ["stage", "clips", "text", "forward TFLOP/example", "train TFLOP/example"],
        [[stage, 2, 50, f"{forward_flops(cfg, stage, 2, 50, tokens) / 1e12:.3f}",
          f"{train_flops(cfg, stage, 2, 50, tokens) / 1e12:.3f}"]
         for stage, tokens in ((1, None), (2, cfg.pixel_random_sampling_size))])


if __name__ == "__main__":
    main()
