"""The builder's video decoding lives in the library (hdvila_jax/video/decode.py), where the
Encoder reads video files with the same code; its names are re-exported here."""
from hdvila_jax.video.decode import Span, VideoError, VideoInfo, decode_frames, decode_rgb_frames, probe_video

__all__ = ["Span", "VideoError", "VideoInfo", "decode_frames", "decode_rgb_frames", "probe_video"]
