"""Stage-1 pretraining: contrastive video-text alignment (SPEC sections 5 and 7).

Run (paper recipe, HD-VILA-100M records, BERT-large + ResNet-50 init):
    python -m hdvila_jax.main --config=configs/stage1.py --workdir=runs/stage1 \
        --config.init.bert=data/pretrained/bert-large-uncased/pytorch_model.bin \
        --config.init.resnet=data/pretrained/res50_mmdetection.pth

Run the bundled demo on CPU (generates demo_data/ if missing, about 10 minutes):
    python -m hdvila_jax.main --config=configs/stage1.py:demo --workdir=runs/demo_stage1

Variants: ``paper`` (default), ``demo`` (synthetic moving shapes, tiny model, CPU),
``tiny`` (trainer tests). Any field can be overridden: ``--config.total_steps=100``.
"""
import ml_collections

from configs import model as model_configs
from hdvila_jax.data.config import get_data_config

TRANSFORMER = r"^(text|contrastive|fusion|heads)/"
CNN = r"^video/(cnn_hr|cnn_lr|grid_hr|grid_lr|fuse)/"
ALIGN = r"^video/timesformer/"
STAGE1_PARTS = r"^(video|text|contrastive)/"


# The run-length fields a derived config (stage 2, a downstream task) copies from its source variant.
RUN_FIELDS = ("total_steps", "batch_size", "eval_batch_size", "log_every_steps", "eval_every_steps",
              "ckpt_every_steps")


def copy_run_fields(config: ml_collections.ConfigDict, source: ml_collections.ConfigDict) -> None:
    """Set ``config``'s RUN_FIELDS to ``source``'s."""
    for name in RUN_FIELDS:
        config[name] = source[name]


def optimizer_config(lr: float, weight_decay: float, groups: dict[str, str],
                     frozen: str = "") -> ml_collections.ConfigDict:
    """AdamW (SPEC section 7) with one group per ``name -> regex`` of parameter paths."""
    return ml_collections.ConfigDict(dict(
        b1=0.9, b2=0.98, eps=1e-6, grad_clip_norm=5.0,
        # Matched with re.search against 'text/encoder/layer_0/query/kernel'-style paths.
        no_decay=r"(^|/)bias$|norm[^/]*/scale$|embed",
        warmup_ratio=0.1,
        decay_milestones=(),  # steps at which 'multi_step' halves (x decay_gamma) the lr
        decay_milestone_epochs=(),  # the same in epochs (with config.epochs): sets decay_milestones
        decay_gamma=0.5,
        skip_last_halving=False,  # multi_step past the last milestone: gamma**(n+1) (downstream quirk)
        groups={name: dict(match=match, lr=lr, weight_decay=weight_decay, schedule="warmup_linear")
                for name, match in groups.items()},
        frozen=frozen,  # regex of parameters that never train (no gradient, no optimizer state)
    ))


def base_config(stage: int, variant: str) -> ml_collections.ConfigDict:
    """The fields shared by stage 1 and stage 2 for ``variant`` in {paper, demo, tiny}."""
    if variant not in ("paper", "demo", "tiny"):
        raise ValueError(f"unknown config variant {variant!r}; use paper, demo or tiny")
    config = ml_collections.ConfigDict()
    config.task = "pretrain"  # hdvila_jax.tasks: pretrain (stage 1/2 by config.stage) or a downstream task
    config.stage = stage
    config.seed = 24
    # Dropout's PRNG (jax.random key impl): threefry2x32 (jax's default; the same masks on every
    # backend) or rbg / unsafe_rbg (cheaper random bits on TPU, as MaxText uses; other masks).
    config.rng_impl = "threefry2x32"
    config.model = model_configs.get_config("paper" if variant == "paper" else "tiny")
    config.data = get_data_config(variant)
    config.demo_data_dir = ""  # when set and the records are missing, make_demo writes them there
    config.total_steps = 1_130_000  # the reference stage-1 checkpoint is model_step_1129660
    config.epochs = 0.0  # > 0: total_steps = ceil(epochs * training records / batch_size)
    config.batch_size = 512  # global
    config.grad_accum_steps = 1  # micro-batches per step; batch_size is split into this many
    config.eval_batch_size = 64  # global
    config.log_every_steps = 100
    config.eval_every_steps = 10_000
    config.ckpt_every_steps = 5_000
    config.keep_checkpoints = 3
    config.best_metric = ""  # eval metric (higher is better) whose best step's variables go to workdir/best
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))  # -1: all remaining devices
    # (regex, PartitionSpec entries) on parameter paths, first match wins; parameters no
    # rule matches are sharded over 'fsdp' along their largest divisible axis when they
    # have at least fsdp_min_size elements, else replicated.
    config.sharding_rules = ((r"/embedding$", (None, "fsdp")),)
    config.fsdp_min_size = 2 ** 16
    config.init = ml_collections.ConfigDict(dict(bert="", resnet="", stage1_checkpoint="", restore="",
                                                 # "module:variant" of configs/ to train into init.restore
                                                 # when it holds no checkpoint (demo variants)
                                                 demo_config=""))
    if variant == "paper":
        config.model.dtype = "bfloat16"
    else:
        config.demo_data_dir = "demo_data"  # = the demo/tiny data root of get_data_config
        config.model.resnet_depth = 18
        config.model.crop_size = tuple(config.data.crop_size)
        config.model.max_position_embeddings = 16
    return config


def get_config(variant: str = "paper") -> ml_collections.ConfigDict:
    """Stage-1 config for ``variant`` in {paper, demo, tiny}."""
    config = base_config(1, variant or "paper")
    config.temperature = 0.05
    config.optimizer = optimizer_config(5e-5, 1e-3, dict(transformer=TRANSFORMER, cnn=CNN, align=ALIGN))
    if variant == "demo":
        # Sized for 2 CPU cores: XLA's CPU convolutions make the ResNets the cost, so
        # short, wide crops (grid 1x3), one clip and small batches.
        config.total_steps = 300
        config.batch_size = 16
        config.eval_batch_size = 50
        config.log_every_steps = 10
        config.eval_every_steps = 150
        config.ckpt_every_steps = 50
        config.model.crop_size = (64, 192)
        config.data.crop_size = (64, 192)
        config.data.train_n_clips = 1
        config.data.inference_n_clips = 2
        config.model.update(dict(hidden_size=64, num_hidden_layers=4, intermediate_size=128,
                                 pixel_random_sampling_size=2))
        for group in config.optimizer.groups.values():
            group.lr = 2e-4
    elif variant == "tiny":
        config.total_steps = 4
        config.batch_size = 4
        config.eval_batch_size = 4
        config.log_every_steps = 1
        config.eval_every_steps = 1000
        config.ckpt_every_steps = 2
        config.model.crop_size = (64, 192)
        config.data.crop_size = (64, 192)
        config.data.max_txt_len = 8
        config.model.update(dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, timesformer_depth=1, timesformer_heads=2,
                                 pixel_random_sampling_size=1))
        for group in config.optimizer.groups.values():
            group.lr = 1e-3
        config.optimizer.warmup_ratio = 0.0
    return config
