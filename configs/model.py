"""HD-VILA model configs: ``paper`` (SPEC: BERT-large, ResNet-50, 640x1024) and ``tiny``.

    from configs import model
    cfg = model.get_config("tiny")           # ml_collections.ConfigDict
    from hdvila_jax.models import model_config_from_dict
    mc = model_config_from_dict(cfg.to_dict())
"""
import ml_collections


def get_config(variant: str = "paper") -> ml_collections.ConfigDict:
    """Model config for ``variant`` in {paper, tiny}."""
    cfg = ml_collections.ConfigDict(dict(
        vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096, max_position_embeddings=512, type_vocab_size=2,
        layer_norm_eps=1e-12, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        bert_mean=True, max_grid_row_position_embeddings=100, max_grid_col_position_embeddings=100,
        pixel_random_sampling_size=160, score_agg_func="lse", resnet_depth=50,
        timesformer_depth=4, timesformer_heads=16, timesformer_mlp_ratio=4.0,
        timesformer_drop_path_rate=0.1, timesformer_grid=(10, 16), timesformer_frames=7,
        num_frames=7, crop_size=(640, 1024), dtype="float32", param_dtype="float32", remat=False,
        remat_policy="stage",  # what remat=True recomputes: "stage", "block" or "block_dots"
        num_qa_outputs=0,  # video QA head: answers (0 = the answer vocabulary's size), 1 for multiple choice
    ))
    if variant == "paper":
        return cfg
    if variant == "tiny":
        cfg.update(dict(vocab_size=1000, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64, timesformer_depth=2,
                        timesformer_heads=4, crop_size=(128, 192), pixel_random_sampling_size=4))
        return cfg
    raise ValueError(f"unknown model config variant {variant!r}; use 'paper' or 'tiny'")
