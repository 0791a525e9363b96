"""`convert` outputs beside the ranks: manifest hashes and sizes, tokenizer files, hub sources pinned to a commit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xxhash

from medusa_trt import records
from medusa_trt.checkpoint import convert_checkpoint
from medusa_trt.cli import run
from tests.helpers.standins import SHA, fake_hub_cache


def test_manifest_hashes_every_file(tmp_path: Path, tiny_llama: Path, tiny_heads: Path) -> None:
    out = tmp_path / "runs" / "a" / "ckpt"  # missing parents are created once validation passes
    res = convert_checkpoint(tiny_llama, out, medusa=tiny_heads, tp=2, workers=2, progress=False)
    man = records.read(records.CONVERT, out)
    assert man["hash_algorithm"] == "xxh3_128" == res.hash_algorithm
    on_disk = {p.name for p in out.iterdir()} - {
        records.CONVERT.filename,
        records.OWNER.filename,
    }  # the manifest and the ownership list
    assert set(man["files"]) == on_disk == set(res.files)
    assert {
        "config.json",
        "rank0.safetensors",
        "rank1.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= on_disk
    for name, entry in man["files"].items():
        data = (out / name).read_bytes()
        assert entry["size"] == len(data)
        assert entry["hash"] == xxhash.xxh3_128(data).hexdigest(), name
    assert man["bytes_written"] == sum(e["size"] for e in man["files"].values()) == res.bytes_written
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (tiny_llama / name).read_bytes()
    assert man["sources"]["model"]["path"] == str(tiny_llama.resolve())
    assert man["sources"]["medusa"]["format"] == "fasterdecoding"
    assert man["options"] == {
        "tp": 2,
        "pp": 1,
        "dtype": "float32",
        "num_medusa_heads": 3,
        "num_medusa_layers": 1,
        "max_draft_len": 63,
    }


def test_hub_repo_from_offline_cache(
    tmp_path: Path,
    tiny_llama: Path,
    tiny_heads: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import huggingface_hub.constants as hc

    cache = tmp_path / "hf" / "hub"
    fake_hub_cache(cache, "acme/tiny-llama", tiny_llama)
    fake_hub_cache(cache, "acme/tiny-heads", tiny_heads)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    out = tmp_path / "ckpt"
    code = run(
        [
            "convert",
            "--model",
            "acme/tiny-llama",
            "--medusa",
            "acme/tiny-heads",
            "--output",
            str(out),
            "--tp",
            "2",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)  # one JSON document on stdout
    model = doc["sources"]["model"]
    assert (model["repo_id"], model["revision"], model["commit"]) == ("acme/tiny-llama", "main", SHA)
    assert doc["sources"]["medusa"]["commit"] == SHA
    assert records.read(records.CONVERT, out)["sources"] == doc["sources"]
    assert doc["config"]["architecture"] == "MedusaForCausalLM"
    assert doc["warnings"] == []  # tiny_heads config.json agrees with its tensors
