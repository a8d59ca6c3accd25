"""The retrieval loss on a batch sharded over 8 devices takes its negatives from the whole global batch:
loss and gradient equal the 1-device values, and differ from averaging per-device losses."""
from benchmarks.reporting import run_on_forced_devices

EIGHT_DEVICES = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from configs import model as model_configs
from hdvila_jax.models import HDVILA, model_config_from_dict
from hdvila_jax.models.variables import init_variables
from hdvila_jax.losses import contrastive_loss
from hdvila_jax.tasks.retrieval import RETRIEVAL_DIRECTION_WEIGHT

TEMPERATURE = 0.08
values = model_configs.get_config("tiny").to_dict()
values.update(crop_size=(64, 64), resnet_depth=18)
cfg = model_config_from_dict(values)
model = HDVILA(cfg)
variables = init_variables(cfg, jax.random.PRNGKey(0), stage=1)
rng = np.random.default_rng(0)
b, h, w, length = 8, 64, 64, 8
mask = (np.arange(length)[None] < rng.integers(3, length + 1, (b, 1))).astype(np.int32)
batch = dict(img_middle=rng.integers(0, 256, (b, 1, h, w, 3), dtype=np.uint8),
             img_other=rng.integers(0, 256, (b, 1, cfg.num_frames - 1, h // 4, w // 4, 3), dtype=np.uint8),
             text_input_ids=(rng.integers(104, cfg.vocab_size, (b, length)) * mask).astype(np.int32),
             text_input_mask=mask)

def loss_fn(params, batch):
    out = model.apply({**variables, "params": params}, batch, stage=1, deterministic=True)
    return contrastive_loss(out["text_features"], out["video_features"], TEMPERATURE, RETRIEVAL_DIRECTION_WEIGHT)[0]

loss_and_grad = jax.jit(jax.value_and_grad(loss_fn))

def global_norm(tree):
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree))))

assert jax.device_count() == 8
mesh = Mesh(np.array(jax.devices()), ("data",))
params8 = jax.device_put(variables["params"], NamedSharding(mesh, P()))
batch8 = jax.device_put(batch, NamedSharding(mesh, P("data")))
assert len(batch8["img_middle"].sharding.device_set) == 8
loss8, grads8 = loss_and_grad(params8, batch8)
one = jax.devices()[0]
loss1, grads1 = loss_and_grad(jax.device_put(variables["params"], one), jax.device_put(batch, one))
# Each device alone: its example is its own only negative-free pair.
local = jax.jit(jax.shard_map(lambda p, x: loss_fn(p, x)[None], mesh=mesh, in_specs=(P(), P("data")),
                              out_specs=P("data")))(params8, batch8)
diff = jax.tree.map(lambda a, c: np.asarray(a, np.float64) - np.asarray(c, np.float64), grads8, grads1)
print("RESULT" + json.dumps(dict(loss8=float(loss8), loss1=float(loss1), local=np.asarray(local).tolist(),
                                 grad_norm8=global_norm(grads8), grad_norm1=global_norm(grads1),
                                 grad_diff=global_norm(diff))))
"""


def test_retrieval_loss_uses_the_global_batch():
    r = run_on_forced_devices(EIGHT_DEVICES)
    assert abs(r["loss8"] - r["loss1"]) < 1e-5 * r["loss1"], r
    assert r["grad_norm1"] > 0 and r["grad_diff"] < 1e-4 * r["grad_norm1"], r
    # 8 pairs at temperature 0.08: the loss is about 2 ln 8; one pair alone gives exactly 0.
    assert len(r["local"]) == 8 and abs(r["loss8"] - sum(r["local"]) / 8) > 1.0, r
