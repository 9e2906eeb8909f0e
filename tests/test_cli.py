"""The command line: ssot-auth and ssot-resource, in-process and as real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from auth_server.__main__ import main as auth_main
from helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent


def run(argv: list[str], stdin: str = "") -> int:
    return run_cli(auth_main, argv, stdin)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_users_add_list_disable(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run(
            ["users", "add", "alice", "--password-stdin", "--scope", "resource.read"],
            "s3cret-password\n",
        )
        == 0
    )
    assert run(["users", "list", "--json"]) == 0
    rows = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")
    ]
    assert [(r["username"], r["scopes"], r["disabled"]) for r in rows] == [
        ("alice", ["resource.read"], False)
    ]
    assert run(["users", "disable", "alice"]) == 0
    assert run(["users", "list", "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[-1])["disabled"] is True
    assert "s3cret-password" not in out


def test_adding_a_user_twice_fails_with_one_line(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["users", "add", "bob", "--password-stdin"], "password-one\n") == 0
    capsys.readouterr()
    assert run(["users", "add", "bob", "--password-stdin"], "password-two\n") == 1
    err = capsys.readouterr().err
    assert err.startswith("ssot-auth: error:") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and "password-two" not in err


def test_password_is_never_read_from_a_pipe_without_the_flag(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["users", "add", "bob"], "password\n") == 1
    assert "--password-stdin" in capsys.readouterr().err


def test_unknown_flag_is_a_usage_error(env: Path) -> None:
    with pytest.raises(SystemExit) as info:
        run(["serve", "--no-such-flag"])
    assert info.value.code == 2


def test_unusable_data_dir_fails_cleanly(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert run(["users", "list", "--data-dir", str(blocker / "sub")]) == 1
    err = capsys.readouterr().err
    assert "--data-dir" in err and len(err.strip().splitlines()) == 1


def test_unreadable_passphrase_file_fails_cleanly(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(
        [
            "serve",
            "--issuer",
            "http://127.0.0.1:8080",
            "--audience",
            "a",
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--key-passphrase-file",
            str(tmp_path / "missing"),
        ]
    )
    assert code == 1
    assert "--key-passphrase-file" in capsys.readouterr().err


def test_port_in_use_fails_cleanly(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = run(
            [
                "serve",
                "--issuer",
                "http://127.0.0.1:8080",
                "--audience",
                "a",
                "--grpc",
                f"127.0.0.1:{port}",
                "--http",
                "127.0.0.1:0",
            ]
        )
    assert code == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err


def test_wrong_passphrase_refuses_to_start(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["keys", "rotate"]) == 0  # creates the first key under the right passphrase
    monkeypatch.setenv("SSOT_KEY_PASSPHRASE", "a-different-passphrase-000")
    code = run(
        [
            "serve",
            "--issuer",
            "http://127.0.0.1:8080",
            "--audience",
            "a",
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "passphrase" in err and "a-different" not in err


def test_keys_rotate_and_list(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["keys", "rotate"]) == 0  # no key yet: the first one signs at once
    assert run(["keys", "rotate"]) == 0  # pre-published for 2 x the default max-age
    capsys.readouterr()
    assert run(["keys", "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["state"] for r in rows] == ["next", "current"]
    assert all(r["algorithm"] == "RS256" for r in rows)
    assert rows[0]["activates_at"] == pytest.approx(rows[0]["created_at"] + 600)
    assert rows[1]["deactivated_at"] == rows[0]["activates_at"]


@pytest.fixture
def up_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    ports = {"grpc": free_port(), "http": free_port(), "resource": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSOT_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "auth_server",
            "up",
            "--data-dir",
            str(tmp_path / "data"),
            "--grpc",
            f"127.0.0.1:{ports['grpc']}",
            "--http",
            f"127.0.0.1:{ports['http']}",
            "--resource-grpc",
            f"127.0.0.1:{ports['resource']}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C" in line:
            break
    else:
        proc.kill()
    info = {
        "stdout": "".join(lines),
        "env_pythonpath": str(ROOT),
        **{k: str(v) for k, v in ports.items()},
    }
    try:
        yield proc, info
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.mark.slow
def test_up_runs_the_whole_system_and_stops_on_ctrl_c(
    up_process: tuple[subprocess.Popen[str], dict[str, str]], tmp_path: Path
) -> None:
    proc, info = up_process
    assert "ssot-auth is up" in info["stdout"], info["stdout"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSOT_")}
    env["PYTHONPATH"] = info["env_pythonpath"]
    password = (tmp_path / "data" / "demo-password").read_text()
    login = subprocess.run(
        [
            sys.executable,
            "-m",
            "auth_server",
            "login",
            "demo",
            "--password-stdin",
            "--target",
            f"127.0.0.1:{info['grpc']}",
        ],
        input=password,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert login.returncode == 0, login.stderr
    token_file = tmp_path / "token.json"
    token_file.write_text(login.stdout)
    get = subprocess.run(
        [
            sys.executable,
            "-m",
            "resource_server",
            "get",
            "--token-file",
            str(token_file),
            "--target",
            f"127.0.0.1:{info['resource']}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert get.returncode == 0, get.stderr
    reply = json.loads(get.stdout)
    assert reply["message"] == "This is a protected resource"
    assert reply["user"]["username"] == "demo"

    # Service to service: the demo client's own key (0600 in the data dir) signs the assertion.
    key_file = tmp_path / "data" / "demo-service-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert f"ssot-auth token --client demo-service --key-file {key_file}" in info["stdout"]
    service = subprocess.run(
        [
            sys.executable,
            "-m",
            "auth_server",
            "token",
            "--client",
            "demo-service",
            "--key-file",
            str(key_file),
            "--issuer",
            "http://127.0.0.1:8080",
            "--target",
            f"127.0.0.1:{info['grpc']}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert service.returncode == 0, service.stderr
    token_file.write_text(service.stdout)
    get = subprocess.run(
        [
            sys.executable,
            "-m",
            "resource_server",
            "get",
            "--token-file",
            str(token_file),
            "--target",
            f"127.0.0.1:{info['resource']}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert get.returncode == 0, get.stderr
    assert json.loads(get.stdout)["message"] == "This is a protected resource"

    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "resource_server",
            "get",
            "--target",
            f"127.0.0.1:{info['resource']}",
        ],
        capture_output=True,
        text=True,
        env={**env, "SSOT_TOKEN": "garbage"},
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip() == "ssot-resource: error: UNAUTHENTICATED: malformed token"

    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    assert proc.stderr is not None
    logs = proc.stderr.read()
    assert "Traceback" not in logs
    assert password.strip() not in logs
    assert json.loads(login.stdout)["access_token"] not in logs
