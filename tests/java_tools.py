"""Java-side proof of the keystores: keytool listings and a Java mTLS server."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

JAVA_SOURCE = Path(__file__).parent / "java" / "MtlsServer.java"
_compiled: Path | None = None


def require_java() -> None:
    for tool in ("java", "javac", "keytool"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed: the keystore proofs need Java 17")


def compiled_server() -> Path:
    """Compile MtlsServer.java once per test session; return the class directory."""
    global _compiled
    if _compiled is None:
        require_java()
        out = Path(tempfile.mkdtemp(prefix="mtls-java-"))
        subprocess.run(["javac", "-d", str(out), str(JAVA_SOURCE)], check=True,
                       capture_output=True, timeout=120)
        _compiled = out
    return _compiled


def keytool_list(store: Path, store_type: str, password_file: Path) -> str:
    """``keytool -list -v`` output (the password goes through a file, not argv)."""
    require_java()
    result = subprocess.run(
        ["keytool", "-list", "-v", "-keystore", str(store), "-storetype", store_type,
         "-storepass:file", str(password_file)],
        capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"keytool failed: {result.stdout}{result.stderr}")
    return result.stdout


@contextmanager
def java_mtls_server(keystore: Path, keystore_type: str, truststore: Path,
                     truststore_type: str, password_file: Path) -> Iterator[int]:
    """Run the Java server with client auth required; yield its port."""
    classes = compiled_server()
    proc = subprocess.Popen(
        ["java", "-cp", str(classes), "MtlsServer", str(keystore), keystore_type,
         str(truststore), truststore_type, str(password_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            proc.kill()
            raise AssertionError(f"Java server did not start: {line}{proc.stderr.read()}")
        yield int(line)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def mtls_exchange(port: int, client_cert: Path, client_key: Path, ca_bundle: Path) -> str:
    """Connect with a client certificate, send a line and return the answer.

    Reads from the socket: over TLS 1.3 a rejected client certificate only shows on the
    first read (FIELD-NOTES). Raises ssl.SSLError or ConnectionError if refused.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_bundle))
    context.check_hostname = False
    context.load_cert_chain(str(client_cert), str(client_key))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw) as tls:
        tls.sendall(b"ping\n")
        data = tls.recv(4096)
        if not data:
            raise ConnectionError("server closed the connection without answering")
        return data.decode()
