"""Files that appear whole or not at all.

Every result file is written to a hidden temporary name beside it and renamed over the target
(``os.replace`` is atomic on one file system), so a run killed mid-write, or a disk that fills
up, never leaves a half-written ``metrics.json``, ``steps.csv`` or checkpoint that a rerun would
take for complete: the target keeps its previous version (or stays absent) and the temporary
file is removed.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Callable


class DiskFull(OSError):
    """No space was left while writing a result file; nothing half-written was kept."""


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise DiskFull(errno.ENOSPC, f"no space left on the device while writing {path}; "
                           "the file was not written (any earlier version is kept)") from exc
        raise


def write_json(obj: dict, path: Path) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, default=float) + "\n"))


def write_csv(frame, path: Path) -> None:
    write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))
