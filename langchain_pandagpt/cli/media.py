"""``pandagpt embed``, ``index`` and ``search``: ImageBind vectors and media retrieval."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from langchain_pandagpt.cli.common import (
    MODALITIES,
    AudioOption,
    DepthOption,
    ImageOption,
    ImuOption,
    ThermalOption,
    VideoOption,
    app,
    bundle_embeddings,
    check_encoder,
    check_modalities,
    media_items,
    regular_files,
    stdout,
    user_errors,
    utf8_text,
)

#: Where ``pandagpt index DIR`` keeps the index: hidden, so indexing never picks it up.
INDEX_DIRNAME = ".pandagpt-index"

OptionalBundleOption = Annotated[
    Path | None,
    typer.Option(
        "--bundle",
        "-b",
        envvar="PANDAGPT_BUNDLE",
        help="Use this bundle's ImageBind; defaults to $PANDAGPT_BUNDLE.",
        show_envvar=True,
    ),
]
ImageBindOption = Annotated[
    Path | None,
    typer.Option(help="An ImageBind checkpoint to use instead of a bundle's."),
]
ModalitiesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--modality",
        callback=check_modalities,
        help=f"Only these media: {', '.join(MODALITIES)}.",
    ),
]


def resolve_index(path: Path) -> Path:
    """An index folder, or a media folder holding one in ``.pandagpt-index``."""
    nested = path / INDEX_DIRNAME
    return nested if not (path / "manifest.json").exists() and nested.is_dir() else path


@app.command()
def embed(
    text: Annotated[
        list[str] | None, typer.Argument(callback=utf8_text, help="Texts to embed.")
    ] = None,
    image: ImageOption = None,
    audio: AudioOption = None,
    video: VideoOption = None,
    thermal: ThermalOption = None,
    depth: DepthOption = None,
    imu: ImuOption = None,
    media: Annotated[
        list[Path] | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            callback=regular_files,
            help="A media file of any kind, detected by its name.",
        ),
    ] = None,
    bundle: OptionalBundleOption = None,
    imagebind: ImageBindOption = None,
    out: Annotated[
        Path | None, typer.Option(help="Save the vectors: .npy (N x D float32) or .json.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the vectors as JSON.")] = False,
) -> None:
    """Embed texts and media into ImageBind's joint space; print, compare or save the vectors.

    With several inputs, the cosine similarity of every pair is shown: a text next to the
    image it describes scores highest (with real weights).
    """
    files = dict(image=image, audio=audio, video=video, thermal=thermal, depth=depth, imu=imu)
    if not text and not media and not any(files.values()):
        raise typer.BadParameter("give at least one text or media file", param_hint="TEXT")
    with user_errors():
        check_encoder(bundle, imagebind)
    import numpy as np

    attached = media_items(**files)
    items: list[Any] = [(t, "text") for t in text or ()]
    items += [(item.data, item.modality) for item in attached]
    items += [str(path) for path in media or ()]
    labels = [*(text or ()), *(str(item.data) for item in attached), *map(str, media or ())]
    with user_errors():
        vectors = np.asarray(bundle_embeddings(bundle, imagebind).embed_media(items), "float32")
        records = [
            {"input": label, "modality": item[1] if isinstance(item, tuple) else "media"}
            for label, item in zip(labels, items, strict=True)
        ]
        if out is not None:
            if out.suffix == ".npy":
                np.save(out, vectors)
            elif out.suffix == ".json":
                out.write_text(json.dumps(_with_vectors(records, vectors)))
            else:
                raise ValueError(f"{out}: use a .npy or .json file name")
            stdout.print(f"{len(vectors)} vectors of {vectors.shape[1]} floats -> {out}")
    if json_output:
        sys.stdout.write(json.dumps(_with_vectors(records, vectors)) + "\n")
    elif out is None:
        _print_vectors(records, vectors)


def _with_vectors(records: list[dict[str, str]], vectors: Any) -> list[dict[str, Any]]:
    return [{**r, "embedding": v.tolist()} for r, v in zip(records, vectors, strict=True)]


def _print_vectors(records: list[dict[str, str]], vectors: Any) -> None:
    table = Table("#", "input", "modality", f"vector ({vectors.shape[1]} floats)")
    for index, (record, vector) in enumerate(zip(records, vectors, strict=True)):
        head = " ".join(f"{x:+.3f}" for x in vector[:4])
        table.add_row(str(index), record["input"], record["modality"], f"[{head} ...]")
    stdout.print(table)
    if len(vectors) > 1:
        similarity = Table("cosine", *(str(i) for i in range(len(vectors))))
        for index, row in enumerate(vectors @ vectors.T):
            similarity.add_row(str(index), *(f"{x:.3f}" for x in row))
        stdout.print(similarity)


@app.command()
def index(
    directory: Annotated[
        Path, typer.Argument(exists=True, file_okay=False, help="Folder of media to index.")
    ],
    bundle: OptionalBundleOption = None,
    imagebind: ImageBindOption = None,
    index_path: Annotated[
        Path | None,
        typer.Option("--index", help=f"Index folder (default: DIRECTORY/{INDEX_DIRNAME})."),
    ] = None,
    glob: Annotated[str, typer.Option(help="Only files matching this pattern.")] = "*",
    modality: ModalitiesOption = None,
) -> None:
    """Index a folder of images, audio, video, thermal, depth and IMU files for search.

    Runs again incrementally: only new or changed files are embedded, deleted ones dropped.
    Progress is saved as it goes, so an interrupted run resumes where it stopped. Files that
    cannot be read are listed and skipped.
    """
    with user_errors():
        check_encoder(bundle, imagebind)
    from langchain_pandagpt.media_rag import MediaIndex

    target = index_path or directory / INDEX_DIRNAME
    with user_errors():
        media_index = MediaIndex(bundle_embeddings(bundle, imagebind), path=target)
        stats = media_index.index_directory(directory, glob, modalities=modality)
    stdout.print(
        f"{len(media_index)} files indexed in {target} (added {stats.added}, updated "
        f"{stats.updated}, removed {stats.removed}, unchanged {stats.unchanged}, "
        f"failed {len(stats.failed)})",
        highlight=False,
    )
    for failure in stats.failed:
        stdout.print(f"  skipped {failure.source}: {failure.reason}", highlight=False)


@app.command()
def search(
    query: Annotated[
        str | None, typer.Argument(callback=utf8_text, help="What to look for, in words.")
    ] = None,
    index_path: Annotated[
        Path,
        typer.Option("--index", help="Index folder, or a media folder that was indexed."),
    ] = Path(),
    media: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            callback=regular_files,
            help="Search with a media file instead.",
        ),
    ] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="How many results.")] = 4,
    modality: ModalitiesOption = None,
    bundle: OptionalBundleOption = None,
    imagebind: ImageBindOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Find the indexed media closest to a text (or to a media file)."""
    if (query is None) == (media is None):
        raise typer.BadParameter("give either a QUERY or --media", param_hint="QUERY")
    with user_errors():
        check_encoder(bundle, imagebind)
    from langchain_pandagpt.media_rag import MediaIndex

    with user_errors():
        media_index = MediaIndex.load(
            resolve_index(index_path), bundle_embeddings(bundle, imagebind)
        )
        retriever = media_index.as_retriever(k=k, modalities=modality)
        if media is not None:
            docs = retriever.invoke_media(str(media))
        else:
            assert query is not None
            docs = retriever.invoke(query)
    if json_output:
        sys.stdout.write(json.dumps([doc.metadata for doc in docs]) + "\n")
        return
    table = Table("#", "score", "modality", "file")
    for rank, doc in enumerate(docs, 1):
        score = doc.metadata.get("score")
        shown = "" if score is None else f"{score:.4f}"
        table.add_row(str(rank), shown, doc.metadata["modality"], doc.metadata["source"])
    stdout.print(table)
