"""Qwen3 dense family: config, params, forward (prefill / decode), weights and loading."""

from pflash_jax.models.config import ConfigError, Qwen3Config, YarnScaling, model_preset
from pflash_jax.models.params import LayerParams, Params, init_params
from pflash_jax.models.qwen3 import (
    QKV,
    KVCache,
    decode,
    embed,
    final_logits,
    forward,
    greedy_generate,
    layer_finish,
    layer_forward,
    layer_qkv,
    logits,
    prefill,
)

__all__ = ["ConfigError", "Qwen3Config", "YarnScaling", "model_preset", "LayerParams", "Params",
           "init_params", "QKV", "KVCache", "decode", "embed", "final_logits", "forward",
           "greedy_generate", "layer_finish", "layer_forward", "layer_qkv", "logits", "prefill"]
