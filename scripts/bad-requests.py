#!/usr/bin/env python3
"""Bad requests of the kinds `vvctl bench --bad-percent` does not send, over real mutual TLS
(Python's ssl, an independent client), signed with the producer's key where the check under
test comes after the signature: a tenant the operator is not mapped to, malformed JSON, a body
over the size limit, a malformed HTTP request, missing security headers, a forbidden byte in a
header, and a TLS handshake without a client certificate.

Prints one JSON object: for each kind, the answers counted by status ("handshake_refused"
for the refused handshakes, "closed" when the gateway closed without an answer).

usage: bad-requests.py ADDR PKI_DIR SAMPLE_EVENT_JSON [COUNT_PER_KIND]
       ADDR is host:port of the producer listener; PKI_DIR holds ca.pem, producer.pem,
       producer.key and producer-signing.seed (what `vvgated --dev` writes).
Needs python3-cryptography.
"""

import base64
import hashlib
import json
import socket
import ssl
import sys
import time
import uuid
from collections import Counter, defaultdict

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

IDENTITY = "spectrastrike-producer"
PATH = "/internal/v1/telemetry"
OTHER_TENANT = "20000000-0000-0000-0000-00000000ffff"


def load_signing_key(path):
    data = open(path, "rb").read()
    if data.startswith(b"-----"):
        return serialization.load_pem_private_key(data, password=None)
    return Ed25519PrivateKey.from_private_bytes(data[:32])


def cjson(v):
    return json.dumps(v, sort_keys=True, separators=(",", ":")).encode()


class Target:
    def __init__(self, addr, pki, sample):
        host, port = addr.rsplit(":", 1)
        self.addr = (host, int(port))
        self.key = load_signing_key(f"{pki}/producer-signing.seed")
        pem = open(f"{pki}/producer.pem").read()
        self.pin = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
        self.mtls = ssl.create_default_context(cafile=f"{pki}/ca.pem")
        self.mtls.load_cert_chain(f"{pki}/producer.pem", f"{pki}/producer.key")
        self.mtls.check_hostname = False
        self.anon = ssl.create_default_context(cafile=f"{pki}/ca.pem")
        self.anon.check_hostname = False
        self.sample = json.load(open(sample))

    def connect(self, ctx=None):
        raw = socket.create_connection(self.addr, timeout=120)
        return (ctx or self.mtls).wrap_socket(raw, server_hostname="localhost")

    def event(self, edit=None):
        """A fresh event (timestamp, nonce) as CJSON, after `edit` of its dict."""
        ts, nonce = int(time.time()), str(uuid.uuid4())
        v = json.loads(json.dumps(self.sample))
        v["timestamp"], v["nonce"] = ts, nonce
        v["payload"]["event_id"] = nonce
        v["payload"]["attributes"]["nonce"] = nonce
        if edit:
            edit(v)
        return ts, nonce, cjson(v)

    def request(self, ts, nonce, body, extra=b"", headers=True):
        msg = f"{ts}.{nonce}.".encode() + body
        sig = base64.b64encode(self.key.sign(msg)).decode()
        head = f"POST {PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        if headers:
            head += (
                f"X-Service-Identity: {IDENTITY}\r\nX-Client-Cert-Sha256: {self.pin}\r\n"
                f"X-Telemetry-Timestamp: {ts}\r\nX-Telemetry-Nonce: {nonce}\r\nX-Telemetry-Signature: {sig}\r\n"
            )
        return head.encode() + extra + b"\r\n" + body


def read_response(s):
    """(status, close) of one HTTP response, or (None, True) when the connection closed."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            return None, True
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length, close = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
        if name.strip().lower() == "connection" and value.strip().lower() == "close":
            close = True
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, close


def main():
    addr, pki, sample = sys.argv[1:4]
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    t = Target(addr, pki, sample)
    out = defaultdict(Counter)

    def wrong_tenant(v):
        v["tenant_id"] = OTHER_TENANT
        v["signed_metadata"]["tenant_id"] = OTHER_TENANT

    def bad_byte(req):
        return req.replace(b"Host: localhost", b"Host: local\x01host", 1)

    # Kinds answered on a kept-alive connection: one connection each, reopened if closed.
    keep = {
        "wrong_tenant": lambda: t.request(*t.event(wrong_tenant)),
        "malformed_json": lambda: t.request(int(time.time()), str(uuid.uuid4()), b'{"operator_id": "op-001", '),
        "missing_headers": lambda: t.request(*t.event(), headers=False),
    }
    for kind, make in keep.items():
        s = None
        for _ in range(count):
            if s is None:
                s = t.connect()
            s.sendall(make())
            status, close = read_response(s)
            out[kind][str(status) if status else "closed"] += 1
            if close:
                s.close()
                s = None
        if s is not None:
            s.close()

    # Kinds after which the gateway closes: a new connection each.
    big = 2 * 1024 * 1024
    once = {
        "oversized": lambda: t.request(*t.event())
        .replace(b"Content-Length: ", f"Content-Length: {big}\r\nX-Was: ".encode(), 1)
        + b" " * 65536,
        "malformed_http": lambda: b"GARBAGE / NONSENSE\r\n\x00\x01\r\n\r\n",
        "forbidden_header_byte": lambda: bad_byte(t.request(*t.event())),
    }
    for kind, make in once.items():
        for _ in range(count):
            s = t.connect()
            try:
                s.sendall(make())
            except OSError:
                pass
            try:
                status, _ = read_response(s)
            except OSError:
                status = None
            out[kind][str(status) if status else "closed"] += 1
            s.close()

    for _ in range(count):
        try:
            s = t.connect(t.anon)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _ = read_response(s)
            out["no_client_certificate"][str(status) if status else "handshake_refused"] += 1
            s.close()
        except (ssl.SSLError, OSError):
            out["no_client_certificate"]["handshake_refused"] += 1

    print(json.dumps({k: dict(v) for k, v in out.items()}, sort_keys=True))


if __name__ == "__main__":
    main()
