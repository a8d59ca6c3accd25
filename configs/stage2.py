"""Stage-2 pretraining: masked language modelling over the cross-modal encoder, with every
stage-1 part frozen (docs/fidelity.md §5 and §7).

Run (paper recipe) from a stage-1 run's checkpoints:
    python -m hdvila_jax.main --config=configs/stage2.py --workdir=runs/stage2 \
        --config.init.stage1_checkpoint=runs/stage1/checkpoints \
        --config.init.bert=data/pretrained/bert-large-uncased/pytorch_model.bin

Continue the CPU demo after ``configs/stage1.py:demo`` (a few minutes):
    python -m hdvila_jax.main --config=configs/stage2.py:demo --workdir=runs/demo_stage2 \
        --config.init.stage1_checkpoint=runs/demo_stage1/checkpoints

``init.stage1_checkpoint`` is a checkpoint directory of a stage-1 run (its latest step is
used) or one step's directory inside it.
"""
import ml_collections

from configs.common import STAGE1_PARTS, base_config, optimizer_config


def get_config(variant: str = "paper") -> ml_collections.ConfigDict:
    """Stage-2 config for ``variant`` in {paper, demo, tiny}."""
    variant = variant or "paper"
    config = base_config(2, variant)  # the model of stage 1's variant: its checkpoint fixes the shape
    config.data.mlm_probability = 0.15
    config.optimizer = optimizer_config(5e-5, 1e-3, dict(transformer=r"^(fusion|heads)/"), frozen=STAGE1_PARTS)
    if variant == "paper":
        config.batch_size = 2048
        config.grad_accum_steps = 2
        config.total_steps = 560_000  # 10 epochs of your records at this batch; the paper gives only "7 days"
    elif variant == "demo":
        config.init.stage1_checkpoint = "runs/demo_stage1/checkpoints"
        config.init.demo_config = "stage1:demo"  # trained first when that run has no checkpoint
        config.total_steps = 150
        config.eval_every_steps = 150
        config.optimizer.groups.transformer.lr = 2e-4
    elif variant == "tiny":
        config.optimizer.groups.transformer.lr = 1e-3
        config.optimizer.warmup_ratio = 0.0
    return config
