"""The Python client against a local cluster with mutual TLS and tokens.

Certificates are made at run time (no key is committed)."""

import datetime
import ipaddress
import os
import signal
import subprocess
import time

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ringattn import Client, Layer, RingattnError, SharedRegion
from test_client import reference, rel_err

BIN_DIR = os.environ.get("RINGATTN_BIN_DIR", "build/release/bin")
TOKEN = "trainer-token-0123456789abcdef"
CLUSTER_TOKEN = "cluster-token-0123456789abcdef"
OTHER_TOKEN = "other-token-0123456789abcdefgh"


def _issue(cn, issuer=None, ca=False):
    """A P-256 key and a certificate for cn, signed by issuer (cert, key), else self-signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer[0].subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = (builder
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                         ExtendedKeyUsageOID.CLIENT_AUTH]),
                                  critical=False)
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.DNSName("localhost")]), critical=False))
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    return cert, key


def _write(path, cert, key=None):
    with open(path + ".pem", "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        with open(path + ".key", "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        os.chmod(path + ".key", 0o600)


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = _issue("ringattn test CA", ca=True)
    _write(str(d / "ca"), *ca)
    _write(str(d / "node"), *_issue("ringattn node", ca))
    _write(str(d / "trainer"), *_issue("trainer", ca))
    (d / "tokens").write_text(f"trainer:{TOKEN}\nother:{OTHER_TOKEN}\n")
    (d / "cluster").write_text(CLUSTER_TOKEN + "\n")
    flags = [f"--tls_cert_file={d / 'node.pem'}", f"--tls_key_file={d / 'node.key'}",
             f"--tls_ca_file={d / 'ca.pem'}", f"--auth_token_file={d / 'tokens'}",
             f"--cluster_token_file={d / 'cluster'}"]
    proc = subprocess.Popen([os.path.join(BIN_DIR, "ringattn"), "serve", "--cp=2"] + flags,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 90
    addr = None
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("coordinator at "):
            addr = line.split()[2].rstrip(";")
            break
    assert addr, "the secured local cluster did not come up"
    yield addr, d
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 0


def _client(secured, **kwargs):
    addr, d = secured
    args = dict(tls_ca_file=str(d / "ca.pem"), tls_cert_file=str(d / "trainer.pem"),
                tls_key_file=str(d / "trainer.key"))
    args.update(kwargs)
    return Client(addr, **args)


def test_certificate_and_token_get_results(secured):
    rng = np.random.default_rng(3)
    B, H, Hkv, S, D = 1, 2, 1, 48, 16
    q = rng.uniform(-1, 1, (B, H, S, D)).astype(np.float32)
    k = rng.uniform(-1, 1, (B, Hkv, S, D)).astype(np.float32)
    v = rng.uniform(-1, 1, (B, Hkv, S, D)).astype(np.float32)
    dout = rng.uniform(-1, 1, (B, H, S, D)).astype(np.float32)
    doc = np.ones((B, S), np.int32)
    pad = np.zeros((B, S), np.uint8)
    _, d = secured
    with _client(secured, auth_token_file=str(d / "tokens")) as client:
        fwd = client.forward(q, k, v, Layer(scale=0.25), doc_ids=doc, padding_mask=pad)
        bwd = client.backward(fwd.handle, dout)
        client.release(fwd.handle)
    want = reference(q, k, v, doc, pad, 0, 0.25, dout)
    for got, ref in zip((fwd.out, fwd.lse, bwd.dq, bwd.dk, bwd.dv), want):
        assert rel_err(got, ref) < 1e-5


def test_missing_or_wrong_token_is_unauthenticated(secured):
    for token in (None, "wrong-token-0123456789abcdef", CLUSTER_TOKEN):
        with _client(secured, token=token) as client:
            with pytest.raises(RingattnError) as err:
                client.status()
            want = (grpc.StatusCode.PERMISSION_DENIED if token == CLUSTER_TOKEN
                    else grpc.StatusCode.UNAUTHENTICATED)
            assert err.value.code() == want, err.value.details()


def test_no_client_certificate_no_connection(secured):
    _, d = secured
    with Client(secured[0], tls_ca_file=str(d / "ca.pem"), token=TOKEN) as client:
        with pytest.raises(RingattnError) as err:
            client.status()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_token_needs_tls(secured):
    with pytest.raises(ValueError, match="needs TLS"):
        Client(secured[0], token=TOKEN)


def test_another_clients_region_is_permission_denied(secured):
    """Regions belong to the caller's identity (here its token's name)."""
    rng = np.random.default_rng(4)
    q, k, v = (rng.uniform(-1, 1, (1, 2, 16, 8)).astype(np.float32) for _ in range(3))
    with _client(secured, token=TOKEN) as owner, _client(secured, token=OTHER_TOKEN) as other, \
            SharedRegion(1 << 16) as region:
        name = owner.register_region(region)
        with pytest.raises(RingattnError) as err:
            other.register_region(region)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        with pytest.raises(RingattnError) as err:
            other.unregister_region(name)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert list(other.list_regions()) == []
        other._regions[name] = region  # A client that learnt the name names it anyway.
        shared_q = region.ndarray(q.shape, q.dtype)
        shared_q[...] = q
        with pytest.raises(RingattnError) as err:
            other.forward(shared_q, k, v)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "another client's" in err.value.details()
        with owner.forward(shared_q, k, v) as mine:
            with other.forward(q, k, v) as streamed:
                assert np.array_equal(mine.out, streamed.out)
