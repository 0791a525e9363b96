"""Where checkpoints come from: a local directory, or a Hugging Face repo fetched at a pinned commit.

Repo ids go through ``huggingface_hub.snapshot_download`` with allow_patterns (weights, index,
configs, tokenizer files only). The commit is read from the snapshot path (``snapshots/<sha>``),
which is the resolved revision both online and with ``HF_HUB_OFFLINE=1``. ``HF_HOME`` is honoured
by huggingface_hub itself.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medusa_trt.errors import CheckpointError

logger = logging.getLogger(__name__)

MODEL_PATTERNS = [
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "hf_quant_config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.json",
    "chat_template.jinja",
]
HEADS_PATTERNS = ["config.json", "medusa_lm_head.safetensors", "medusa_lm_head.pt"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ResolvedSource:
    """A checkpoint on local disk, with where it came from."""

    given: str  # what the user gave
    path: Path
    repo_id: str | None = None
    revision: str | None = None  # as asked (branch, tag or sha)
    commit: str | None = None  # resolved sha (hub sources only)

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.given,  # the key convert manifests have always had
            "path": str(self.path),
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
        }


def resolve_source(given: str | Path, *, kind: str, revision: str | None = None) -> ResolvedSource:
    """A local directory as is; a repo id fetched from the hub (kind: 'model' or 'heads')."""
    path = Path(given).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(
                f"{kind} source {given}: not a directory",
                hint="Pass the directory that holds config.json and the weights.",
            )
        return ResolvedSource(str(given), path.resolve())
    text = str(given)
    if not _REPO_ID.match(text) or text.startswith((".", "/", "~")):
        raise CheckpointError(
            f"{kind} source {given}: no such directory",
            hint="Pass an existing local directory or a Hugging Face repo id (owner/name).",
        )
    return _fetch(text, kind=kind, revision=revision)


def _fetch(repo_id: str, *, kind: str, revision: str | None) -> ResolvedSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = MODEL_PATTERNS if kind == "model" else HEADS_PATTERNS
    logger.debug("fetching %s %s@%s (files %s)", kind, repo_id, revision or "main", patterns)
    try:
        local = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except GatedRepoError as e:
        raise CheckpointError(
            f"{repo_id}: the repository is gated and this account has no access",
            hint=f"Accept the license on https://huggingface.co/{repo_id}, then `hf auth login` (or set HF_TOKEN).",
        ) from e
    except RevisionNotFoundError as e:
        raise CheckpointError(
            f"{repo_id}: revision '{revision}' not found",
            hint="Pass an existing branch, tag or commit with --revision.",
        ) from e
    except RepositoryNotFoundError as e:
        raise CheckpointError(
            f"{repo_id}: repository not found (or private)",
            hint="Check the repo id; for a private repo run `hf auth login` or set HF_TOKEN.",
        ) from e
    except LocalEntryNotFoundError as e:
        raise CheckpointError(
            f"{repo_id}: not in the local Hugging Face cache and downloads are off",
            hint="Unset HF_HUB_OFFLINE (or download it first), or pass a local directory.",
        ) from e
    except OSError as e:  # network failures surface as OSError subclasses
        raise CheckpointError(
            f"{repo_id}: download failed ({e.__class__.__name__}: {e})".splitlines()[0],
            hint="Check the network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the cache.",
        ) from e
    return ResolvedSource(repo_id, local, repo_id=repo_id, revision=revision or "main", commit=snapshot_commit(local))


def snapshot_commit(path: Path) -> str | None:
    """The commit of a hub snapshot: the cache keeps each one in ``snapshots/<sha>``."""
    name = path.resolve().name
    return name if re.fullmatch(r"[0-9a-f]{40}", name) else None
