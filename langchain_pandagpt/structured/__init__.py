"""Structured answers: grammar-constrained JSON that always finishes inside its token budget,
and the answer formats (tool calls, ``response_format``) built on it. Framework-free: both
``ChatPandaGPT`` and the OpenAI-compatible server use it.

The engine calls a per-request logits processor before every sampled token
(``SamplingParams.logits_processor``). :class:`JsonLogitsProcessor` masks every token that cannot
continue a document of the schema, and every token after which the shortest valid completion
would no longer fit into what is left of ``max_new_tokens``. The answer therefore parses and
validates even when a random model writes it, and it never stops half-way.

Why not a library: xgrammar 0.2.8, llguidance 1.9.1, outlines-core 0.2.14 and
lm-format-enforcer 0.11.3 all install here (llguidance even masks our transformers-5 tokenizers
on CPU), but none of them bounds the answer by the token budget: they know whether a prefix can
still become valid, not how long its shortest completion is. A weak model then runs out of tokens
inside a string. Capping ``maxLength``/``maxItems``/digits in the schema instead truncates what a
real model writes or needs a worst-case budget; outlines-core's regex automata, which could give
distances, explode on optional properties. The automaton is small because it only has to
cover what LangChain schemas use, and knowing the completion cost of every state is what makes
the guarantee possible.

Modules, bottom to top:

* ``schema``: :func:`~.schema.compile_schema` turns a JSON schema into a graph of nodes (string,
  literal, number, array, object, union); ``$ref`` (recursive too) becomes a shared node.
* ``costs``: the exact number of bytes of the shortest completion of every node and position.
  Byte fallback (LLaMA) and byte-level (GPT-2) vocabularies have a one-byte token for every
  byte, so bytes bound tokens: keeping ``cost <= tokens left`` after every token guarantees
  termination.
* ``grammar``: :class:`JsonGrammar`, a pushdown automaton over UTF-8 bytes. A configuration is
  a stack of frames; alternatives (``anyOf``, optional properties, a number that may end or go
  on) are a set of configurations.
* ``vocabulary``: :class:`TokenVocabulary`, each token's bytes and byte tries over them.
* ``processor``: :class:`JsonLogitsProcessor`; token masks come from a walk over the trie,
  cached per state in tables the grammar owns (``grammar.mask_tables``); inside strings,
  tokens without quotes, backslashes or control characters are allowed in bulk.
* ``formats`` and ``streaming``: answer formats from OpenAI-form ``tools``, ``tool_choice`` and
  ``response_format``; how tool calls and results are written into the prompt; parsing a
  finished answer, and an incremental parser for streamed ones.

Output form: compact JSON (leading spaces allowed, no other whitespace), object keys in schema
order, only two-character escapes, numbers without exponents. Keywords enforced: ``type``,
``enum``, ``const``, ``properties``, ``required``, ``additionalProperties`` (as the value schema of
objects without ``properties``), ``items``, ``prefixItems``, ``minItems``, ``maxItems``,
``minLength``, ``maxLength``, ``minimum``, ``maximum``, ``exclusiveMinimum``,
``exclusiveMaximum``, ``anyOf``, ``oneOf`` (as ``anyOf``), ``allOf`` (merged), ``$ref``,
``nullable``. Not enforced: ``pattern``, ``format``, ``multipleOf``, ``uniqueItems``,
``minProperties``/``maxProperties``, ``not``, conditionals; a schema that relies on them may
yield values its validator rejects.
"""

from langchain_pandagpt.structured.grammar import JsonGrammar
from langchain_pandagpt.structured.processor import JsonLogitsProcessor
from langchain_pandagpt.structured.vocabulary import TokenVocabulary

__all__ = ["JsonGrammar", "JsonLogitsProcessor", "TokenVocabulary"]
