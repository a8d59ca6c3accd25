"""Self-contained PyTorch port of the original HD-VILA forward pass (microsoft/XPretrain, hd-vila/src/modeling),
used only to generate parity fixtures. Eval mode only: no dropout, drop-path or visual-token sampling.

Same module tree and state_dict keys as the original; needs only torch + numpy.
"""
from tests.torch_reference.model import HDVILA, make_config, recording  # noqa: F401
