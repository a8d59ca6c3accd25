"""Native CPU kernels called from XLA through its FFI (built from source on first use)."""
