"""The README's cluster commands on one machine: a head started as `cluster.yaml` starts it
(token authentication, dashboard on the loopback), `ray job submit` of an rPU-VAE run and of
its resume, and a client without the cluster's token refused.

Needs the `cluster` extra (`pip install -e ".[cluster]"`: Ray's dashboard, which serves the
job API); skipped without it. Slow (a smoke rPU-VAE run, a few minutes).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("aiohttp", reason="ray job submit needs the cluster extra (Ray's dashboard)")

from conftest import SMOKE_ON_SQUARES

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_jobs_submitted_with_the_token_run_and_resume_and_others_are_refused(
        squares_npz: Path, tmp_path: Path) -> None:
    # Ray's client reads ~/.ray/auth_token: a home of the test's own leaves the user's alone.
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    # The head's processes run the jobs: rpu-ray must be on their PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    base = {**os.environ, "HOME": str(home), "PATH": path, "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token"}
    base.pop("RAY_AUTH_TOKEN_PATH", None)
    base.pop("RAY_AUTH_TOKEN", None)
    token = tmp_path / "shared" / ".ray_auth_token"
    token.parent.mkdir()
    generated = subprocess.run([RAY, "get-auth-token", "--generate"], env=base,
                               capture_output=True, text=True, check=True)
    token.write_text(generated.stdout.strip())
    head = {**base, "RAY_AUTH_TOKEN_PATH": str(token)}
    dashboard = _free_port()
    subprocess.run([RAY, "start", "--head", f"--port={_free_port()}", "--num-cpus=2",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}"],
                   env=head, capture_output=True, check=True)
    address = f"http://127.0.0.1:{dashboard}"
    out = tmp_path / "runs" / "smoke"
    client_token = home / ".ray" / "auth_token"

    def submit(*command: str, env: dict[str, str] = base) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, "job", "submit", "--address", address, "--", *command],
                              env=env, capture_output=True, text=True, timeout=1200)

    try:
        client_token.unlink(missing_ok=True)  # --generate may leave one there
        refused = submit("echo", "hello")
        assert refused.returncode != 0 and "token" in refused.stderr.lower()
        wrong = submit("echo", "hello", env={**base, "RAY_AUTH_TOKEN": "0" * 64})
        assert wrong.returncode != 0 and "Invalid authentication token" in wrong.stderr
        shutil.copy(token, client_token)  # ray rsync-down of the README, on one machine
        run = submit("rpu-ray", "run", "--data", str(squares_npz), "--address", "auto",
                     "--out", str(out), *SMOKE_ON_SQUARES)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert json.loads((out / "state.json").read_text())["phase"] == "done"
        resumed = submit("rpu-ray", "resume", str(out), "--address", "auto")
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert (out / "final_model.pt").exists() and (out / "report.html").exists()
    finally:
        subprocess.run([RAY, "stop", "--force"], env=head, capture_output=True)
