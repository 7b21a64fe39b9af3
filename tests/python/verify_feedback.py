#!/usr/bin/env python3
"""Verify a vvgate feedback response the way the SpectraStrike producer does.

CONTRACT.md section 8.2, independent of the gateway's Rust code: the response's `data` must be
a list; `signature`, `signed_at` (a non-zero integer), `nonce`, `kid` and `schema_version` must
be present; `signature_algorithm`, if present, must be Ed25519; the nonce must not have been
seen in the last 300 s and `abs(now - signed_at) <= 300`; the kid must be known; and the
Ed25519 signature must verify over

    {tenant_id}|{signed_at}|{nonce}|{schema_version}|{kid}|{json.dumps(data, sort_keys=True,
                                                                      separators=(",", ":"))}

rebuilt from the parsed `data`. The nonce cache lives in a JSON file (nonce -> time seen) so
that successive runs behave like one long-lived producer.

Usage: verify_feedback.py --public-key B64 --kid KID --tenant TENANT [--now SECS]
                          --cache FILE RESPONSE.json
       verify_feedback.py --self-test
Prints "accepted" (exit 0) or "rejected: <reason>" (exit 1).
"""

import argparse
import base64
import binascii
import json
import sys
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

WINDOW = 300


def signed_string(tenant, signed_at, nonce, schema_version, kid, data):
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return f"{tenant}|{signed_at}|{nonce}|{schema_version}|{kid}|{canonical}".encode("utf-8")


def verify(resp, tenant, keys, now, seen):
    """None when accepted, else the reason. `seen` maps nonce -> time it was accepted."""
    if not isinstance(resp, dict):
        return "response is not an object"
    data = resp.get("data")
    if not isinstance(data, list):
        return "data is not a list"
    signature = resp.get("signature")
    signed_at = resp.get("signed_at")
    nonce = resp.get("nonce")
    kid = resp.get("kid")
    schema_version = resp.get("schema_version")
    if not signature or not nonce or not kid or not schema_version:
        return "unsigned or incomplete response"
    if not isinstance(signed_at, int) or isinstance(signed_at, bool) or signed_at == 0:
        return "signed_at is not a non-zero integer"
    algorithm = resp.get("signature_algorithm")
    if algorithm is not None and algorithm != "Ed25519":
        return "unsupported signature algorithm"
    for n, t in list(seen.items()):
        if now - t > WINDOW:
            del seen[n]
    if nonce in seen:
        return "replayed nonce"
    if abs(now - signed_at) > WINDOW:
        return "stale response"
    key = keys.get(kid)
    if key is None:
        return "unknown kid"
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, signed_string(tenant, signed_at, nonce, schema_version, kid, data))
    except (InvalidSignature, ValueError, binascii.Error):
        return "invalid signature"
    seen[nonce] = now
    return None


def self_test():
    """The contract's feedback vectors (CONTRACT.md section 13.1)."""
    private = Ed25519PrivateKey.from_private_bytes(bytes([7] * 32))
    public = private.public_key()
    tenant = "10000000-0000-0000-0000-000000000001"
    msg = signed_string(tenant, 1772107255, "fb-nonce-0002", "feedback.response.v1", "vv-fb-2026q1", [])
    expect = "mrtcteIorUiurbKIS56pk/jdqthBEo/d60VOMedCb2EtnbyyF3S8kGFPS8YvWYsrAGCR8qbTF8l9yhnoNbVxDw=="
    assert base64.b64encode(private.sign(msg)).decode() == expect, "vector signature differs"
    resp = {
        "data": [],
        "signature": expect,
        "kid": "vv-fb-2026q1",
        "signature_algorithm": "Ed25519",
        "signed_at": 1772107255,
        "nonce": "fb-nonce-0002",
        "schema_version": "feedback.response.v1",
    }
    seen = {}
    keys = {"vv-fb-2026q1": public}
    assert verify(resp, tenant, keys, 1772107255, seen) is None
    assert verify(resp, tenant, keys, 1772107256, seen) == "replayed nonce"
    assert verify(resp, tenant, keys, 1772107255 + 301, {}) == "stale response"
    print("self-test passed")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--self-test", action="store_true")
    p.add_argument("--public-key")
    p.add_argument("--kid")
    p.add_argument("--tenant")
    p.add_argument("--now", type=int)
    p.add_argument("--cache")
    p.add_argument("response", nargs="?")
    a = p.parse_args()
    if a.self_test:
        self_test()
        return 0
    if not (a.public_key and a.kid and a.tenant and a.cache and a.response):
        p.print_usage(sys.stderr)
        return 2
    keys = {a.kid: Ed25519PublicKey.from_public_bytes(base64.b64decode(a.public_key, validate=True))}
    try:
        with open(a.cache) as f:
            seen = json.load(f)
    except FileNotFoundError:
        seen = {}
    with open(a.response, "rb") as f:
        resp = json.loads(f.read())
    now = a.now if a.now is not None else int(time.time())
    reason = verify(resp, a.tenant, keys, now, seen)
    with open(a.cache, "w") as f:
        json.dump(seen, f)
    if reason is None:
        print("accepted")
        return 0
    print(f"rejected: {reason}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
