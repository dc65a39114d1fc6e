"""Triton kernels for the tri-mode decoders, each beside the PyTorch reference that defines it.

- attention(q, k, v, prefix_len=, pattern=, group=, impl=): prefix + new-block attention for the
  "causal", "block" and "quadratic" patterns; attention_mask(...) is the rule as a dense mask.
- verify_greedy / verify_sample: accepted draft count and next token for self-speculation.
- unmask_step: one diffusion step (argmax, confidence, threshold, at-least-one commit).
- w4a16.w4a16_matmul: 4-bit weight x 16-bit activation matmul (engine/quant.py's layers; imported
  from its module, not re-exported here).

Every public function takes impl="reference" (torch, any device) or impl="triton" (CUDA tensors, or
CPU tensors when TRITON_INTERPRET=1 was set before this package was first imported). Importing this
package needs triton installed but no GPU.
"""

from .attention import attention, attention_mask
from .unmask import unmask_step
from .verify import verify_greedy, verify_sample

__all__ = ["attention", "attention_mask", "verify_greedy", "verify_sample", "unmask_step"]
