"""Stand-in TensorRT-LLM executables for tests on machines without TensorRT-LLM.

They check our side of the contract only: the argv and environment we pass, the files we hand them,
the health wait and signal handling. ``trtllm-build`` writes a plausible engine directory;
``trtllm-serve`` serves ``GET /health`` on the given port and exits 128+signal like the real one.
Each records its argv, selected environment and input files as JSON lines in $STANDIN_RECORD.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

BUILD = r"""
import json, os, sys
args = sys.argv[1:]
rec = {"tool": "trtllm-build", "argv": args, "env": {k: v for k, v in os.environ.items() if k.startswith("TRTLLM_")}}
with open(os.environ["STANDIN_RECORD"], "a") as f:
    f.write(json.dumps(rec) + "\n")
opts = dict(zip(args[::2], args[1::2]))
print("[TRT-LLM] [I] Set gpt_attention_plugin", flush=True)
for i in range(3):
    print(f"[TRT-LLM] [I] building rank layer {i}", flush=True)
if os.environ.get("STANDIN_HANG"):  # a long build: record the pid, then wait to be stopped
    open(os.environ["STANDIN_HANG"], "w").write(str(os.getpid()))
    import time
    time.sleep(600)
fail = os.environ.get("STANDIN_FAIL")
if fail:
    print("[TRT-LLM] [E] out of memory while building the engine", flush=True)
    sys.exit(int(fail))
out = opts["--output_dir"]
os.makedirs(out, exist_ok=True)
ckpt = json.load(open(os.path.join(opts["--checkpoint_dir"], "config.json")))
json.dump({"version": "standin", "pretrained_config": ckpt, "build_config": {"max_batch_size": int(opts["--max_batch_size"])}},
          open(os.path.join(out, "config.json"), "w"))
for r in range(int(opts["--workers"])):
    open(os.path.join(out, f"rank{r}.engine"), "wb").write(b"standin")
"""

SERVE = r"""
import json, os, signal, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
args = sys.argv[1:]
opts = dict(zip(args[1::2], args[2::2]))
record = os.environ["STANDIN_RECORD"]
def log(doc):
    with open(record, "a") as f:
        f.write(json.dumps(doc) + "\n")
cfg = open(opts["--config"]).read() if "--config" in opts else None
log({"tool": "trtllm-serve", "argv": args, "config": cfg,
     "env": {k: v for k, v in os.environ.items() if k.startswith(("TRTLLM_", "UB_"))}})
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if self.path == "/health" else 404
        self.send_response(code); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a):
        pass
srv = ThreadingHTTPServer((opts["--host"], int(opts["--port"])), H)
def stop(signum, frame):
    log({"tool": "trtllm-serve", "signal": signum})
    threading.Thread(target=srv.shutdown).start()
    srv.exit_code = 128 + signum
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
print("INFO: Application startup complete.", flush=True)
srv.exit_code = 0
srv.serve_forever()
sys.exit(srv.exit_code)
"""


def install(bin_dir: Path) -> Path:
    """Write executable trtllm-build and trtllm-serve stand-ins into ``bin_dir``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in (("trtllm-build", BUILD), ("trtllm-serve", SERVE)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


def fake_trtllm_dist(site: Path, version: str = "1.2.0") -> Path:
    """A dist-info so importlib.metadata reports ``tensorrt_llm`` at ``version`` (no package inside)."""
    info = site / f"tensorrt_llm-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: tensorrt_llm\nVersion: {version}\n")
    return site


def records(path: Path, tool: str | None = None) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    docs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [d for d in docs if tool is None or d.get("tool") == tool]


SHA = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(cache: Path, repo: str, src: Path) -> None:
    """The layout huggingface_hub keeps under HF_HOME/hub: refs/main -> snapshots/<sha>/files."""
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(src, root / "snapshots" / SHA)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(SHA)


def env_with(bin_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **extra}
