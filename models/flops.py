"""FLOP counting for the networks, the way the issue tables count them.

``torch.utils.flop_counter.FlopCounterMode`` counts a multiply-add as 2 FLOPs, but on CPU it has no formula
for the fused ``scaled_dot_product_attention`` kernel, so attention would count as zero. Counting under the
math backend decomposes attention into the bmm's it performs, which are counted.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops"]


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs (multiply-add = 2) of ``fn(*args, **kwargs)`` run without gradients, attention included."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()
