"""Generate the blocking client from the asynchronous one, as httpcore does.

    python scripts/unasync.py          # rewrite maas_client/_sync/*.py from maas_client/_async/
    python scripts/unasync.py --check  # exit 1 (and say which) if a generated file is stale

Each module of ``maas_client/_async`` is rewritten token by token (``async def`` -> ``def``,
``await x`` -> ``x``, ``async for`` -> ``for``, and the names below), formatted with ruff, and
written under ``maas_client/_sync`` with a header saying where it came from. Only I/O lives in
``_async``; everything else is shared, so the two clients cannot drift apart.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

# This script is named like the package it uses: import the package, not the script.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE]

import tokenize_rt  # noqa: E402
import unasync  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "maas_client" / "_async"
TARGET = ROOT / "maas_client" / "_sync"

REPLACEMENTS = {
    # classes
    "AsyncClient": "Client",
    "AsyncPipeline": "Pipeline",
    "AsyncServer": "Server",
    "AsyncModels": "Models",
    "AsyncDatasets": "Datasets",
    "AsyncClientAdapter": "ClientAdapter",
    "AsyncBaseTransport": "BaseTransport",
    "AsyncByteStream": "SyncByteStream",
    "AsyncHTTPTransport": "HTTPTransport",
    "AsyncLeanTransport": "LeanTransport",
    "AsyncLocalTransport": "LocalTransport",
    "AsyncStreamStart": "StreamStart",
    "AsyncGenerationStream": "GenerationStream",
    "AsyncStream": "Stream",
    "AsyncOpener": "Opener",
    "AsyncCall": "Call",
    "OpensOnFirstUse": "OpensAtOnce",
    "AsyncRetrying": "Retrying",
    "AsyncRetryLoop": "RetryLoop",
    # functions and methods
    "aclose": "close",
    "aread": "read",
    "aiter_bytes": "iter_bytes",
    "anext": "next",
    "handle_async_request": "handle_request",
    "async_retrying": "sync_retrying",
    "async_sleep": "sleep",
    "asyncio": "time",  # asyncio.sleep -> time.sleep: use asyncio for nothing else in _async
    "async_cancel_probes": "cancel_probes",
    "start_async_probes": "start_probes",
    "async_infer_batched": "infer_batched",
    "async_to_raw_response_wrapper": "to_raw_response_wrapper",
    "async_prepare_upload": "prepare_upload",
    "AsyncAttempt": "SyncAttempt",
}

HEADER = "# generated from maas_client/_async/{name} by scripts/unasync.py; do not edit\n"


def generate(path: Path) -> str:
    """The blocking module generated from the asynchronous module at ``path``."""
    rule = unasync.Rule("/_async/", "/_sync/", additional_replacements=REPLACEMENTS)
    tokens = tokenize_rt.src_to_tokens(path.read_text(encoding="utf-8"))
    text = tokenize_rt.tokens_to_src(list(rule._unasync_tokens(tokens)))
    text = HEADER.format(name=path.name) + text
    fixed = subprocess.run(  # imports sorted again, and what the renaming left unused
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--quiet",
            "--fix-only",
            "--exit-zero",
            "--select=I,F401",
            f"--stdin-filename=maas_client/_sync/{path.name}",
            "-",
        ],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    text = fixed.stdout
    formatted = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "format",
            "--quiet",
            f"--stdin-filename=maas_client/_sync/{path.name}",
            "-",
        ],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return formatted.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args(argv)
    expected = {TARGET / path.name: generate(path) for path in sorted(SOURCE.glob("*.py"))}
    stale = [p for p, text in expected.items() if not p.exists() or p.read_text("utf-8") != text]
    extra = [p for p in TARGET.glob("*.py") if p not in expected]

    def shown(path: Path) -> str:
        return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)

    if args.check:
        for path in stale:
            print(f"stale: {shown(path)} (run python scripts/unasync.py)")
        for path in extra:
            print(f"not generated from maas_client/_async: {shown(path)}")
        return 1 if stale or extra else 0
    TARGET.mkdir(exist_ok=True)
    for path in stale:
        path.write_text(expected[path], encoding="utf-8")
        print(f"wrote {shown(path)}")
    for path in extra:
        path.unlink()
        print(f"removed {shown(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
