"""Writing result files atomically: a reader (or a resumed run) sees the old file or the
complete new one, never a partial write.

Workdirs may be bucket URLs (`gs://bucket/run`): orbax and TensorBoard's writer handle
them through their own file systems, and the files written here go through
`tf.io.gfile`. An object store has no rename, but an object appears only once its upload
is complete, which gives the same guarantee.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from typing import IO, Any

import numpy as np

def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether `path` names a file system by scheme (gs://, s3://, ...), not a local path."""
    return "://" in os.fspath(path)


def absolute(path: str | os.PathLike[str]) -> str:
    """A local path made absolute; a URL as it is."""
    path = os.fspath(path)
    return path if is_url(path) else os.path.abspath(path)


def makedirs(path: str | os.PathLike[str]) -> None:
    """`mkdir -p` for local paths and bucket URLs."""
    if is_url(path):
        import tensorflow as tf

        tf.io.gfile.makedirs(os.fspath(path))
    else:
        os.makedirs(path, exist_ok=True)


def size(path: str | os.PathLike[str]) -> int:
    """A file's size in bytes, local or in a bucket."""
    if is_url(path):
        import tensorflow as tf

        return int(tf.io.gfile.stat(os.fspath(path)).length)
    return os.path.getsize(path)


@contextlib.contextmanager
def _write_object(path: str, mode: str) -> Iterator[IO[Any]]:
    """Buffers the body in memory and uploads it in one piece when it succeeds."""
    import tensorflow as tf

    buffer = io.StringIO() if mode == "w" else io.BytesIO()
    yield buffer
    tf.io.gfile.makedirs(os.path.dirname(path))
    # Written beside it and renamed over it (a copy on object stores, which creates the
    # object in one piece): some file systems append when GFile opens an existing file.
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with tf.io.gfile.GFile(tmp, mode) as f:
        f.write(buffer.getvalue())
    tf.io.gfile.rename(tmp, path, overwrite=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Opens a temporary file next to `path`; on success renames it onto `path`.

    The temporary file is in the same directory so that `os.replace` is an
    atomic rename on the same filesystem: readers see either the old file or
    the complete new one, never a partial write. If the body raises, the
    temporary file is removed and `path` is left untouched. Parent
    directories are created as needed. A bucket URL is written in one upload
    when the body succeeds (see the module docstring).

    Args:
      path: destination file.
      mode: "w" (text, UTF-8) or "wb" (binary).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}.")
    path = os.fspath(path)
    if is_url(path):
        with _write_object(path, mode) as f:
            yield f
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    # os.open with 0o666 lets the umask decide the final permissions, as for a
    # normally created file (tempfile.mkstemp would leave it 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            # Without fsync a power loss after the rename can leave an empty file.
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _json_default(obj: Any) -> Any:
    """`json.dump` hook for values the stdlib encoder does not know."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        # Covers np.float32/np.int64/np.bool_ etc.
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    """Writes `obj` as JSON to `path` atomically (temp file + `os.replace`).

    NumPy scalars and arrays are converted to Python numbers and lists. NaN and
    inf are written as the (non-standard but Python-readable) `NaN`/`Infinity`.
    On any error, including an unserializable value, `path` keeps its previous
    contents and no temporary file is left behind.
    """
    # Serialize fully before touching the filesystem so an encoding error
    # never even creates the temp file.
    text = json.dumps(obj, indent=indent, default=_json_default)
    with atomic_write(path, "w") as f:
        f.write(text)
        f.write("\n")


def write_scores_csv(path: str, final: np.ndarray, classes: np.ndarray, is_anomaly: np.ndarray,
                     by_scorer: Mapping[str, np.ndarray], per_image: Mapping[str, np.ndarray],
                     names: list[str], paths: np.ndarray | None = None) -> None:
    """One row per test image: index (and file path for folder datasets), source class,
    anomaly label, final score, each scorer's score and every per-scale score (written
    atomically)."""
    from mscad_jax.scoring.spec import PER_SCALE_SCORERS

    per_scale = [f"{prefix}/{n}" for prefix in PER_SCALE_SCORERS for n in names if f"{prefix}/{n}" in per_image]
    columns = {"index": np.arange(len(final)), **({} if paths is None else {"path": paths}),
               "class": classes, "is_anomaly": is_anomaly,
               "score": final, **by_scorer, **{k: per_image[k] for k in per_scale}}
    write_csv_columns(path, columns)


def write_csv_columns(path: str, columns: Mapping[str, Any]) -> None:
    """A CSV with one column per entry (equal lengths), floats to 9 significant digits,
    written atomically."""
    with atomic_write(path) as f:
        out = csv.writer(f)
        out.writerow(columns)
        for row in zip(*columns.values()):
            out.writerow([f"{v:.9g}" if isinstance(v, (float, np.floating)) else v for v in row])
