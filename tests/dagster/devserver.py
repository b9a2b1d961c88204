"""A ``dagster dev`` (webserver and daemon) on loopback for the tests, with a GraphQL client."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[2]
TERMINAL_RUN = {"SUCCESS", "FAILURE", "CANCELED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DagsterDev:
    """``dagster dev -w workspace.yaml`` from the repository root, in its own process group.

    Parameters
    ----------
    home
        DAGSTER_HOME for the session (receives a copy of the repository's dagster.yaml).
    env
        The environment of the server.
    """

    def __init__(self, home: Path, env: dict[str, str]):
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        home.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
        self.env = {**env, "DAGSTER_HOME": str(home)}
        self.log_path = home / "dagster_dev.log"
        self.proc: subprocess.Popen | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 180.0) -> DagsterDev:
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.proc.returncode}:\n{self.log()}")
            if self._locations_loaded():
                return self
            time.sleep(1.0)
        raise TimeoutError(f"dagster dev did not load its code locations in {timeout:.0f} s:\n{self.log()}")

    def stop(self) -> None:
        """Stop the server and everything it started (its process group)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                time.sleep(0.5)
            except subprocess.TimeoutExpired:
                continue
        # Children (code servers, run workers) share the group; make sure none outlive the test.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log(self, tail: int = 6000) -> str:
        return self.log_path.read_text()[-tail:] if self.log_path.exists() else ""

    # ------------------------------------------------------------------ GraphQL
    def graphql(self, query: str, variables: dict[str, Any] | None = None, timeout: float = 60.0) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            out = json.loads(resp.read())
        if out.get("errors"):
            raise RuntimeError(f"GraphQL errors: {out['errors']}")
        return out["data"]

    def _locations_loaded(self) -> bool:
        try:
            data = self.graphql(
                "{ workspaceOrError { ... on Workspace { locationEntries { name "
                "locationOrLoadError { __typename ... on PythonError { message } } } } } }",
                timeout=5,
            )
        except (urllib.error.URLError, ConnectionError, TimeoutError, RuntimeError, OSError):
            return False
        entries = data["workspaceOrError"].get("locationEntries") or []
        errors = [e for e in entries if e["locationOrLoadError"] and e["locationOrLoadError"]["__typename"] == "PythonError"]
        if errors:
            raise RuntimeError(f"code location failed to load: {errors}")
        return len(entries) == 2 and all(
            e["locationOrLoadError"] and e["locationOrLoadError"]["__typename"] == "RepositoryLocation" for e in entries
        )

    def launch_job(self, location: str, job: str) -> str:
        data = self.graphql(
            """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
                 ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
                 ... on RunConfigValidationInvalid { errors { message } } } }""",
            {"p": {"selector": {"repositoryLocationName": location, "repositoryName": "__repository__", "jobName": job}}},
        )["launchRun"]
        assert data["__typename"] == "LaunchRunSuccess", data
        return data["run"]["runId"]

    def run_status(self, run_id: str) -> str:
        return self.graphql("query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id})[
            "runOrError"
        ]["status"]

    def wait_run(self, run_id: str, timeout: float = 240.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.run_status(run_id)
            if status in TERMINAL_RUN:
                return status
            time.sleep(1.0)
        raise TimeoutError(f"run {run_id} still not finished after {timeout:.0f} s:\n{self.log()}")

    def runs(self) -> list[dict[str, Any]]:
        """Every run: id, status, the assets it selected, its tags."""
        data = self.graphql(
            "{ runsOrError { ... on Runs { results { runId status jobName assetSelection { path } tags { key value } } } } }"
        )
        return data["runsOrError"]["results"]

    def stale_status(self, *keys: str) -> dict[str, str]:
        data = self.graphql(
            "query($k: [AssetKeyInput!]) { assetNodes(assetKeys: $k) { assetKey { path } staleStatus } }",
            {"k": [{"path": k.split("/")} for k in keys]},
        )
        return {"/".join(n["assetKey"]["path"]): n["staleStatus"] for n in data["assetNodes"]}

    def launch_job_backfill(self, location: str, job: str, partitions: list[str]) -> tuple[str, list[str]]:
        """A backfill of ``job`` over ``partitions``, its runs submitted at once; (backfill id, run ids)."""
        data = self.graphql(
            """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) { __typename
                 ... on LaunchBackfillSuccess { backfillId launchedRunIds } ... on PythonError { message }
                 ... on PartitionSetNotFoundError { message } } }""",
            {"p": {
                "selector": {
                    "partitionSetName": f"{job}_partition_set",
                    "repositorySelector": {"repositoryLocationName": location, "repositoryName": "__repository__"},
                },
                "partitionNames": partitions,
                "forceSynchronousSubmission": True,
            }},
        )["launchPartitionBackfill"]
        assert data["__typename"] == "LaunchBackfillSuccess", data
        return data["backfillId"], data["launchedRunIds"]

    def launch_assets(self, location: str, assets: list[str]) -> str:
        """Materialize ``assets`` (unpartitioned) in one run; return its id."""
        data = self.graphql(
            """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
                 ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""",
            {"p": {"selector": {
                "repositoryLocationName": location, "repositoryName": "__repository__", "jobName": "__ASSET_JOB",
                "assetSelection": [{"path": a.split("/")} for a in assets],
            }}},
        )["launchRun"]
        assert data["__typename"] == "LaunchRunSuccess", data
        return data["run"]["runId"]
