"""The command-line clients against a TLS gateway that checks API keys: `cosyvoice synth`,
`speakers` and `health` as real processes, `--tls-ca` and `--api-key` (or their environment
variables), and the one line each refusal prints."""

from __future__ import annotations

import pytest

from tests.cli.cli_runner import Run, assert_error, assert_ok, cosyvoice
from tests.gateway.voice_helpers import shorten_speech
from tests.hardening.certificates import Pki, make_pki
from tests.stack import running_stack

FULL_KEY = "cli-full-key-0123456789"
SYNTH_KEY = "cli-synth-key-0123456789"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def stack(tiny_model_dir, tmp_path, pki):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{FULL_KEY}\n{SYNTH_KEY} synthesize\n")
    async with running_stack(tiny_model_dir, api_keys_file=str(keys), tls_cert=str(pki.server_cert),
                             tls_key=str(pki.server_key)) as stack:
        shorten_speech(stack, 2)
        yield stack


def only_line(run: Run) -> str:
    assert run.code == 1, run
    [line] = run.err.splitlines()
    return line


async def test_synth_with_tls_ca_and_api_key(stack, pki, tmp_path, monkeypatch):
    out = tmp_path / "out.wav"
    tls = ["--address", stack.address, "--tls-ca", str(pki.ca)]
    assert_ok(await cosyvoice("synth", "Hello.", "-o", str(out), "--seed", "1", *tls, "--api-key", SYNTH_KEY))
    assert out.stat().st_size > 44
    assert_error(await cosyvoice("synth", "Hello.", "-o", str(tmp_path / "no.wav"), *tls),
                 "cosyvoice synth: UNAUTHENTICATED: missing API key: send `authorization: Bearer <key>` "
                 "(--api-key or COSYVOICE_API_KEY)")
    assert_error(await cosyvoice("synth", "Hello.", "-o", str(tmp_path / "no.wav"), *tls, "--api-key", "wrong"),
                 "cosyvoice synth: UNAUTHENTICATED: unknown API key (--api-key or COSYVOICE_API_KEY)")
    assert not (tmp_path / "no.wav").exists()
    # The environment variables, as a shell session or a container would set them.
    monkeypatch.setenv("COSYVOICE_API_KEY", SYNTH_KEY)
    monkeypatch.setenv("COSYVOICE_TLS_CA", str(pki.ca))
    assert_ok(await cosyvoice("synth", "Hello.", "-o", str(tmp_path / "env.wav"), "--address", stack.address))


async def test_a_tls_gateway_needs_a_ca_the_client_trusts(stack, pki, tmp_path):
    line = only_line(await cosyvoice("synth", "Hello.", "-o", str(tmp_path / "x.wav"), "--address", stack.address,
                                     "--tls-ca", str(pki.rogue_ca), "--api-key", FULL_KEY))
    assert line.startswith("cosyvoice synth: ") and "UNAVAILABLE" in line
    assert f"cannot reach the gateway at {stack.address} over TLS " \
           "(a TLS port? a certificate --tls-ca signed, for this host?)" in line
    missing = str(tmp_path / "missing-ca.pem")
    assert_error(await cosyvoice("synth", "Hello.", "-o", str(tmp_path / "x.wav"), "--address", stack.address,
                                 "--tls-ca", missing),
                 f"cosyvoice synth: --tls-ca: cannot read {missing!r} (No such file or directory)")
    assert_error(await cosyvoice("speakers", "list", "--address", stack.address, "--tls-ca", str(pki.ca),
                                 "--tls-cert", str(pki.client_cert)),
                 "cosyvoice speakers: --tls-cert is set but --tls-key is not: a client certificate needs both")


async def test_speakers_scopes_from_the_command_line(stack, pki):
    tls = ["--address", stack.address, "--tls-ca", str(pki.ca)]
    table = assert_ok(await cosyvoice("speakers", "list", *tls, "--api-key", SYNTH_KEY))
    assert table.splitlines()[0].split() == ["NAME", "KIND", "TOKENS", "SECONDS", "TRANSCRIPT"]
    assert_error(await cosyvoice("speakers", "rm", "alice", *tls, "--api-key", SYNTH_KEY),
                 "cosyvoice speakers: PERMISSION_DENIED: this API key (scope synthesize) may not call "
                 "cosyvoice.v1.Speakers/DeleteSpeaker; it needs a full-access key")
    assert_error(await cosyvoice("speakers", "rm", "alice", *tls, "--api-key", FULL_KEY),
                 "cosyvoice speakers: NOT_FOUND: name: 'alice' is not a registered speaker")


async def test_health_over_tls_needs_no_key(stack, pki, tmp_path):
    ok = assert_ok(await cosyvoice("health", stack.address, "--tls-ca", str(pki.ca)))
    assert ok.strip() == f"{stack.address} SERVING"
    assert_error(await cosyvoice("health", stack.address, "--tls-ca", str(pki.server_key)),
                 f"cosyvoice health: --tls-ca: {str(pki.server_key)!r} is not a PEM file with a certificate "
                 "(no -----BEGIN ...CERTIFICATE----- block)")
    assert_error(await cosyvoice("health", stack.address, "--timeout", "2"),  # plaintext to a TLS port
                 f"cosyvoice health: {stack.address} is not reachable (UNAVAILABLE)")
