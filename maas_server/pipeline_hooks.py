"""Python hooks of a pipeline model: ``pre.py`` and ``post.py`` in the version folder, for what
declared steps do not cover. They run *trusted code* inside the server process, so they are off
unless the server is started with ``--allow-model-code``; a version folder holding one while
they are off fails to load, saying so.

``pre.py`` defines ``preprocess(items)``: the request's texts (``str``) or images (``bytes``) of
one batch, as a list, to the model's input tensors (a dict of arrays, one row per item).
``post.py`` defines ``postprocess(outputs, inputs)``: the model's outputs and the inputs it ran
on (dicts of arrays) to one array, one row per item: the embeddings of an embedding model, the
scores of every class of a classification model (top-k and labels are then applied).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .runtime import ModelLoadError

__all__ = ["HOOK_FILES", "Hooks", "load_hooks"]

HOOK_FILES = ("pre.py", "post.py")

Array = np.ndarray[Any, Any]
PreHook = Callable[[list[Any]], dict[str, Array]]
PostHook = Callable[[dict[str, Array], dict[str, Array]], Array]


@dataclass(frozen=True)
class Hooks:
    """The hooks of one version (either may be absent)."""

    pre: PreHook | None = None
    post: PostHook | None = None


def _function(path: Path, module_name: str, function: str) -> Callable[..., Any]:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {path.name}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ModelLoadError(f"{path.name} failed to import: {type(exc).__name__}: {exc}") from None
    found = getattr(module, function, None)
    if not callable(found):
        raise ModelLoadError(f"{path.name} defines no function {function}()")
    sys.modules.pop(module_name, None)
    return found  # type: ignore[no-any-return]


def load_hooks(version_dir: Path, model_name: str, version: int, allowed: bool) -> Hooks:
    """The hooks of a version folder; :class:`ModelLoadError` when it has some and they are not
    allowed, or when one does not import."""
    present = [name for name in HOOK_FILES if (version_dir / name).is_file()]
    if not present:
        return Hooks()
    if not allowed:
        raise ModelLoadError(
            f"the version folder holds Python hooks ({', '.join(present)}), which run as code "
            "inside the server; start the server with --allow-model-code to run them "
            "(trusted models only)"
        )
    tag = f"maas_hook_{model_name}_{version}".replace(".", "_").replace("-", "_")
    pre = post = None
    if "pre.py" in present:
        pre = _function(version_dir / "pre.py", f"{tag}_pre", "preprocess")
    if "post.py" in present:
        post = _function(version_dir / "post.py", f"{tag}_post", "postprocess")
    return Hooks(pre, post)
