"""`cosyvoice download-model NAME DIR`: fetch an official model directory from a hub, then check it.

NAME is a known model (CosyVoice2-0.5B) or a hub repository as ORG/NAME. Hugging Face is the
default hub (huggingface_hub, which honours HF_ENDPOINT and HF_TOKEN); `--hub modelscope` uses
the modelscope package if it is installed. After the download the directory gets the same
checks as `cosyvoice check-model`, and the exit code is theirs.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Sequence

PROG = "cosyvoice download-model"
HUBS = ("huggingface", "modelscope")
# Known names -> repository per hub (the ids the CosyVoice README gives).
KNOWN_MODELS: dict[str, dict[str, str]] = {
    "CosyVoice2-0.5B": {"huggingface": "FunAudioLLM/CosyVoice2-0.5B", "modelscope": "iic/CosyVoice2-0.5B"},
}
DEFAULT_REVISION = {"huggingface": "main", "modelscope": None}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# The metadata call that resolves the revision must not hang on a black-holed address.
INFO_TIMEOUT_S = 30.0
NO_HUB_HINT = "run download-model on a machine that can reach the hub, or copy a model directory over (docs/models.md)"


class DownloadError(Exception):
    """A download that cannot proceed; the message is the whole one-line explanation."""


def resolve_repo(name: str, hub: str) -> str:
    """The hub repository for a known model name (any case) or an explicit ORG/NAME."""
    for known, repos in KNOWN_MODELS.items():
        if name.lower() == known.lower():
            return repos[hub]
    if "/" not in name:
        raise DownloadError(
            f"unknown model {name!r}: known models are {', '.join(KNOWN_MODELS)}; or give a hub repository as ORG/NAME"
        )
    if not _REPO_ID.match(name):
        raise DownloadError(f"{name!r} is not a hub repository id (expected ORG/NAME)")
    return name


def check_target(target: Path, force: bool) -> None:
    if target.exists() and not target.is_dir():
        raise DownloadError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        # It could hold another model; never mix two models' files silently.
        raise DownloadError(
            f"{target} is not empty; choose a new directory, or pass --force to download into it "
            "(files of an earlier download of the same model are kept when they match)"
        )


def _connection_reason(exc: BaseException) -> str:
    """'[Errno 111] Connection refused' out of requests' nested repr, or the exception type."""
    match = re.search(r"\[Errno -?\d+\] [^'\")\]]+", str(exc))
    return match.group(0).strip() if match else type(exc).__name__


def _total_size(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file() and ".cache" not in path.parts)


def download_huggingface(repo: str, revision: str, target: Path) -> str:
    """Download `repo` at `revision` into `target`; returns the commit it resolved to."""
    import requests
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import disable_progress_bars

    endpoint = constants.ENDPOINT  # HF_ENDPOINT, read by huggingface_hub at import
    if not sys.stderr.isatty():
        disable_progress_bars()  # bars in a log or a test's stderr are noise
    try:
        # Resolve the revision first: snapshot_download itself would, if the hub cannot be
        # reached, quietly return whatever a non-empty DIR already holds.
        info = HfApi().model_info(repo, revision=revision, timeout=INFO_TIMEOUT_S)
    except OfflineModeIsEnabled:
        raise DownloadError(
            "HF_HUB_OFFLINE is set (the images set it for serving); run with HF_HUB_OFFLINE=0 to download"
        ) from None
    except GatedRepoError:
        raise DownloadError(f"repository {repo} on {endpoint} is gated: accept its terms there and set HF_TOKEN") from None
    except RevisionNotFoundError:
        raise DownloadError(f"revision {revision!r} not found in repository {repo} on {endpoint}") from None
    except RepositoryNotFoundError:
        raise DownloadError(f"repository {repo} not found on {endpoint} (a private repository needs HF_TOKEN)") from None
    except HfHubHTTPError as exc:
        raise DownloadError(f"{endpoint} answered HTTP {_status(exc)} for {repo}; try again later") from None
    except requests.RequestException as exc:
        raise DownloadError(f"cannot reach {endpoint} ({_connection_reason(exc)}); {NO_HUB_HINT}") from None
    if not info.sha:
        raise DownloadError(f"{endpoint} gave no commit for {repo} at revision {revision}")
    resume = "rerun with --force to resume"
    try:
        target.mkdir(parents=True, exist_ok=True)
        snapshot_download(repo, revision=info.sha, local_dir=target)
    except LocalEntryNotFoundError as exc:  # a file's metadata request lost the connection
        reason = _connection_reason(exc.__cause__ or exc)
        raise DownloadError(f"lost the connection to {endpoint} while downloading ({reason}); {resume}") from None
    except EntryNotFoundError:
        raise DownloadError(f"{endpoint} lists a file of {repo} that it then does not serve; {resume}") from None
    except HfHubHTTPError as exc:
        raise DownloadError(f"{endpoint} answered HTTP {_status(exc)} while downloading {repo}; {resume}") from None
    except requests.RequestException as exc:  # dropped mid-file, timeouts
        reason = _connection_reason(exc)
        raise DownloadError(f"lost the connection to {endpoint} while downloading ({reason}); {resume}") from None
    except OSError as exc:  # after the requests errors: those are OSErrors too
        raise DownloadError(f"cannot write the model to {target}: {exc.strerror or exc}") from None
    return info.sha


def _status(exc: Exception) -> int | str:
    response = getattr(exc, "response", None)
    return response.status_code if response is not None else "?"


def download_modelscope(repo: str, revision: str | None, target: Path) -> None:
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError:
        raise DownloadError(
            "--hub modelscope needs the modelscope package, which is not installed (pip install modelscope)"
        ) from None
    import requests

    target.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(repo, revision=revision, local_dir=str(target))
    except TypeError as exc:
        if "local_dir" in str(exc):
            raise DownloadError(
                "this modelscope is too old to download into a directory; pip install -U modelscope"
            ) from None
        raise
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise DownloadError(f"cannot reach ModelScope ({_connection_reason(exc)}); {NO_HUB_HINT}") from None
    except Exception as exc:  # noqa: BLE001 - modelscope's own error types vary between versions
        detail = " ".join(str(exc).split())[:200]
        raise DownloadError(f"ModelScope could not download {repo}: {type(exc).__name__}: {detail}") from None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("name", metavar="NAME", help=f"{', '.join(KNOWN_MODELS)} or a hub repository ORG/NAME")
    parser.add_argument("model_dir", metavar="DIR", help="where to put the model directory (new or empty)")
    parser.add_argument("--hub", choices=HUBS, default="huggingface", help="which hub to download from")
    parser.add_argument("--revision", default=None,
                        help="branch, tag or commit (default: main on Hugging Face, the latest on ModelScope)")
    parser.add_argument("--force", action="store_true", help="download into a directory that is not empty")
    args = parser.parse_args(argv)
    target = Path(args.model_dir).expanduser()
    revision = args.revision or DEFAULT_REVISION[args.hub]
    try:
        repo = resolve_repo(args.name, args.hub)
        check_target(target, args.force)
        print(f"downloading {repo} ({revision or 'latest'}) from {args.hub} into {target}", flush=True)
        if args.hub == "huggingface":
            commit = download_huggingface(repo, revision, target)
            where = f"at commit {commit[:12]}"
        else:
            download_modelscope(repo, revision, target)
            where = "from ModelScope"
    except DownloadError as exc:
        raise SystemExit(f"{PROG}: {exc}") from None
    except KeyboardInterrupt:
        raise SystemExit(f"{PROG}: interrupted; rerun with --force to resume into {target}") from None
    from services.cli.check_model import human_size, run_check

    print(f"downloaded {repo} {where}: {human_size(_total_size(target))} in {target}", flush=True)
    code = run_check(str(target), as_json=False, prog=PROG, summary_only=True)
    if code:
        raise SystemExit(code)
