"""Former home of the JSON-schema grammar, kept so that old imports keep working.

The code lives in :mod:`langchain_pandagpt.structured` (``schema``, ``costs``, ``grammar``,
``vocabulary``, ``processor``); import from the package.
"""

from langchain_pandagpt.structured.grammar import Config, Frame, JsonGrammar, State
from langchain_pandagpt.structured.processor import JsonLogitsProcessor
from langchain_pandagpt.structured.vocabulary import TokenVocabulary, tokenizer_token_bytes

__all__ = [
    "Config",
    "Frame",
    "JsonGrammar",
    "JsonLogitsProcessor",
    "State",
    "TokenVocabulary",
    "tokenizer_token_bytes",
]
