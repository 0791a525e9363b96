"""`python -m medusa_trt.serve DIR [--host H] [--port P] [--device D] [--model-name N] [--tree T] [--no-adapt]`.

The same server `medusa-trt run DIR` starts for reference engines, without the CLI around it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medusa_trt.errors import MedusaTrtError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medusa_trt.serve", description=__doc__.splitlines()[0])
    p.add_argument("engine_dir", type=Path, help="engine directory or converted checkpoint")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on stderr)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model-name", default=None, help="name served at /v1/models (default: the engine's)")
    p.add_argument("--tree", default=None, help="Medusa tree name or file, used as is (default: the engine's, adapted)")
    p.add_argument("--no-adapt", action="store_true", help="always verify the whole tree")
    args = p.parse_args(argv)
    from medusa_trt.serve.server import run_server

    try:
        return run_server(
            args.engine_dir,
            host=args.host,
            port=args.port,
            device=args.device,
            model_name=args.model_name,
            tree=args.tree,
            adapt=False if args.no_adapt else None,
        )
    except MedusaTrtError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
