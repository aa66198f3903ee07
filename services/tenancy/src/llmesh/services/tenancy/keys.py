"""API key secrets: generation, parsing and salted hashing.

A key reads `llmesh_<key_id>_<secret>`. The key id in it makes authentication one primary-key
lookup; only a salted HMAC-SHA256 of the secret is stored. No slow KDF (bcrypt, scrypt, argon2):
those protect low-entropy passwords against guessing, while these secrets are 256 random bits,
beyond brute force at any hash speed; a slow KDF would only add milliseconds of CPU to every
request on the mesh's critical path. The per-key salt keeps equal secrets (never expected) from
sharing a hash and defeats precomputed tables.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from llmesh.kit.errors import Unauthenticated

PREFIX = "llmesh_"
SECRET_BYTES = 32
SALT_BYTES = 16
# token_urlsafe(32) is 43 characters; the key id is k_ + 16 hex.
_KEY_FORMAT = re.compile(r"^llmesh_(k_[0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
MAX_KEY_CHARS = 128


@dataclass(frozen=True, slots=True)
class StoredSecret:
    salt_hex: str
    hash_hex: str


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def format_key(key_id: str, secret: str) -> str:
    return f"{PREFIX}{key_id}_{secret}"


def parse_key(api_key: str) -> tuple[str, str]:
    """(key_id, secret) of a well-formed key. Error messages never repeat the key."""
    if not api_key:
        raise Unauthenticated("missing API key", field="api_key")
    if len(api_key) > MAX_KEY_CHARS:
        raise Unauthenticated("malformed API key: too long", field="api_key")
    match = _KEY_FORMAT.match(api_key)
    if match is None:
        raise Unauthenticated("malformed API key: expected llmesh_<key id>_<secret>", field="api_key")
    return match.group(1), match.group(2)


def _digest(salt: bytes, secret: str) -> bytes:
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


def hash_secret(secret: str) -> StoredSecret:
    salt = secrets.token_bytes(SALT_BYTES)
    return StoredSecret(salt.hex(), _digest(salt, secret).hex())


def verify_secret(secret: str, stored: StoredSecret) -> bool:
    expected = bytes.fromhex(stored.hash_hex)
    return hmac.compare_digest(_digest(bytes.fromhex(stored.salt_hex), secret), expected)


# Compared against when the key id is unknown, so that case costs the same as a wrong secret.
DECOY = StoredSecret("00" * SALT_BYTES, "00" * 32)
