"""langchain-pandagpt: PandaGPT (ImageBind + Vicuna) as a fast, trainable LangChain model.

Every public name but the errors is imported on first use, so ``import langchain_pandagpt``
loads neither PyTorch nor LangChain, and ``from langchain_pandagpt import ChatPandaGPT`` loads
PyTorch and LangChain but not peft, bitsandbytes or transformers' model code (those come with
the first model).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from langchain_pandagpt.errors import (
    CheckpointError,
    DownloadNotAllowedError,
    MediaError,
    PandaGPTError,
)
from langchain_pandagpt.model.quiet import drop_bitsandbytes_notices

drop_bitsandbytes_notices()

if TYPE_CHECKING:
    from langchain_pandagpt.chat_models import ChatPandaGPT
    from langchain_pandagpt.content_blocks import (
        create_depth_block,
        create_imu_block,
        create_thermal_block,
    )
    from langchain_pandagpt.conversation import MediaItem, Message
    from langchain_pandagpt.embeddings import ImageBindEmbeddings
    from langchain_pandagpt.generation.engine import (
        GenerationEngine,
        GenerationResult,
        SamplingParams,
    )
    from langchain_pandagpt.generation.prompt import PromptSettings, build_prompt
    from langchain_pandagpt.generation.registry import get_shared_model
    from langchain_pandagpt.imagebind import ImageBindConfig, ImageBindModel, load_imagebind
    from langchain_pandagpt.media_rag import (
        MediaDirectoryLoader,
        MediaIndex,
        MediaRetriever,
        to_content_block,
    )
    from langchain_pandagpt.model.bundle import load_pandagpt
    from langchain_pandagpt.model.manifest import BundleManifest
    from langchain_pandagpt.model.modeling import PandaGPTModel
    from langchain_pandagpt.model.tiny import create_tiny_checkpoint

__version__ = "0.1.0"

#: Public name -> module that defines it (imported lazily).
_LAZY: dict[str, str] = {
    "MediaItem": "conversation",
    "Message": "conversation",
    "ImageBindConfig": "imagebind",
    "ImageBindModel": "imagebind",
    "load_imagebind": "imagebind",
    "BundleManifest": "model.manifest",
    "get_shared_model": "generation.registry",
    "load_pandagpt": "model.bundle",
    "ChatPandaGPT": "chat_models",
    "create_depth_block": "content_blocks",
    "create_imu_block": "content_blocks",
    "create_thermal_block": "content_blocks",
    "ImageBindEmbeddings": "embeddings",
    "GenerationEngine": "generation.engine",
    "GenerationResult": "generation.engine",
    "SamplingParams": "generation.engine",
    "MediaDirectoryLoader": "media_rag",
    "MediaIndex": "media_rag",
    "MediaRetriever": "media_rag",
    "to_content_block": "media_rag",
    "PandaGPTModel": "model.modeling",
    "PromptSettings": "generation.prompt",
    "build_prompt": "generation.prompt",
    "create_tiny_checkpoint": "model.tiny",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'langchain_pandagpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"langchain_pandagpt.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "BundleManifest",
    "ChatPandaGPT",
    "CheckpointError",
    "DownloadNotAllowedError",
    "GenerationEngine",
    "GenerationResult",
    "ImageBindConfig",
    "ImageBindEmbeddings",
    "ImageBindModel",
    "MediaDirectoryLoader",
    "MediaError",
    "MediaIndex",
    "MediaItem",
    "MediaRetriever",
    "Message",
    "PandaGPTError",
    "PandaGPTModel",
    "PromptSettings",
    "SamplingParams",
    "__version__",
    "build_prompt",
    "create_depth_block",
    "create_imu_block",
    "create_thermal_block",
    "create_tiny_checkpoint",
    "get_shared_model",
    "load_imagebind",
    "load_pandagpt",
    "to_content_block",
]
