"""The certificate the API serves off-loopback addresses with.

Configured (``[api] tls_cert`` and ``tls_key``), or else a self-signed pair that
Sendense makes once in ``STATE_DIR/api-tls/`` (key 0600 in a 0700 directory) and
keeps: a client pins it by the SHA-256 fingerprint ``sendense api status``
prints (and the daemon logs).
"""

from __future__ import annotations

import ipaddress
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine.errors import ConfigError
from engine.private import make_private_dir, write_private

TLS_DIR = "api-tls"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
#: a self-signed certificate is valid this long
SELF_SIGNED_DAYS = 3650


def fingerprint(cert_path: Path) -> str:
    """SHA-256 of the certificate (DER), as colon-separated hex pairs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"the API's TLS certificate {cert_path} cannot be read: {exc}",
            hint="[api] tls_cert must name a PEM certificate",
        ) from None
    return ":".join(f"{byte:02X}" for byte in cert.fingerprint(hashes.SHA256()))


def self_signed_pair(state_dir: Path, hosts: list[str]) -> tuple[Path, Path]:
    """The state directory's self-signed certificate and key, made on first use for
    ``hosts`` (names or addresses, plus this machine's name)."""
    directory = Path(state_dir) / TLS_DIR
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    make_private_dir(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, socket.gethostname(), "localhost", "127.0.0.1", "::1"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"sendense {socket.gethostname()}")]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
