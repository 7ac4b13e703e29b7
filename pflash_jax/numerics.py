"""Numerical constants shared by every attention path.

Softmax statistics and RoPE tables are computed in float32 everywhere: bf16 has 8 mantissa
bits, so exp() of logits near 30 or sin/cos of positions near 128K lose all precision.
"""

import jax.numpy as jnp

# Logit given to masked-out keys. Finite (not -inf) so a fully masked row (padding) yields
# exp(MASK - MASK) = 1 terms instead of NaN; such rows are discarded by the caller.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

SOFTMAX_DTYPE = jnp.float32
