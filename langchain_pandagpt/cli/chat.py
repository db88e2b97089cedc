"""``pandagpt chat`` (interactive) and ``pandagpt ask`` (one question)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.markup import escape

from langchain_pandagpt.cli.common import (
    AudioOption,
    BundleOption,
    DepthOption,
    DeviceOption,
    ImageOption,
    ImuOption,
    MaxTokensOption,
    PrecisionOption,
    SeedOption,
    StopOption,
    SystemOption,
    TemperatureOption,
    ThermalOption,
    TopKOption,
    TopPOption,
    VideoOption,
    app,
    check_bundle,
    load_engine,
    media_items,
    print_error,
    read_stdin_text,
    sampling_params,
    stderr,
    user_errors,
    utf8_text,
)


@app.command()
def chat(
    bundle: BundleOption = None,
    system: SystemOption = None,
    max_tokens: MaxTokensOption = 256,
    temperature: TemperatureOption = 0.0,
    top_p: TopPOption = 1.0,
    top_k: TopKOption = 0,
    seed: SeedOption = None,
    stop: StopOption = None,
    precision: PrecisionOption = "auto",
    device: DeviceOption = "auto",
) -> None:
    """Chat in the terminal; answers stream as they are written.

    Attach media to your next message with [bold]/image PATH[/], /audio, /video, /thermal,
    /depth or /imu (quote paths with spaces: /image "my cat.jpg"); [bold]/reset[/] starts
    over, [bold]/help[/] lists the commands. Ctrl-C stops an answer and keeps the
    conversation; [bold]/quit[/], Ctrl-D or Ctrl-C twice at the prompt leaves. Reads
    questions from a pipe too.
    """
    with user_errors():
        check_bundle(bundle)
    from langchain_pandagpt.cli.session import ChatSession, help_text, run_repl

    interactive = sys.stdin.isatty()
    with user_errors():
        engine = load_engine(bundle, precision, device)
        params = sampling_params(max_tokens, temperature, top_p, top_k, seed, stop)
        session = ChatSession(engine, params, system=system)
    if interactive:
        import readline  # noqa: F401  (line editing and up-arrow history for input())

        stderr.print(f"[bold]PandaGPT[/] ({escape(engine.model.manifest.name)})")
        stderr.print(help_text(), markup=False)

    def read_line() -> str | None:
        try:
            return input("you> " if interactive else "")
        except EOFError:
            return None

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    with user_errors():
        run_repl(
            session, read_line, write, print_error, answer_prefix="panda> " if interactive else ""
        )


@app.command()
def ask(
    bundle: BundleOption = None,
    question: Annotated[
        str | None,
        typer.Argument(
            callback=utf8_text, help="The question; read from stdin when omitted or '-'."
        ),
    ] = None,
    image: ImageOption = None,
    audio: AudioOption = None,
    video: VideoOption = None,
    thermal: ThermalOption = None,
    depth: DepthOption = None,
    imu: ImuOption = None,
    system: SystemOption = None,
    max_tokens: MaxTokensOption = 256,
    temperature: TemperatureOption = 0.0,
    top_p: TopPOption = 1.0,
    top_k: TopKOption = 0,
    seed: SeedOption = None,
    stop: StopOption = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object with the answer and usage.")
    ] = False,
    precision: PrecisionOption = "auto",
    device: DeviceOption = "auto",
) -> None:
    """Ask one question, optionally about media, and print the answer as it streams.

    Example: [bold]pandagpt ask --image cat.jpg "What is this?"[/]
    """
    with user_errors():
        check_bundle(bundle)
        if question is None or question == "-":
            if sys.stdin.isatty():
                raise ValueError("give a question, or pipe one in: echo 'Hi' | pandagpt ask")
            question = read_stdin_text("the question").strip()
            if not question:
                raise ValueError("the question read from stdin is empty")
        from langchain_pandagpt.conversation import Message

        media = media_items(
            image=image, audio=audio, video=video, thermal=thermal, depth=depth, imu=imu
        )
        engine = load_engine(bundle, precision, device)
        params = sampling_params(max_tokens, temperature, top_p, top_k, seed, stop)
        messages = [Message("human", question, media=media)]
        if system:
            messages.insert(0, Message("system", system))
        if json_output:
            result = engine.generate(messages, params)
            answer = {
                "model": engine.model.manifest.name,
                "text": result.text,
                "finish_reason": result.finish_reason,
                "usage": {
                    "prompt_tokens": result.usage.prompt_tokens,
                    "completion_tokens": result.usage.completion_tokens,
                    "total_tokens": result.usage.total_tokens,
                },
            }
            sys.stdout.write(json.dumps(answer, ensure_ascii=False) + "\n")
            return
        for chunk in engine.stream(messages, params):
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
