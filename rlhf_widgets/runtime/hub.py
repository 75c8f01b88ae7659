"""The Hugging Face Hub, asked once and quickly: is this id there, and can it be reached at all?

Loading an unknown or unreachable id through `transformers` / `datasets` goes through their HTTP retries with
back-off and a screen of warnings before the error (how long: docs/PERFORMANCE.md, "Other timings"). `probe` asks
the hub one metadata question, without retries, so a stage can fail fast with a clear message — or fall back to a
copy cached by an earlier download.
"""

from __future__ import annotations

from typing import Literal

import huggingface_hub
import huggingface_hub.constants
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.utils import httpx

PROBE_TIMEOUT_S = 2.0
"""seconds one metadata request may take before a hub id is declared unreachable"""

Status = Literal["offline", "found", "missing", "unreachable", "unknown"]


def offline() -> bool:
    """HF_HUB_OFFLINE (or datasets' own switch) is set: nothing may be asked of the hub."""
    import datasets

    return bool(huggingface_hub.constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE)


_KNOWN: dict[tuple[str, str], Status] = {}  # answers that do not change within a session: found / missing


def probe(repo_id: str, repo_type: Literal["model", "dataset"] = "model") -> Status:
    """One metadata request for `repo_id`: "found", "missing" (no such repository, or gated / private),
    "unreachable" (no network), "unknown" (the hub answered with another error, or slowly), or "offline"
    (HF_HUB_OFFLINE is set: not asked). "found" and "missing" are remembered for the process."""
    if offline():
        return "offline"
    if (repo_id, repo_type) in _KNOWN:
        return _KNOWN[repo_id, repo_type]
    status = _ask(repo_id, repo_type)
    if status in ("found", "missing"):
        _KNOWN[repo_id, repo_type] = status
    return status


def _ask(repo_id: str, repo_type: str) -> Status:
    api = huggingface_hub.HfApi()
    info = api.dataset_info if repo_type == "dataset" else api.model_info
    try:
        info(repo_id, timeout=PROBE_TIMEOUT_S)
    except (httpx.ConnectError, httpx.ConnectTimeout):
        return "unreachable"
    except RepositoryNotFoundError:
        return "missing"
    except (HfHubHTTPError, httpx.TimeoutException):
        return "unknown"
    return "found"
