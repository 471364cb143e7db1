"""`grok-client`: talk to a grok-server from the shell.

    grok-client generate --target localhost:50051 "Hello" --max-tokens 32 --stream
    grok-client tokenize --target localhost:50051 "Hello"
    grok-client info --target localhost:50051
    grok-client health --target localhost:50051

Exit status: 0 on success, 1 on an RPC error (the status and its explanation go to stderr), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from google.protobuf.json_format import MessageToDict
from grok.serving.v1 import generation_pb2 as pb

from grok_server.client.api import Credentials, GrokClient, GrokError

DEFAULT_TARGET = os.environ.get("GROK_TARGET", "localhost:50051")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=DEFAULT_TARGET,
                   help="HOST:PORT, or any gRPC target such as dns:///name:port (calls go round-robin over "
                        "the addresses it resolves to; env GROK_TARGET)")
    p.add_argument("--timeout", type=float, help="deadline in seconds")
    p.add_argument("--tls", action="store_true", help="use TLS with the system's roots")
    p.add_argument("--ca-cert", type=Path, help="CA certificate for the server (implies --tls)")
    p.add_argument("--client-cert", type=Path, help="client certificate for mTLS")
    p.add_argument("--client-key", type=Path, help="client key for mTLS")
    p.add_argument("--server-name", help="name to check in the server's certificate")
    p.add_argument("--token-file", type=Path, help="file holding a bearer token (env GROK_TOKEN also works)")
    p.add_argument("--json", action="store_true", help="print the raw response(s) as JSON")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grok-client", description="Client for grok-server (grok.serving.v1).")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate a completion")
    _common(g)
    g.add_argument("prompt", help="prompt text ('-' reads stdin)")
    g.add_argument("--stream", action="store_true", help="print tokens as they arrive")
    g.add_argument("--max-tokens", type=int)
    g.add_argument("--min-tokens", type=int)
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-p", type=float)
    g.add_argument("--top-k", type=int)
    g.add_argument("--min-p", type=float)
    g.add_argument("--presence-penalty", type=float)
    g.add_argument("--frequency-penalty", type=float)
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--stop-token-id", action="append", type=int, default=[], help="repeatable")
    g.add_argument("--ignore-eos", action="store_true")
    g.add_argument("--logprobs", type=int, help="return log-probabilities (N = also the top N alternatives)")
    g.add_argument("--echo", action="store_true", help="include the prompt")
    g.add_argument("--token-ids", action="store_true", help="the prompt is comma-separated token ids")
    g.add_argument("--token-ids-only", action="store_true",
                   help="ask for token ids without text (no detokenizing on the server); prints the ids")
    g.add_argument("--request-id", default="")

    t = sub.add_parser("tokenize", help="tokenize text")
    _common(t)
    t.add_argument("text")
    t.add_argument("--no-special-tokens", action="store_true")

    for name, text in (("info", "show the model and the server's limits"), ("health", "check health")):
        _common(sub.add_parser(name, help=text))
    return p


def _client(ns: argparse.Namespace) -> GrokClient:
    token = None
    if ns.token_file is not None:
        token = ns.token_file.read_text().strip()
    elif os.environ.get("GROK_TOKEN"):
        token = os.environ["GROK_TOKEN"]
    creds = Credentials(tls=ns.tls or ns.ca_cert is not None, ca_cert=ns.ca_cert, client_cert=ns.client_cert,
                        client_key=ns.client_key, token=token, server_name=ns.server_name)
    return GrokClient(ns.target, credentials=creds, timeout=ns.timeout)


def _print_json(msg: object) -> None:
    print(json.dumps(MessageToDict(msg, preserving_proto_field_name=True), ensure_ascii=False))  # type: ignore[arg-type]


class UsageError(Exception):
    """Bad input on the command line, found after parsing: exit status 2, like argparse's own errors."""


def _token_ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--token-ids: the prompt must be comma-separated integers, got {text!r}") from None


def _generate(client: GrokClient, ns: argparse.Namespace) -> None:
    text = sys.stdin.read() if ns.prompt == "-" else ns.prompt
    prompt: str | list[int] = _token_ids(text) if ns.token_ids else text
    options = {
        "max_tokens": ns.max_tokens, "min_tokens": ns.min_tokens, "stop": ns.stop,
        "stop_token_ids": ns.stop_token_id, "ignore_eos": ns.ignore_eos, "logprobs": ns.logprobs,
        "echo": ns.echo, "request_id": ns.request_id, "temperature": ns.temperature, "top_p": ns.top_p,
        "top_k": ns.top_k, "min_p": ns.min_p, "presence_penalty": ns.presence_penalty,
        "frequency_penalty": ns.frequency_penalty, "repetition_penalty": ns.repetition_penalty,
        "seed": ns.seed, "token_ids_only": ns.token_ids_only,
    }

    def shown(resp: pb.GenerateResponse) -> str:
        if ns.token_ids_only:
            return "".join(f"{t}," for t in resp.token_ids)
        return resp.text

    if ns.stream:
        last: pb.GenerateResponse | None = None
        for chunk in client.generate_stream(prompt, **options):
            if ns.json:
                _print_json(chunk)
            else:
                sys.stdout.write(chunk.prompt_text + shown(chunk) if ns.echo else shown(chunk))
                sys.stdout.flush()
            last = chunk
        if not ns.json:
            sys.stdout.write("\n")
            if last is not None:
                _summary(last)
        return
    resp = client.generate(prompt, **options)
    if ns.json:
        _print_json(resp)
        return
    print((resp.prompt_text if ns.echo else "") + shown(resp))
    _summary(resp)


def _summary(resp: pb.GenerateResponse) -> None:
    reason = pb.FinishReason.Name(resp.finish_reason).removeprefix("FINISH_REASON_").lower()
    print(f"[{resp.request_id}] finish={reason} prompt_tokens={resp.usage.prompt_tokens} "
          f"generated_tokens={resp.usage.generated_tokens}", file=sys.stderr)


def run(ns: argparse.Namespace) -> int:
    with _client(ns) as client:
        if ns.command == "generate":
            _generate(client, ns)
        elif ns.command == "tokenize":
            resp = client.tokenize(ns.text, add_special_tokens=not ns.no_special_tokens, return_tokens=True)
            if ns.json:
                _print_json(resp)
            else:
                print(" ".join(str(i) for i in resp.token_ids))
                print(" ".join(resp.tokens), file=sys.stderr)
        elif ns.command == "info":
            _print_json(client.model_info())
        elif ns.command == "health":
            status = client.health() if ns.timeout is None else client.health(timeout=ns.timeout)
            print(status)
            return 0 if status == "SERVING" else 1
    return 0


def main(argv: list[str] | None = None) -> None:
    ns = build_parser().parse_args(argv)
    try:
        code = run(ns)
    except GrokError as e:
        print(f"grok-client: {ns.target}: {e}", file=sys.stderr)
        code = 1
    except UsageError as e:
        print(f"grok-client: {e}", file=sys.stderr)
        code = 2
    except ValueError as e:  # a value the request message cannot hold (protobuf's range checks)
        print(f"grok-client: bad request: {e}", file=sys.stderr)
        code = 2
    except OSError as e:
        print(f"grok-client: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
