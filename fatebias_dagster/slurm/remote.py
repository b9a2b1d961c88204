"""What a step's Slurm job runs: ``python -m fatebias_dagster.slurm.remote``.

Opens Dagster Pipes (the bootstrap variables of the job script), records where the step
runs, runs the call the client left in the task folder and leaves its value, or the
exception it raised, beside it. The exit status is 0 when the call returned, 1 when it raised.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

from dagster_pipes import open_dagster_pipes

from fatebias_dagster.slurm.files import CALL_FILE, RESULT_FILE, STARTED_FILE


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _error_payload(exc: BaseException) -> bytes:
    text = "".join(traceback.format_exception(exc))
    try:
        return pickle.dumps(("error", exc, text))
    except Exception:  # an exception that cannot be pickled: its text only
        return pickle.dumps(("error", None, text))


def main() -> int:
    """Run the task of this job's Pipes session; 0 when it returned, 1 when it raised."""
    with open_dagster_pipes() as pipes:
        task, attempt, label = Path(pipes.extras["task"]), Path(pipes.extras["attempt"]), pipes.extras["label"]
        where = {"slurm_job_id": os.environ.get("SLURM_JOB_ID", ""), "host": socket.gethostname(), "pid": str(os.getpid())}
        _write(attempt / STARTED_FILE, json.dumps(where).encode())
        pipes.report_custom_message(where)
        print(f"fatebias: step {label} started in Slurm job {where['slurm_job_id']} on {where['host']}", file=sys.stderr, flush=True)
        ok = True
        payload: bytes
        try:  # unpickling imports the call's module: an environment without it fails here, as the step
            fn, args, kwargs = pickle.loads((task / CALL_FILE).read_bytes())
            value: Any = fn(*args, **kwargs)
            payload = pickle.dumps(("ok", value))
        except Exception as exc:
            ok = False
            pipes.log.error(f"step {label} failed: {type(exc).__name__}: {exc}")
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            payload = _error_payload(exc)
        _write(attempt / RESULT_FILE, payload)
        print(f"fatebias: step {label} {'finished' if ok else 'failed'}", file=sys.stderr, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
