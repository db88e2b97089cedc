"""langchain-pandagpt: PandaGPT (ImageBind + Vicuna) as a fast, trainable LangChain model."""

from langchain_pandagpt.conversation import MediaItem, Message
from langchain_pandagpt.errors import (
    CheckpointError,
    DownloadNotAllowedError,
    MediaError,
    PandaGPTError,
)
from langchain_pandagpt.imagebind import ImageBindConfig, ImageBindModel, load_imagebind

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DownloadNotAllowedError",
    "ImageBindConfig",
    "ImageBindModel",
    "MediaError",
    "MediaItem",
    "Message",
    "PandaGPTError",
    "__version__",
    "load_imagebind",
]
