"""Neural-network layers: token embeddings, attention and transformer blocks."""

from ._attention import SelfAttention
from ._block import TransformerBlock, TransformerEncoder
from ._embedding import ValueEncoder

__all__ = ["SelfAttention", "TransformerBlock", "TransformerEncoder", "ValueEncoder"]
