"""`python -m mobilenet.fused`: build the training step's kernels for this CPU now (`make install` does)."""

import sys

from mobilenet.fused import available, build, unavailable_reason

if available():
    print(f"training kernels (fused BatchNorm, depthwise convolution): {build()}")
else:
    print(f"training kernels not built ({unavailable_reason()}): training uses PyTorch's own operators")
sys.exit(0)  # not having them is not an installation failure
