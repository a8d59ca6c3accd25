"""The builder's clip plan lives in the library (hdvila_jax/video/clip_plan.py), where the
Encoder plans a video file's clips with the same code; its names are re-exported here."""
from hdvila_jax.video.clip_plan import (MIDDLE_LAYOUTS, ClipPlan, ClipTooShortError, effective_sample_rate,
                                        plan_clip, strided_middles)

__all__ = ["MIDDLE_LAYOUTS", "ClipPlan", "ClipTooShortError", "effective_sample_rate", "plan_clip",
           "strided_middles"]
