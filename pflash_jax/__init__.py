"""pflash_jax: PFlash speculative prefill in JAX/Pallas.

Axis alphabet (used in einsums, shape comments and annotations across the package):
  B batch, T query length, S key length, D model dim, N query heads, K kv heads,
  G = N // K (query heads per kv head), H head dim, F MLP dim, V vocab, L layers.

Public entry points (docs/design.md section 3) are imported lazily so that `import pflash_jax`
stays cheap for tools that only need one submodule.
"""

from importlib import import_module

__all__ = ["load_model", "logits", "speculative_prefill", "Qwen3Config"]

_LAZY = {
    "load_model": "pflash_jax.models.loading",
    "logits": "pflash_jax.models.qwen3",
    "Qwen3Config": "pflash_jax.models.config",
    "speculative_prefill": "pflash_jax.pflash.pipeline",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pflash_jax' has no attribute {name!r}")
