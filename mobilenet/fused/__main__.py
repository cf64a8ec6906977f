"""`python -m mobilenet.fused`: build the fused BatchNorm kernel for this CPU now (`make install` does)."""

import sys

from mobilenet.fused import available, build, unavailable_reason

if available():
    print(f"fused BatchNorm kernel: {build()}")
else:
    print(f"fused BatchNorm kernel not built ({unavailable_reason()}): training uses PyTorch's BatchNorm")
sys.exit(0)  # not having it is not an installation failure
