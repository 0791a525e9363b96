"""`python -m medusa_trt.serve DIR [--host H] [--port P] [--device D] [--model-name N] [--tree T] [...]`.

The same server `medusa-trt run DIR` starts for reference engines, without the CLI around it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from medusa_trt.errors import MedusaTrtError
from medusa_trt.runtime.watchdog import FIRST_STEP_TIMEOUT_S, STEP_TIMEOUT_S
from medusa_trt.serve.guard import API_KEY_ENV, DEFAULT_MAX_REQUEST_MB, ServeGuard


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medusa_trt.serve", description=__doc__.splitlines()[0])
    p.add_argument("engine_dir", type=Path, help="engine directory or converted checkpoint")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on stderr)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model-name", default=None, help="name served at /v1/models (default: the engine's)")
    p.add_argument("--tree", default=None, help="Medusa tree name or file (default: the engine's)")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), help=f"Bearer key for /v1/* (env {API_KEY_ENV})")
    p.add_argument("--max-request-mb", type=float, default=DEFAULT_MAX_REQUEST_MB, help="413 above this body size")
    p.add_argument("--step-timeout", type=float, default=STEP_TIMEOUT_S, help="seconds per decoding step; 0: off")
    p.add_argument("--first-step-timeout", type=float, default=FIRST_STEP_TIMEOUT_S, help="the same for a prefill")
    args = p.parse_args(argv)
    from medusa_trt.serve.server import run_server

    guard = ServeGuard(
        api_key=args.api_key or None,
        max_request_bytes=int(args.max_request_mb * 2**20),
        step_timeout_s=args.step_timeout,
        first_step_timeout_s=args.first_step_timeout,
    )

    try:
        return run_server(
            args.engine_dir,
            host=args.host,
            port=args.port,
            device=args.device,
            model_name=args.model_name,
            tree=args.tree,
            guard=guard,
        )
    except MedusaTrtError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
