"""A real lm-evaluation-harness run against our server: a log-likelihood task and a generation task.

    python benchmarks/lm_eval_local.py --engine ENGINE_DIR --lm-eval /path/to/venv/bin/lm_eval

lm-evaluation-harness (``pip install "lm-eval[api]"``, in its own venv: it is heavy) evaluates through
its ``local-completions`` model, which is how it measures any OpenAI-compatible server: multiple-choice
tasks (MMLU, HellaSwag, ARC) send ``echo: true`` with ``logprobs`` and read each continuation's
log-probabilities from ``token_logprobs``; generate_until tasks send prompts with ``stop``. Both tasks
are written here, with their data, into a temporary directory (``--include_path``): a multiple-choice
task and a generate_until task over a few local documents, so nothing is downloaded. The server is
`medusa-trt run ENGINE_DIR` on a free loopback port, with Medusa on. Prints lm-eval's results (JSON). That the
log-probabilities equal transformers' and do not change with Medusa is tests/test_serve_api.py's job.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

MC = [
    {"question": "def main():\n    return", "choices": [" 0", " 1", " x", " None"], "answer": 0},
    {"question": "The quick brown fox jumps over the", "choices": [" lazy dog.", " moon.", " fence"], "answer": 0},
    {"question": "class Model:\n    def __init__(self,", "choices": [" name):", " x, y):", " *args):"], "answer": 0},
    {
        "question": "Speculative decoding drafts tokens and",
        "choices": [" verifies them.", " sleeps.", " runs"],
        "answer": 0,
    },
    {"question": "import", "choices": [" os", " sys", " json", " re"], "answer": 1},
    {"question": "for i in", "choices": [" range(10):", " items:", " x"], "answer": 0},
]
GEN = [
    {"prompt": "def main():\n    return", "target": " 0"},
    {"prompt": "The quick brown fox", "target": " jumps over the lazy dog."},
    {"prompt": "class Model:", "target": ""},
    {"prompt": "Speculative decoding", "target": " drafts tokens"},
]
MC_TASK = """task: medusa_trt_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
GEN_TASK = """task: medusa_trt_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 16
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def write_tasks(d: Path) -> None:
    for name, rows, task in (("mc", MC, MC_TASK), ("gen", GEN, GEN_TASK)):
        data = d / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / f"medusa_trt_{name}.yaml").write_text(task.format(data=data))


def run_lm_eval(a: argparse.Namespace, url: str, model: str, tasks: str, out: Path, tasks_dir: Path) -> Path:
    model_args = f"model={model},base_url={url}/v1/completions,tokenizer={a.engine},tokenizer_backend=huggingface"
    model_args += ",num_concurrent=1,max_retries=1"
    argv = [a.lm_eval, "run", "--model", "local-completions", "--model_args", model_args, "--tasks", tasks]
    argv += ["--include_path", str(tasks_dir), "--output_path", str(out), "--log_samples", "--batch_size", "1"]
    subprocess.run(argv, check=True)
    return next(out.rglob("results_*.json"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, required=True)
    ap.add_argument("--lm-eval", required=True, help="the lm_eval executable (its own venv)")
    a = ap.parse_args()
    a.engine = a.engine.resolve()

    import httpx

    from medusa_trt.bench.server import engine_server

    with tempfile.TemporaryDirectory(prefix="lm-eval-") as tmp, engine_server(a.engine) as url:
        d = Path(tmp)
        write_tasks(d)
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        results = run_lm_eval(a, url, model, "medusa_trt_mc,medusa_trt_gen", d / "on", d)
        doc = json.loads(results.read_text())["results"]
        print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
