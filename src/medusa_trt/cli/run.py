"""`medusa-trt run DIR`: one generation with --prompt, else serve DIR; both through DIR's engine (engines.launch)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from medusa_trt.cli._common import JsonOpt, emit_json, err_console
from medusa_trt.engines.launch import DEFAULT_MAX_REQUEST_MB, TEMPLATE_TIMEOUT_S
from medusa_trt.errors import InvalidInputError
from medusa_trt.runtime.types import Acceptance, SamplingError, SamplingParams
from medusa_trt.runtime.watchdog import FIRST_STEP_TIMEOUT_S, STEP_TIMEOUT_S


def _sampling(prompt: str | None, **flags: Any) -> SamplingParams:
    """The flags as one checked record; exit 2 naming the flag, before any model is loaded."""
    if prompt is not None:
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as e:  # undecodable argv bytes arrive as lone surrogates
            raise InvalidInputError(
                f"--prompt is not valid UTF-8 (byte {e.start})", hint="Pass the prompt as UTF-8 text."
            ) from None
    try:
        return SamplingParams(**flags)
    except SamplingError as e:
        flag = "--" + e.field.replace("_", "-")
        raise InvalidInputError(f"{flag} {flags.get(e.field)}: {str(e).split(': ', 1)[-1]}") from None


def run_cmd(
    path: Annotated[str, typer.Argument(help="A checkpoint from `convert` or an engine dir from `build`.")],
    prompt: Annotated[
        str | None, typer.Option("--prompt", help="Generate once for this text and exit (without it, DIR is served).")
    ] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Most tokens to generate.")] = 128,
    temperature: Annotated[
        float,
        typer.Option(
            "--temperature", help="0 is greedy; > 0 samples (Medusa stays exact unless --acceptance typical)."
        ),
    ] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass.")] = 1.0,
    top_k: Annotated[int, typer.Option("--top-k", help="Sample from the k most likely (0: off).")] = 0,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampling seed.")] = None,
    no_medusa: Annotated[bool, typer.Option("--no-medusa", help="Plain decoding, one token per step.")] = False,
    acceptance: Annotated[
        Acceptance,
        typer.Option(
            "--acceptance",
            help="Medusa at temperature > 0: exact (lossless, samples as plain decoding) or typical (lossy).",
        ),
    ] = Acceptance.EXACT,
    tree: Annotated[
        str | None,
        typer.Option(
            "--tree",
            help="Medusa tree: shipped name or YAML/JSON file, used as is (default: the engine's, else "
            "nvidia_low_latency_15, adapted).",
        ),
    ] = None,
    no_adapt: Annotated[
        bool, typer.Option("--no-adapt", help="Always verify the whole tree (no adaptive subtree choice).")
    ] = False,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompt in the model's chat template.")] = False,
    host: Annotated[str, typer.Option("--host", help="Serve: address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Serve: port (0: any free port).")] = 8000,
    print_cmd: Annotated[bool, typer.Option("--print-cmd", help="Serve: print the command and exit.")] = False,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="MEDUSA_TRT_API_KEY",
            show_envvar=True,
            help="Serve: /v1/* requires `Authorization: Bearer KEY` (401 otherwise); /health and /metrics stay open.",
        ),
    ] = None,
    max_request_mb: Annotated[
        float,
        typer.Option("--max-request-mb", help="Serve: larger request bodies get 413 before they are parsed."),
    ] = DEFAULT_MAX_REQUEST_MB,
    step_timeout: Annotated[
        float,
        typer.Option(
            "--step-timeout",
            help="Seconds a decoding step may take before the engine counts as hung (tp ranks are killed, "
            "the server exits 1); 0: off.",
        ),
    ] = STEP_TIMEOUT_S,
    first_step_timeout: Annotated[
        float,
        typer.Option("--first-step-timeout", help="The same for a request's first forward (the prefill); 0: off."),
    ] = FIRST_STEP_TIMEOUT_S,
    template_timeout: Annotated[
        float,
        typer.Option(
            "--template-timeout",
            help="Serve: seconds the chat template may render one request before it is stopped (HTTP 500).",
        ),
    ] = TEMPLATE_TIMEOUT_S,
    json_out: JsonOpt = False,
) -> int:
    """Generate once (--prompt) or serve DIR with an OpenAI-compatible API."""
    params = _sampling(
        prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        acceptance=acceptance,
    )
    if step_timeout < 0 or first_step_timeout < 0:
        raise InvalidInputError("--step-timeout and --first-step-timeout must be >= 0 (0 turns the check off)")
    if prompt is None and no_medusa:  # a server decides per request; a flag it would ignore is refused
        raise InvalidInputError(
            "--no-medusa applies to one generation (--prompt), not to a server",
            hint='A request decodes plain with "medusa": false in its body (`bench --compare-no-medusa` sends it).',
        )
    if prompt is None:
        import os

        from medusa_trt.engines.launch import api_key_setting, serve, serve_command

        api_key, note = api_key_setting(api_key, os.environ)
        if note is not None:
            err_console.print(note, markup=False)

        if json_out:  # serving has no document to print; the command it would run does
            if not print_cmd:
                raise InvalidInputError("--json needs --prompt (one generation) or --print-cmd (the serve command)")
            emit_json(serve_command(path, host, port).to_json())
            return 0
        return serve(
            engine_dir=path,
            host=host,
            port=port,
            print_cmd=print_cmd,
            device=device,
            tree=tree,
            adapt=False if no_adapt else None,
            api_key=api_key,
            max_request_mb=max_request_mb,
            step_timeout_s=step_timeout,
            first_step_timeout_s=first_step_timeout,
            template_timeout_s=template_timeout,
            show=typer.echo,
            announce=_announce,
        )
    from medusa_trt.engines.base import GenerateRequest
    from medusa_trt.engines.launch import generate

    request = GenerateRequest(
        prompt=prompt,
        params=params,
        medusa=not no_medusa,
        chat=chat,
        device=device,
        tree=tree,
        adapt=False if no_adapt else None,
        first_step_timeout_s=first_step_timeout,
        step_timeout_s=step_timeout,
        on_text=None if json_out else _echo,
        status=lambda label: err_console.status(label, spinner="dots"),
    )
    return _report(generate(path, request), json_out)


def _announce(line: str) -> None:
    """A server's status line (serving at URL, stopped), whole on one line so that it can be grepped."""
    err_console.print(f"medusa-trt: {line}", markup=False, highlight=False, soft_wrap=True)


def _report(doc: dict, json_out: bool) -> int:
    if json_out:
        emit_json(doc)
        return 0
    sys.stdout.write("\n")
    s = doc["stats"]
    err_console.print(
        f"[dim]{doc['completion_tokens']} tokens in {doc['num_steps']} steps "
        f"({doc['tokens_per_step']:.2f} tokens/step, {s['tokens_per_s']:.1f} tokens/s, "
        f"medusa={'on' if s['medusa'] else 'off'}, tp={s.get('tp', 1)}, finish={doc['finish_reason']})[/]"
    )
    return 0


def _echo(text: str) -> None:
    """Show the generated text as it settles."""
    sys.stdout.write(text)
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
