"""Neural-network layers: token and timestep embeddings, attention, transformer blocks, and the diffusion denoiser."""

from ._adaln import AdaLNBlock, Denoiser
from ._attention import SelfAttention
from ._block import TransformerBlock, TransformerEncoder
from ._condition_embedding import ConditionEmbedding
from ._embedding import ValueEncoder, timestep_embedding
from ._schedule import cosine_alphas_cumprod

__all__ = [
    "AdaLNBlock",
    "ConditionEmbedding",
    "Denoiser",
    "SelfAttention",
    "TransformerBlock",
    "TransformerEncoder",
    "ValueEncoder",
    "cosine_alphas_cumprod",
    "timestep_embedding",
]
