"""reelvec's core library: decode, transcribe, encode and fuse short videos into embeddings.

Imports neither `index` nor `serving`.
"""

from embedder.config import ReelvecConfig, load_config
from embedder.types import ItemEmbedding, ItemInput, MediaError, ModelUnavailableError, ReelvecError

__all__ = [
    "ItemEmbedding",
    "ItemInput",
    "MediaError",
    "ModelUnavailableError",
    "ReelvecConfig",
    "ReelvecError",
    "load_config",
]
