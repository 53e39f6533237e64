"""Test certificates made on the fly with `cryptography`: CAs, server and client certificates."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Issued:
    """A PEM certificate and key, and where they were written."""

    cert_pem: bytes
    key_pem: bytes
    cert: Path
    key: Path
    _key: ec.EllipticCurvePrivateKey
    _cert: x509.Certificate


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(out: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.crt").write_bytes(cert_pem)
    (out / f"{stem}.key").write_bytes(key_pem)
    return Issued(cert_pem, key_pem, out / f"{stem}.crt", out / f"{stem}.key", key, cert)


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=2)
    )


def make_ca(out: Path, cn: str) -> Issued:
    """A self-signed CA written to out/<cn>.crt and .key."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    cert = _validity(builder).sign(key, hashes.SHA256())
    return _write(out, cn, cert, key)


def issue(out: Path, ca: Issued, cn: str, client: bool = False) -> Issued:
    """A leaf certificate signed by `ca`: a server one for 127.0.0.1/localhost, or a client one."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca._cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if not client:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = _validity(builder).sign(ca._key, hashes.SHA256())
    return _write(out, cn, cert, key)


@dataclass
class PKI:
    """Two unrelated CAs ("good" and "rogue") with server and client certificates."""

    ca: Issued
    server: Issued
    client: Issued
    rogue_ca: Issued
    rogue_client: Issued
    rogue_server: Issued


def make_pki(out: Path) -> PKI:
    """Everything the TLS tests need, written under `out`."""
    ca = make_ca(out, "vaeserve-test-ca")
    rogue = make_ca(out, "rogue-ca")
    return PKI(
        ca=ca,
        server=issue(out, ca, "vaeserve-server"),
        client=issue(out, ca, "good-client", client=True),
        rogue_ca=rogue,
        rogue_client=issue(out, rogue, "rogue-client", client=True),
        rogue_server=issue(out, rogue, "rogue-server"),
    )
