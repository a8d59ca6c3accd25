"""HD-VILA high-resolution video-language pretraining in JAX/Flax."""
