"""Files: atomic writes, table readers, the run folder's layout and its manifest.

Everything fatebias writes goes through :mod:`fatebias_core.io.files` (a temporary name,
then a rename), and every file name of a run folder is owned by
:mod:`fatebias_core.io.layout`.
"""

from fatebias_core.io.files import (
    PathLike,
    atomic_path,
    json_ready,
    read_csv,
    save_npz,
    write_bytes,
    write_csv,
    write_json,
    write_text,
)

__all__ = ["PathLike", "atomic_path", "json_ready", "read_csv", "save_npz", "write_bytes", "write_csv", "write_json", "write_text"]
