"""Files for a pair with every protection on (``pair_bench.pair_secure``): a CA,
one certificate for 127.0.0.1 (both brokers and the client), an auth file with
one token, a pair secret. Made with ``cryptography``, like the tests' certs."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pairq.security.auth import hash_token

TOKEN = "bench-token-" + "x" * 24


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make(directory: Path) -> tuple[list[str], dict[str, str]]:
    """(broker flags, Producer/Consumer keyword arguments) for a secure pair."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("bench-ca"))
        .issuer_name(_name("bench-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("bench"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = {
        n: str(directory / n) for n in ("ca.pem", "cert.pem", "key.pem", "auth.toml", "secret")
    }
    Path(paths["ca.pem"]).write_bytes(ca.public_bytes(pem))
    Path(paths["cert.pem"]).write_bytes(cert.public_bytes(pem))
    Path(paths["key.pem"]).write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    Path(paths["auth.toml"]).write_text(
        f'[[principal]]\nname = "bench"\ntoken_sha256 = "{hash_token(TOKEN)}"\n'
        'publish = ["*"]\nsubscribe = ["*"]\nadmin = ["*"]\n'
    )
    Path(paths["secret"]).write_text(os.urandom(32).hex())
    flags = [
        "--tls-cert", paths["cert.pem"],
        "--tls-key", paths["key.pem"],
        "--tls-ca", paths["ca.pem"],
        "--tls-require-client-cert",
        "--auth-file", paths["auth.toml"],
        "--pair-secret-file", paths["secret"],
    ]  # fmt: skip
    client = {
        "token": TOKEN,
        "tls_cert": paths["cert.pem"],
        "tls_key": paths["key.pem"],
        "tls_ca": paths["ca.pem"],
    }
    return flags, client
