"""``pandagpt serve``: the OpenAI-compatible HTTP server."""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated, cast

import typer
from rich.markup import escape

from langchain_pandagpt.cli.common import (
    BundleOption,
    DeviceOption,
    PrecisionOption,
    app,
    check_bundle,
    stderr,
    user_errors,
)


@app.command()
def serve(
    bundle: BundleOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    model_name: Annotated[
        str | None, typer.Option(help="Model id clients pass (default: the bundle's name).")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="PANDAGPT_API_KEY",
            help="Require 'Authorization: Bearer KEY'; defaults to $PANDAGPT_API_KEY.",
            show_envvar=True,
        ),
    ] = None,
    max_batch_size: Annotated[
        int, typer.Option(min=1, help="Most concurrent requests decoded in one batch.")
    ] = 16,
    max_request_mb: Annotated[
        float, typer.Option(min=0.001, help="Largest request body, in MiB (media included).")
    ] = 64.0,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a generation may take before a 504.")
    ] = 600.0,
    default_max_tokens: Annotated[
        int, typer.Option(min=1, help="max_tokens for requests that give none.")
    ] = 256,
    allow_local_files: Annotated[
        bool, typer.Option(help="Let requests read files on this machine (file:// URLs).")
    ] = False,
    allow_remote_media: Annotated[
        bool, typer.Option(help="Let requests make the server fetch http(s) media URLs.")
    ] = False,
    max_media_items: Annotated[
        int, typer.Option(min=0, help="Most media items (images, audio, ...) in one request.")
    ] = 16,
    max_media_mb: Annotated[
        float, typer.Option(min=0.001, help="Most media in one request, in MiB (decoded).")
    ] = 64.0,
    media_workers: Annotated[
        int | None,
        typer.Option(min=1, help="Threads that decode media (default: CPU cores, at most 4)."),
    ] = None,
    shutdown_timeout: Annotated[
        int,
        typer.Option(min=0, help="On SIGTERM, seconds open requests get before they are cut."),
    ] = 30,
    health_timeout: Annotated[
        float,
        typer.Option(min=0.1, help="/health answers 503 once the engine is stuck this long."),
    ] = 30.0,
    embeddings: Annotated[bool, typer.Option(help="Serve /v1/embeddings (ImageBind).")] = True,
    precision: PrecisionOption = "auto",
    device: DeviceOption = "auto",
    threads: Annotated[
        int | None,
        typer.Option(
            min=1, help="CPU threads per matrix product (1 is fastest for tiny models on CPU)."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the bundle over an OpenAI-compatible HTTP API.

    Endpoints: /v1/chat/completions (streaming too), /v1/embeddings, /v1/models, /v1/stats,
    /health. Use any OpenAI client, e.g. ChatOpenAI(base_url="http://HOST:PORT/v1").
    """
    with user_errors():
        bundle = check_bundle(bundle)
    import torch
    import uvicorn

    from langchain_pandagpt.model.bundle import PrecisionChoice
    from langchain_pandagpt.serving.server import ServerSettings, app_for_bundle

    if threads is not None:
        torch.set_num_threads(threads)
    if api_key is None and "PANDAGPT_API_KEY" in os.environ:
        api_key = os.environ["PANDAGPT_API_KEY"]  # click drops an empty value: refuse it below
    with user_errors():
        extra = {} if media_workers is None else {"media_workers": media_workers}
        settings = ServerSettings(
            model_name=model_name,
            api_key=api_key,
            max_request_bytes=int(max_request_mb * 2**20),
            request_timeout_s=timeout,
            default_max_tokens=default_max_tokens,
            allow_local_files=allow_local_files,
            allow_remote_media=allow_remote_media,
            max_media_items=max_media_items,
            max_media_bytes=int(max_media_mb * 2**20),
            shutdown_timeout_s=shutdown_timeout,
            health_timeout_s=health_timeout,
            **extra,
        )
        server_app = app_for_bundle(
            bundle,
            settings,
            precision=cast(PrecisionChoice, precision),
            device=device,
            max_batch_size=max_batch_size,
            embeddings=embeddings,
        )
    if api_key is None and not _is_loopback(host):
        stderr.print(
            f"[yellow]warning:[/] serving on {escape(host)} without an API key (--api-key)"
        )
    uvicorn.run(
        server_app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=shutdown_timeout,
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
