"""Reading video files the way the clip records are built: decoding (PyAV), the clip plan
(which middle frames and LR neighbours a clip uses) and the in-memory clip of a time window.

``data_pipelines`` builds its records with these modules; ``hdvila_jax.Encoder`` and
``python -m hdvila_jax.search index --videos`` use them to read video files directly.
"""
