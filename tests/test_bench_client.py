"""The real client against real loopback servers: token accounting, failures, JSON schema, plot, CLI."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from medusa_trt.bench import BenchConfig, BenchReport, run_benchmark
from medusa_trt.bench.plot import DPI, FIGSIZE_IN, write_plot
from medusa_trt.bench.server import probe
from medusa_trt.cli import run as cli_run
from medusa_trt.errors import ServerError
from medusa_trt.outputs import is_our_png
from medusa_trt.supervise import free_port
from tests.helpers import HANG_S
from tests.helpers.loopback import LoopbackOptions, loopback_server


@pytest.fixture(scope="module")
def medusa_like() -> Any:
    """3 tokens per chunk with Medusa, 1 without; every 4th completion request fails with 500."""
    with loopback_server(LoopbackOptions(tokens_per_chunk=3, fail_every=4)) as (url, srv):
        yield url, srv


@pytest.fixture(scope="module")
def compared(medusa_like: Any) -> BenchReport:
    url, _ = medusa_like
    return run_benchmark(
        BenchConfig(url=url, num_prompts=6, concurrency=(1, 2), max_tokens=10, compare_no_medusa=True, warmup=0, seed=5)
    )


def test_tokens_come_from_usage_not_chunks(medusa_like: Any) -> None:
    url, srv = medusa_like
    before = srv.completion_requests
    rep = run_benchmark(BenchConfig(url=url, num_prompts=8, concurrency=(2,), max_tokens=10, warmup=0))
    run = rep.run(2)
    assert run is not None and srv.completion_requests - before == 8
    ok = [r for r in run["requests"] if r["ok"]]
    # 10 tokens: a prefill chunk of 1, then steps of 3 -> 4 chunks, 3 steps; counting chunks would say 4
    assert all(r["output_tokens"] == 10 and r["num_chunks"] == 4 and r["decoding_steps"] == 3 for r in ok)
    assert run["tokens_per_step"] == pytest.approx(3.0)
    assert run["total_output_tokens"] == 10 * len(ok)
    # every 4th request of the server fails: exactly 2 of these 8 consecutive requests
    assert run["failed"] == 2 and run["errors"] == {"http_5xx": 2} and run["completed"] == 6
    assert "injected failure" in run["first_error"]


def test_compare_mode_interleaves_and_checks_outputs(compared: BenchReport) -> None:
    for c in (1, 2):
        on, off, cmp_ = compared.run(c, True), compared.run(c, False), compared.comparisons[(1, 2).index(c)]
        assert on is not None and off is not None and cmp_["concurrency"] == c
        assert on["num_requests"] == off["num_requests"] == 6
        assert {r["index"] for r in on["requests"]} == set(range(6)) == {r["index"] for r in off["requests"]}
        assert off["tokens_per_step"] == pytest.approx(1.0)  # plain decoding: exactly one token per step
        assert on["tokens_per_step"] == pytest.approx(3.0)
        assert cmp_["identical_outputs"] is True and cmp_["mismatches"] == [] and cmp_["pairs"] >= 1
        expect = cmp_["mean_output_tokens_per_s_per_user_medusa"] / cmp_["mean_output_tokens_per_s_per_user_no_medusa"]
        assert cmp_["speedup"] == pytest.approx(expect)


def test_compare_sends_each_prompt_with_medusa_on_and_off_interleaved() -> None:
    with loopback_server(LoopbackOptions(tokens_per_chunk=2)) as (url, srv):
        run_benchmark(
            BenchConfig(
                url=url, num_prompts=4, max_tokens=4, warmup=1, compare_no_medusa=True, endpoint="completions", seed=3
            )
        )
    flags = [b.get("medusa") for b in srv.bodies]
    assert all(b.get("ignore_eos") is True for b in srv.bodies)  # by default: fixed output lengths
    # warm-up on and off, then per prompt both modes back to back, the order alternating per prompt
    assert flags == [True, False, *[True, False, False, True, True, False, False, True]]
    measured = [b["prompt"] for b in srv.bodies[2:]]
    assert all(measured[i] == measured[i + 1] for i in range(0, 8, 2))  # a pair is the same prompt
    assert len(set(measured)) > 1


def test_json_schema_keys_and_types(compared: BenchReport, tmp_path: Path) -> None:
    doc = json.loads(compared.write(tmp_path / "r.json").read_text())
    assert json.loads(json.dumps(compared.to_json())) == doc  # to_json() is plain JSON already
    assert (
        doc["schema_version"] == 1 and doc["tool"]["name"] == "medusa-trt" and isinstance(doc["tool"]["version"], str)
    )
    assert doc["server"]["model"] == "loopback" and doc["server"]["version"] == {"version": "loopback-1"}
    assert isinstance(doc["command"], list) and doc["was_cancelled"] is False and doc["start_time"]
    assert doc["config"]["input_len_unit"] == "tokens" and doc["config"]["seed"] == 5
    num = (int, float)
    for run in doc["runs"]:
        for m in ("ttft", "tpot", "itl", "e2el"):
            for stat in ("mean", "median", "std", "p50", "p90", "p99"):
                assert isinstance(run[f"{stat}_{m}_ms"], num), (stat, m)
        for k in ("request_throughput", "output_throughput", "total_token_throughput", "duration", "tokens_per_step"):
            assert isinstance(run[k], num) and run[k] > 0, k
        assert run["output_throughput"] == pytest.approx(run["total_output_tokens"] / run["duration"])
        assert run["request_throughput"] == pytest.approx(run["completed"] / run["duration"])
        for k in ("completed", "failed", "total_input_tokens", "total_output_tokens", "concurrency"):
            assert isinstance(run[k], int), k
        assert set(run["output_tokens_per_s_per_user"]) == {"mean", "median", "std", "p50", "p90", "p99"}
        assert isinstance(run["errors"], dict) and isinstance(run["requests"], list)
        assert isinstance(run["medusa"], bool)
    assert [c["concurrency"] for c in doc["comparisons"]] == [1, 2]
    assert not list(tmp_path.glob(".r.json*"))  # the temp file was renamed away
    ref = tmp_path / "ref.txt"
    ref.write_text("")
    assert (tmp_path / "r.json").stat().st_mode == ref.stat().st_mode  # the usual mode, not mkstemp's 0600


def test_plot_is_a_real_png(compared: BenchReport, tmp_path: Path) -> None:
    out = write_plot(compared, tmp_path / "p.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    assert (w, h) == (int(FIGSIZE_IN[0] * DPI), int(FIGSIZE_IN[1] * DPI))
    assert len(data) > 5000  # two axes with lines and labels, not an empty canvas
    ref = tmp_path / "ref.txt"
    ref.write_text("")
    assert out.stat().st_mode == ref.stat().st_mode and not list(tmp_path.glob(".p*"))


def test_down_server_fails_before_any_request() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ServerError, match="cannot reach"):
        probe(url)
    with pytest.raises(ServerError, match="cannot reach"):  # the probe's error: no prompt was sent, none retried
        run_benchmark(BenchConfig(url=url, num_prompts=4))


def test_timeouts_are_counted() -> None:
    with loopback_server(LoopbackOptions(chunk_delay_s=0.3)) as (url, _):
        rep = run_benchmark(
            BenchConfig(url=url, num_prompts=2, concurrency=(2,), max_tokens=5, warmup=0, request_timeout_s=0.2)
        )
    run = rep.run(2)
    assert run is not None and run["errors"] == {"timeout": 2} and run["completed"] == 0


def test_cli_end_to_end(medusa_like: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = medusa_like
    rc = cli_run(
        [
            "bench",
            "--url",
            url,
            "--num-prompts",
            "4",
            "--concurrency",
            "1,2",
            "--max-tokens",
            "6",
            "--warmup",
            "0",
            "--json-out",
            str(tmp_path / "o.json"),
            "--plot",
            str(tmp_path / "o.png"),
            "--json",
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    doc = json.loads(out.out)
    assert [r["concurrency"] for r in doc["runs"]] == [1, 2]
    assert json.loads((tmp_path / "o.json").read_text())["runs"][0]["num_requests"] == 4
    assert (tmp_path / "o.png").stat().st_size > 0 and "http_5xx" in out.err
    assert is_our_png(tmp_path / "o.png")  # so a rerun may replace it, and nothing else


def test_cli_down_server_is_one_line_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_run(["bench", "--url", f"http://127.0.0.1:{free_port()}", "--num-prompts", "2"])
    err = capsys.readouterr().err
    assert rc == 1 and "error: cannot reach" in err and "Traceback" not in err


def test_cli_every_request_failing_reports_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with loopback_server(LoopbackOptions(fail_every=1)) as (url, _):
        rc = cli_run(["bench", "--url", url, "--num-prompts", "3", "--max-tokens", "4", "--warmup", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and "every request failed" in err and "0 / 3" in err and "Traceback" not in err


def test_malformed_streams_are_counted() -> None:
    with loopback_server(LoopbackOptions(bad_stream_every=2)) as (url, _):
        rep = run_benchmark(BenchConfig(url=url, num_prompts=4, max_tokens=3, warmup=0))
    run = rep.run(1)
    assert run is not None and run["errors"] == {"malformed_stream": 2} and run["completed"] == 2
    assert "invalid JSON" in run["first_error"]


def test_compare_detects_diverging_outputs() -> None:
    with loopback_server(LoopbackOptions(tokens_per_chunk=2, diverge_with_medusa=True)) as (url, _):
        rep = run_benchmark(BenchConfig(url=url, num_prompts=3, max_tokens=4, warmup=0, compare_no_medusa=True))
    cmp_ = rep.comparisons[0]
    assert cmp_["identical_outputs"] is False and sorted(m["index"] for m in cmp_["mismatches"]) == [0, 1, 2]
    assert cmp_["mismatches"][0]["medusa"] != cmp_["mismatches"][0]["no_medusa"]


def test_ctrl_c_prints_partial_results_and_exits_130() -> None:
    import signal
    import subprocess
    import sys

    with loopback_server(LoopbackOptions(chunk_delay_s=0.1)) as (url, srv):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "medusa_trt",
                "bench",
                "--url",
                url,
                "--num-prompts",
                "50",
                "--max-tokens",
                "4",
                "--warmup",
                "0",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + HANG_S
        while srv.completion_requests < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 130, (proc.returncode, out.decode()[-500:], err.decode())
    doc = json.loads(out)
    assert doc["was_cancelled"] is True and "interrupted" in err.decode()
    run = doc["runs"][0]
    assert 3 <= run["completed"] < 50 and run["failed"] == 0


def test_ctrl_c_in_the_first_level_skips_the_later_ones() -> None:
    """A Ctrl-C (SIGINT to this process, in the main thread) during the first of two concurrency levels:
    the report is cancelled, holds the partial first level, and no row for the second one."""
    import os
    import signal

    seen: list[Any] = []

    def on_request(rec: Any) -> None:
        seen.append(rec)
        if len(seen) == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with loopback_server(LoopbackOptions(chunk_delay_s=0.02)) as (url, _):
        cfg = BenchConfig(url=url, num_prompts=40, concurrency=(1, 2), max_tokens=3, warmup=0)
        rep = run_benchmark(cfg, on_request=on_request)
    assert rep.was_cancelled and [r["concurrency"] for r in rep.runs] == [1]
    assert 3 <= rep.runs[0]["completed"] < 40
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


def test_no_ignore_eos_leaves_the_field_out() -> None:
    """--no-ignore-eos: for servers that refuse fields they do not know."""
    with loopback_server(LoopbackOptions(tokens_per_chunk=2)) as (url, srv):
        run_benchmark(BenchConfig(url=url, num_prompts=2, max_tokens=4, warmup=0, ignore_eos=False))
    assert srv.bodies and all("ignore_eos" not in b for b in srv.bodies)
