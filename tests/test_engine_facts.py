"""An engine's row in ``engine_facts`` is all the layers below ``engines/`` need: a row added to the table
(an engine with no code anywhere else) is accepted by the profile checks, refused where its facts say,
and planned with its own numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from medusa_trt import engine_facts
from medusa_trt.config.profile import HardwareProfile, parse_profile
from medusa_trt.errors import ProfileError
from medusa_trt.plan import preflight_report, step_time_ms, verify_tokens_for
from medusa_trt.plan.hw import Gpu, can_run

PROFILES = Path(__file__).resolve().parents[1] / "profiles"
H200 = (PROFILES / "hgx-h200-bf16-tp8.yaml").read_text()
# the flagship profile for an engine that drafts a top-1 chain of 3 and reads the vllm section
FAKE_YAML = (
    H200.replace("engine: trtllm", "engine: fake")
    .replace("max_draft_len: 15", "max_draft_len: 3")
    .replace("tree: nvidia_low_latency_15", "tree: [[0], [0, 0], [0, 0, 0]]")
    .split("trtllm_build:")[0]
    + "vllm:\n  enforce_eager: true\n"
)
EIGHT_H200 = [Gpu(i, "NVIDIA H200", 140.4) for i in range(8)]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> engine_facts.EngineFacts:
    """A chain-drafting engine on GPUs only, unquantized, compiling engine files, timed like TensorRT-LLM."""
    row = engine_facts.EngineFacts(
        name="fake",
        title="Fake",
        capabilities=engine_facts.Capabilities(
            drafting=engine_facts.Drafting.CHAIN, sampling=True, logprobs=False, hardware="GPUs", api_key=False
        ),
        devices=("cuda",),
        fp8_devices=(),
        sections=frozenset({engine_facts.VLLM_FLAGS}),
        flags_section=engine_facts.VLLM_FLAGS,
        engine_subdir="engine",
        compiles=True,
        pads_to_max_draft_len=False,
        medusa_per_request=False,
        step=engine_facts.TENSORRT_STEP,
    )
    monkeypatch.setitem(engine_facts.FACTS, row.name, row)
    return row


def _problem(text: str) -> ProfileError:
    with pytest.raises(ProfileError) as e:
        parse_profile(text, "fake.yaml")
    return e.value


def test_an_unknown_engine_is_refused_with_every_known_name() -> None:
    err = _problem(FAKE_YAML)
    assert err.message == "fake.yaml:5: engine: Input should be 'trtllm', 'reference' or 'vllm' (got 'fake')"


def test_a_new_row_is_a_valid_engine_and_its_facts_are_the_rules(fake: engine_facts.EngineFacts) -> None:
    profile = parse_profile(FAKE_YAML, "fake.yaml")
    assert profile.engine == "fake" and profile.tree == [[0], [0, 0], [0, 0, 0]]
    err = _problem(FAKE_YAML.replace("engine: fake", "engine: nope"))
    assert err.message.endswith("Input should be 'trtllm', 'reference', 'vllm' or 'fake' (got 'nope')")

    cpu = _problem(FAKE_YAML.replace("device: cuda", "device: cpu"))
    assert "hardware.device: engine fake needs device cuda" in cpu.message
    assert cpu.hint == "Use engine: vllm for CPU profiles."  # the engine that drafts as it does and runs there
    fp8 = _problem(FAKE_YAML.replace("quantization: none", "quantization: fp8"))
    assert "precision.quantization: the fake engine runs unquantized checkpoints" in fp8.message
    assert fp8.hint == "Use quantization: none, or engine: vllm for FP8."
    flags = _problem(FAKE_YAML + "trtllm_build:\n  gemm_plugin: auto\n")
    assert "trtllm_build: engine fake takes no trtllm-build flags" in flags.message
    assert flags.hint == "Use the vllm section."
    managed = _problem(FAKE_YAML + "  max_model_len: 4\n")
    assert "vllm.max_model_len: 'max_model_len' is set by medusa-trt" in managed.message
    tree = _problem(FAKE_YAML.replace("tree: [[0], [0, 0], [0, 0, 0]]", "tree: [[0], [1], [0, 0]]"))
    assert "engine fake drafts a top-1 chain" in tree.message and tree.hint == "tree: [[0], [0, 0], [0, 0, 0]]"
    other = _problem(H200 + "vllm:\n  enforce_eager: true\n")  # the section is the fake's and vLLM's only
    assert "vllm: a vllm section needs engine: vllm or fake, not trtllm" in other.message


def test_plan_reads_the_new_row(fake: engine_facts.EngineFacts) -> None:
    profile = parse_profile(FAKE_YAML, "fake.yaml")
    report = preflight_report(profile, "llama-3.1-70b", target_here=True, work_dir=Path("/"))
    assert report.tree["drafting"] == "chain" and report.tree["nodes"] == 3
    assert report.disk_gib["engine"] > 0 and report.disk_gib["engine"] == report.disk_gib["trtllm_checkpoint"]
    assert not any(c.name == "medusa_waste" and c.verdict != "pass" for c in report.checks)
    assert verify_tokens_for(profile, 3) == 4  # no padding to max_draft_len

    # timed with the row's constants: TensorRT-LLM's, so the same step as the trtllm profile's
    trtllm = HardwareProfile.model_validate({**profile.model_dump(), "engine": "trtllm", "vllm": {}})
    assert step_time_ms(profile, report.model, 4, 1024) == step_time_ms(trtllm, report.model, 4, 1024)
    eager = HardwareProfile.model_validate({**profile.model_dump(), "engine": "vllm"})
    assert step_time_ms(eager, report.model, 4, 1024) != step_time_ms(profile, report.model, 4, 1024)

    ok, why = can_run(profile, EIGHT_H200)  # no toolkit to look for: the GPUs decide
    assert ok and why == "8x NVIDIA H200 found"
    ok, why = can_run(profile, EIGHT_H200[:4])
    assert not ok and "found 4 matching of 4" in why


def test_every_row_has_its_engine_and_each_engine_reads_its_row() -> None:
    from medusa_trt import engines

    assert set(engines.ENGINES) == set(engine_facts.FACTS)
    for name, row in engine_facts.FACTS.items():
        engine = engines.get(name)
        assert engine.facts is row and engine.name == name, name
        assert (engine.title, engine.capabilities, engine.engine_dir) == (
            row.title,
            row.capabilities,
            row.engine_subdir,
        )
