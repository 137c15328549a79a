"""The shared Transformer backbone, its size presets and the caption encoder."""

from synthscale.model.network import Network, attention_mask
from synthscale.model.sizes import SIZES, Size, get_size
from synthscale.model.text_encoder import TextEncoder
from synthscale.model.transformer import KVCache, Transformer

__all__ = ["Network", "attention_mask", "SIZES", "Size", "get_size", "TextEncoder", "KVCache", "Transformer"]
