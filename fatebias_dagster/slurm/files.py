"""The files of a step's task folder, shared by the client and the job (no Dagster imports: the job starts fast)."""

#: The call: ``(function, args, kwargs)``, pickled.
CALL_FILE = "call.pkl"
#: Written by the job when the step starts: its Slurm job id, host and pid (JSON).
STARTED_FILE = "started.json"
#: Written by the job when the step ends: ``("ok", value)`` or ``("error", exception, traceback)``, pickled.
RESULT_FILE = "result.pkl"
