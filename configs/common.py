"""What the trainer configs of configs/ share: the base config of a variant (paper, demo, tiny) with
its model and data, AdamW and its parameter groups, and the downstream recipes' optimizer.

stage1.py, stage2.py, retrieval.py and qa.py each build on this module; none imports another.
"""
import ml_collections

from configs import model as model_configs
from hdvila_jax import compilation_cache, tpu_flags
from hdvila_jax.data.config import get_data_config

# Parameter groups (regexes on paths like 'video/cnn_hr/...'): the ResNets and their fusion, the
# TimeSformer ("align"), and the stage-1 parts that stage 2 freezes.
CNN = r"^video/(cnn_hr|cnn_lr|grid_hr|grid_lr|fuse)/"
ALIGN = r"^video/timesformer/"
STAGE1_PARTS = r"^(video|text|contrastive)/"

# The downstream recipes give a batch per GPU; the original ran on G GPUs and did not record G.
# We use G = 8: a recipe's global batch is 8 x its per-GPU batch.
ORIGINAL_GPUS = 8
BERT_VOCAB = "data/bert-base-uncased/vocab.txt"  # the downstream recipes' tokenizer

# The run of every task's ``demo`` variant (2 CPU cores; each sets its length and eval interval).
DEMO_RUN = dict(batch_size=16, eval_batch_size=50, log_every_steps=10, ckpt_every_steps=50)
# The run of every task's ``tiny`` variant (trainer tests): a few steps of small batches.
TINY_RUN = dict(total_steps=4, batch_size=4, eval_batch_size=4, log_every_steps=1, eval_every_steps=1000,
                ckpt_every_steps=2)


def optimizer_config(lr: float, weight_decay: float, groups: dict[str, str],
                     frozen: str = "") -> ml_collections.ConfigDict:
    """AdamW (docs/fidelity.md §7) with one group per ``name -> regex`` of parameter paths."""
    return ml_collections.ConfigDict(dict(
        b1=0.9, b2=0.98, eps=1e-6, grad_clip_norm=5.0,
        # Matched with re.search against 'text/encoder/layer_0/query/kernel'-style paths.
        no_decay=r"(^|/)bias$|norm[^/]*/scale$|embed",
        warmup_ratio=0.1,
        decay_milestones=(),  # steps at which 'multi_step' halves (x decay_gamma) the lr
        decay_milestone_epochs=(),  # the same in epochs (with config.epochs): sets decay_milestones
        decay_gamma=0.5,
        skip_last_halving=False,  # multi_step past the last milestone: gamma**(n+1) (docs/fidelity.md Q10)
        groups={name: dict(match=match, lr=lr, weight_decay=weight_decay, schedule="warmup_linear")
                for name, match in groups.items()},
        frozen=frozen,  # regex of parameters that never train (no gradient, no optimizer state)
    ))


def downstream_optimizer(transformer: str, lr: tuple[float, float, float], weight_decay: tuple[float, float, float],
                         schedule: str, no_decay: str, warmup: float,
                         milestones: tuple[int, ...]) -> ml_collections.ConfigDict:
    """AdamW of the original's fine-tuning: the groups transformer (regex ``transformer``), cnn and
    align with their ``lr`` and ``weight_decay`` (in that order), all on ``schedule``."""
    optimizer = optimizer_config(0.0, 0.0, dict(transformer=transformer, cnn=CNN, align=ALIGN))
    for name, group_lr, group_wd in zip(("transformer", "cnn", "align"), lr, weight_decay):
        group = optimizer.groups[name]
        group.lr, group.weight_decay, group.schedule = group_lr, group_wd, schedule
    optimizer.no_decay = no_decay
    optimizer.warmup_ratio = warmup
    optimizer.decay_milestone_epochs = milestones
    optimizer.skip_last_halving = True  # the original's multi_step (docs/fidelity.md Q10)
    return optimizer


def base_config(stage: int, variant: str) -> ml_collections.ConfigDict:
    """The fields every task shares for ``variant`` in {paper, demo, tiny}: the demo and tiny variants
    of every task have the same model and data (a downstream demo continues from the demo
    pretraining runs, whose checkpoints fix the model shape)."""
    if variant not in ("paper", "demo", "tiny"):
        raise ValueError(f"unknown config variant {variant!r}; use paper, demo or tiny")
    config = ml_collections.ConfigDict()
    config.task = "pretrain"  # hdvila_jax.tasks: pretrain (stage 1/2 by config.stage) or a downstream task
    config.stage = stage
    config.seed = 24
    # Dropout's PRNG (jax.random key impl): threefry2x32 (jax's default; the same masks on every
    # backend) or rbg / unsafe_rbg (cheaper random bits on TPU, as MaxText uses; other masks).
    config.rng_impl = "threefry2x32"
    # libtpu compiler flags (LIBTPU_INIT_ARGS, set before libtpu starts; hdvila_jax/tpu_flags.py): by default
    # no windowed reduce-scatter einsums, which keep activations in HBM until the step's end; "" = none.
    config.libtpu_flags = tpu_flags.DEFAULT
    # The model's crop_size and num_frames are the reader's too: (H, W) of the HR crop and frames per clip.
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
    # Persistent XLA compilation cache, local or gs:// ("" = off); the default "{workdir}/xla_cache"
    # lets a restarted job reuse its compiled steps (hdvila_jax/compilation_cache.py)
    config.compilation_cache_dir = compilation_cache.DEFAULT
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
        # Recompute only what is cheap (docs/performance.md, "Fewer bytes"): 12 stage-1 examples per chip
        # fit a v5e; where the batch fits without it (v5p, v6e), --config.model.remat=false is faster.
        config.model.remat = True
        config.model.remat_policy = "elementwise"
        return config
    config.demo_data_dir = "demo_data"  # = the demo/tiny data root of get_data_config
    config.model.resnet_depth = 18
    config.model.max_position_embeddings = 16
    config.model.crop_size = (64, 192)
    if variant == "demo":
        # Sized for 2 CPU cores: XLA's CPU convolutions make the ResNets the cost, so
        # short, wide crops (grid 1x3), one clip and small batches.
        config.update(DEMO_RUN)
        config.data.train_n_clips = 1
        config.data.inference_n_clips = 2
        config.model.update(dict(hidden_size=64, num_hidden_layers=4, intermediate_size=128,
                                 pixel_random_sampling_size=2))
    else:
        config.update(TINY_RUN)
        config.data.max_txt_len = 8
        config.model.update(dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, timesformer_depth=1, timesformer_heads=2,
                                 pixel_random_sampling_size=1))
    return config
