"""The flag plumbing both command lines share: SSOT_* variables, TLS flag groups, TLS errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from interceptors._cli import (
    CLIENT_TLS_FLAGS,
    SERVER_TLS_FLAGS,
    SettingsError,
    add_client_tls_arguments,
    add_env_argument,
    env_name,
)
from interceptors.tls import TlsError, channel_credentials, server_credentials


def test_a_flag_reads_its_variable_and_says_so_in_its_help(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = argparse.ArgumentParser()
    add_env_argument(parser, "--max-size", type=int, default=5, help="largest", default_help=5)
    add_env_argument(parser, "--tls", action="store_true", help="use TLS", note="implied by X")
    assert env_name("--max-size") == "SSOT_MAX_SIZE"
    assert "largest (SSOT_MAX_SIZE, default 5)" in parser.format_help()
    assert "use TLS (SSOT_TLS=1; implied by X)" in parser.format_help()
    assert (parser.parse_args([]).max_size, parser.parse_args([]).tls) == (5, False)

    monkeypatch.setenv("SSOT_MAX_SIZE", "7")
    monkeypatch.setenv("SSOT_TLS", "1")
    parser = argparse.ArgumentParser()
    add_env_argument(parser, "--max-size", type=int, default=5, help="largest")
    add_env_argument(parser, "--tls", action="store_true", help="use TLS")
    ns = parser.parse_args([])
    assert (ns.max_size, ns.tls) == (7, True)
    assert parser.parse_args(["--max-size", "9"]).max_size == 9  # the flag wins


@pytest.mark.parametrize("value", ["", "0", "false"])
def test_a_switch_variable_that_says_no_leaves_it_off(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("SSOT_TLS", value)
    parser = argparse.ArgumentParser()
    add_env_argument(parser, "--tls", action="store_true", help="use TLS")
    assert parser.parse_args([]).tls is False


def test_a_bad_variable_is_reported_by_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSOT_MAX_SIZE", "lots")
    with pytest.raises(SettingsError, match=r"^SSOT_MAX_SIZE must be an integer$"):
        add_env_argument(argparse.ArgumentParser(), "--max-size", type=int, help="largest")


def test_a_required_flag_is_not_required_when_its_variable_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = argparse.ArgumentParser()
    add_env_argument(parser, "--issuer", required=True, help="iss")
    with pytest.raises(SystemExit):
        parser.parse_args([])
    monkeypatch.setenv("SSOT_ISSUER", "https://auth.example")
    parser = argparse.ArgumentParser()
    add_env_argument(parser, "--issuer", required=True, help="iss")
    assert parser.parse_args([]).issuer == "https://auth.example"


def test_the_client_tls_group_names_the_parameters_of_channel_credentials() -> None:
    parser = argparse.ArgumentParser()
    add_client_tls_arguments(parser)
    ns = parser.parse_args(["--ca-cert", "ca.pem", "--client-cert", "c.pem"])
    assert (ns.tls, ns.ca_cert, ns.client_cert, ns.client_key) == (
        False,
        Path("ca.pem"),
        Path("c.pem"),
        None,
    )
    assert set(CLIENT_TLS_FLAGS.values()) <= {a.option_strings[0] for a in parser._actions}


def test_tls_errors_name_the_file_and_its_role_and_no_flag(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(TlsError) as read:
        channel_credentials(ca_cert=missing)
    with pytest.raises(TlsError) as pair:
        channel_credentials(client_cert=missing)
    not_pem = tmp_path / "key.txt"
    not_pem.write_text("not a key")
    with pytest.raises(TlsError) as bad:
        server_credentials(not_pem, not_pem)

    assert str(read.value) == f"cannot read the CA file {missing}: No such file or directory"
    assert str(pair.value) == "give both the client certificate and the client key, or neither"
    assert str(bad.value) == f"the certificate chain {not_pem} is not a PEM file"
    assert not any("--" in str(e.value) for e in (read, pair, bad))
    # A command line names its own flags instead.
    assert read.value.naming(CLIENT_TLS_FLAGS).startswith(f"cannot read --ca-cert {missing}")
    assert pair.value.naming(CLIENT_TLS_FLAGS) == (
        "give both --client-cert and --client-key, or neither"
    )
    assert bad.value.naming(SERVER_TLS_FLAGS) == f"--tls-cert {not_pem} is not a PEM file"
