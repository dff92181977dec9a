"""One JSON helper: values of a run (tensors, paths, dataclasses, tuples) as plain JSON types.

Every file a run writes goes through :func:`plain`, so a value is recorded the same way in
config.json, result.json and the similarity files, and reading a file never unpickles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._atomic import atomic_open


def plain(v: Any) -> Any:
    """``v`` as JSON types: dicts (string keys), lists, numbers, strings, booleans, None.

    Tensors become lists, paths strings, objects with ``to_dict()`` their dict; anything else
    its ``repr`` (recorded for a reader, never loaded back as an object)."""
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, Path):
        return str(v)
    if hasattr(v, "tolist") and callable(v.tolist):  # torch.Tensor, numpy arrays and scalars
        return plain(v.tolist())
    if hasattr(v, "to_dict") and callable(v.to_dict):
        return plain(v.to_dict())
    return repr(v)


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON, atomically (a temp file in the same folder, then rename)."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(plain(obj), f, indent=2)
