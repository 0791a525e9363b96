"""The on-disk records (records.py): one header, written atomically, read strictly, old files still read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from medusa_trt import __version__, records
from medusa_trt.errors import CheckpointError

ENGINE_BODY = {"engine": "reference", "checkpoint_dir": "checkpoint", "tree": [[0]], "files": {}}


def test_written_records_carry_one_header_and_read_back(tmp_path: Path) -> None:
    for record, body in (
        (records.ENGINE, ENGINE_BODY),
        (records.CONVERT, {"files": {"config.json": {"size": 2, "hash": "ab"}}}),
        (records.HEADS, {"files": {}}),
        (records.OWNER, {"kind": "engine", "trees": [], "files": ["a"]}),
    ):
        path = records.write(record, tmp_path, body)
        assert path == tmp_path / record.filename
        doc = json.loads(path.read_text())
        assert doc["format"] == record.format and doc["format_version"] == record.version
        assert doc["tool"] == {"name": "medusa-trt", "version": __version__} and doc["created"].endswith("Z")
        assert records.read(record, tmp_path) == doc and {**doc, **body} == doc
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # written under a temporary name, renamed


def test_step_stamps_live_under_the_runner_root(tmp_path: Path) -> None:
    path = records.stamp_path(tmp_path, "convert")
    assert path == tmp_path / ".steps" / "convert.json"
    path.parent.mkdir()
    records.write_at(records.STAMP, path, {"name": "convert", "input_hash": "ff"})
    assert records.read_at(records.STAMP, path)["input_hash"] == "ff"


@pytest.mark.parametrize(
    ("record", "old"),
    [
        (records.ENGINE, {"schema_version": 1, **ENGINE_BODY}),
        (records.HEADS, {"tool": "medusa-trt", "hash_algorithm": "xxh3_128", "files": {}}),
        (records.OWNER, {"tool": "medusa-trt", "kind": "checkpoint", "trees": [], "files": ["config.json"]}),
        (records.STAMP, {"name": "convert", "input_hash": "ff", "outputs": {}}),
        (records.MODEL_REF, {"model": "meta-llama/Llama-3.1-8B-Instruct", "revision": "0" * 40}),
        (records.DEMO_INFO, {"steps": 400, "loss": 1.25}),
        (
            records.CONVERT,
            {"format": "medusa-trt-convert", "format_version": 1, "tool": {"name": "medusa-trt"}, "files": {}},
        ),
    ],
)
def test_files_older_versions_wrote_are_still_read(tmp_path: Path, record: records.Record, old: dict) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    assert records.read_at(record, path) == old


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "unreadable engine manifest (invalid JSON at line 1 column 2"),
        ("[" * 100 + "]" * 100, "unreadable engine manifest (JSON nested deeper than"),
        ("[1, 2]", "not a medusa-trt engine manifest"),
        (
            json.dumps({"format": "medusa-trt-heads", "format_version": 1, "tool": {"name": "medusa-trt"}}),
            "not a medusa-trt engine manifest",
        ),
        (
            json.dumps(
                {"format": "medusa-trt-engine", "format_version": 2, "tool": {"name": "medusa-trt"}, **ENGINE_BODY}
            ),
            "format_version 2 is newer than this medusa-trt reads (1)",
        ),
        (json.dumps({"schema_version": 1, "engine": "reference"}), "engine manifest lacks 'checkpoint_dir'"),
    ],
)
def test_a_bad_record_is_one_line_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    records.ENGINE.path(tmp_path).write_text(content)
    with pytest.raises(CheckpointError) as e:
        records.read(records.ENGINE, tmp_path)
    assert message in e.value.message and str(tmp_path) in e.value.message and "\n" not in e.value.message
    assert e.value.hint and e.value.exit_code == 2
    assert records.peek(records.ENGINE, tmp_path) is None


def test_a_reader_names_the_keys_it_needs(tmp_path: Path) -> None:
    records.write(records.ENGINE, tmp_path, ENGINE_BODY)
    with pytest.raises(CheckpointError, match="lacks 'max_draft_len'"):
        records.read(records.ENGINE, tmp_path, require=("tree", "max_draft_len"))


def test_missing_symlinked_and_oversized_records_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no medusa-trt-heads\.json \(heads manifest\)"):
        records.read(records.HEADS, tmp_path)
    elsewhere = tmp_path / "elsewhere.json"
    records.write_at(records.OWNER, elsewhere, {"kind": "engine", "files": []})
    os.symlink(elsewhere, records.OWNER.path(tmp_path))
    assert records.peek(records.OWNER, tmp_path) is None  # a link is never taken for our ownership list
    with pytest.raises(CheckpointError, match="unreadable ownership list"):
        records.read(records.OWNER, tmp_path)
    big = tmp_path / "big"
    big.mkdir()
    records.CONVERT.path(big).write_bytes(b" " * (records.MAX_BYTES + 1))
    with pytest.raises(CheckpointError, match="unreadable convert manifest"):
        records.read(records.CONVERT, big)


def test_a_writer_cannot_leave_out_what_readers_need(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoint_dir"):
        records.write(records.ENGINE, tmp_path, {"engine": "reference"})
    assert not records.ENGINE.path(tmp_path).exists()


def test_find_manifest_prefers_the_engine_manifest(tmp_path: Path) -> None:
    assert records.find_manifest(tmp_path) is None
    records.write(records.HEADS, tmp_path, {"files": {"a": {"size": 1, "hash": "00"}}})
    found = records.find_manifest(tmp_path)
    assert found is not None and found[0] is records.HEADS
    records.write(records.ENGINE, tmp_path, {**ENGINE_BODY, "files": {"x": {"size": 1}, "y": 3}})
    found = records.find_manifest(tmp_path)
    assert found is not None and found[0] is records.ENGINE
    assert records.file_table(found[1]) == {"x": {"size": 1}}  # entries that are not tables are dropped
