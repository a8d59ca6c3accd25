"""Kernels of our own: native CPU convolutions called through XLA's FFI (built from source on first use)
and a Pallas TPU attention kernel."""
