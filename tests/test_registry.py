"""The process registry: one model per key, and clear() that really frees memory."""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path

import pytest
import torch

from langchain_pandagpt.chat_models import ChatPandaGPT
from langchain_pandagpt.conversation import Message
from langchain_pandagpt.generation import registry
from langchain_pandagpt.generation.engine import SamplingParams
from langchain_pandagpt.model.manifest import MANIFEST_NAME
from langchain_pandagpt.model.modeling import PandaGPTModel
from langchain_pandagpt.structured import JsonGrammar, JsonLogitsProcessor

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(autouse=True)
def _empty_registry() -> None:
    registry.clear()
    yield
    registry.clear()


def test_shared_models_load_once_per_key(tiny_bundle: Path) -> None:
    results: list[PandaGPTModel] = []
    threads = [
        threading.Thread(target=lambda: results.append(registry.get_shared_model(tiny_bundle)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(result) for result in results}) == 1
    same_device = "auto" if not torch.cuda.is_available() else "cpu"
    same = registry.get_shared_model(tiny_bundle / MANIFEST_NAME, device=same_device)
    assert same is results[0]
    # "auto" is fp32 on a CPU: the same key as asking for fp32.
    if not torch.cuda.is_available():
        assert registry.get_shared_model(tiny_bundle, precision="fp32") is results[0]
    assert registry.get_shared_model(tiny_bundle, precision="bf16") is not results[0]
    registry.clear()
    assert registry.get_shared_model(tiny_bundle) is not results[0]


def test_clear_frees_the_model_its_engine_and_chat_models(tiny_bundle: Path) -> None:
    model = registry.get_shared_model(tiny_bundle)
    engine = registry.shared_engine(model)
    assert registry.shared_engine(model) is engine
    params = SamplingParams(max_new_tokens=3)
    assert engine.generate([Message("human", "hi")], params).completion_tokens == 3
    chat = ChatPandaGPT(model=str(tiny_bundle), max_tokens=3)
    chat.invoke("hello")
    assert chat.engine is engine
    dead = weakref.ref(model)
    del model, engine, chat
    registry.clear()
    gc.collect()
    assert dead() is None, "the registry (or an engine thread) kept the model alive"


def test_adopted_models_are_released_too(tiny_bundle: Path) -> None:
    from langchain_pandagpt.model.bundle import load_pandagpt

    model = load_pandagpt(tiny_bundle)
    registry.shared_engine(model).generate([Message("human", "hi")], SamplingParams(2))
    dead = weakref.ref(model)
    registry.release_model(model)
    del model
    gc.collect()
    assert dead() is None


def test_grammar_cache_stays_bounded_over_many_schemas(tiny_bundle: Path) -> None:
    """200 distinct schemas, each used for a mask: at most GRAMMAR_CACHE_SIZE grammars (and
    their token-mask tables) stay alive."""
    model = registry.get_shared_model(tiny_bundle)
    from langchain_pandagpt.structured import TokenVocabulary

    vocabulary = TokenVocabulary.for_tokenizer(model.tokenizer, model.vocab_size)
    alive: list[weakref.ref[JsonGrammar]] = []
    logits = torch.zeros(model.vocab_size)
    for index in range(200):
        schema = {"type": "object", "properties": {f"field_{index}": {"type": "integer"}}}
        grammar = registry.shared_grammar(schema)
        processor = JsonLogitsProcessor(grammar, vocabulary, 64, end_ids=(2,))
        processor([], logits)
        alive.append(weakref.ref(grammar))
        del grammar, processor
    gc.collect()
    living = sum(ref() is not None for ref in alive)
    assert registry.registry().grammar_count() == registry.GRAMMAR_CACHE_SIZE
    assert living == registry.GRAMMAR_CACHE_SIZE
    assert registry.shared_grammar({"type": "object"}) is registry.shared_grammar(
        {"type": "object"}
    )


def test_embeddings_share_the_models_imagebind(tiny_bundle: Path) -> None:
    """One ImageBind per process: embeddings of a loaded bundle use the model's towers, and
    an encoder made before the model loads drops its own towers for the model's."""
    from langchain_pandagpt.embeddings import ImageBindEmbeddings

    early = ImageBindEmbeddings(bundle=tiny_bundle)
    vector = early.embed_query("a cat")  # loads a text tower of its own
    own = early._encoder().towers["text"]
    chat = ChatPandaGPT(model=str(tiny_bundle))
    model = chat.engine.model  # loading the model hands its towers to the encoder
    encoder = early._encoder()
    assert encoder.towers["text"] is model.imagebind is encoder.towers["vision"]
    assert encoder.lock is model.lock
    assert own is not model.imagebind
    assert early.embed_query("a cat") == pytest.approx(vector, abs=1e-6)
    late = ImageBindEmbeddings.from_chat_model(chat)
    assert late._encoder() is encoder


def test_pandagpt_bundle_variable_names_the_embeddings_imagebind(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_pandagpt.embeddings import ImageBindEmbeddings
    from langchain_pandagpt.model.bundle import imagebind_checkpoint

    monkeypatch.setenv("PANDAGPT_BUNDLE", str(tiny_bundle))
    assert ImageBindEmbeddings()._checkpoint_path() == imagebind_checkpoint(tiny_bundle)
    assert ChatPandaGPT().model == str(tiny_bundle)


def test_server_holds_one_imagebind(tiny_bundle: Path) -> None:
    from langchain_pandagpt.serving.server import app_for_bundle

    app_for_bundle(tiny_bundle)
    model = registry.get_shared_model(tiny_bundle)
    assert model.imagebind_path is not None
    encoder = registry.shared_encoder(
        model.imagebind_path, model.imagebind.device, model.imagebind.dtype
    )
    assert all(tower is model.imagebind for tower in encoder.towers.values())
