"""The original HD-VILA ported to PyTorch (microsoft/XPretrain, hd-vila/src/modeling): self-contained, for the
parity fixtures of the tests (``make_fixture``) and the ours-vs-original benchmark (``benchmarks/torch_port.py``).
Not part of the installed library. Eval mode only: no dropout, drop-path or visual-token sampling.

Same module tree and state_dict keys as the original; needs only torch + numpy.
"""
from reference.model import HDVILA, make_config, recording  # noqa: F401
