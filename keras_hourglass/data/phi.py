"""Salted hashing of patient identifiers (no TensorFlow).

Raw patient identifiers (PatientID, PatientName, BirthDate, AccessionNumber,
the annotation table's patient_id and study_id) never leave the ingest
step: every artifact (TFRecords, manifest.json, rejects.csv, logs) carries
only the salted hashes made here.

The hash is HMAC-SHA256 keyed by the salt, with a domain prefix so a
patient id and a study id with the same text hash differently, truncated
to 16 hex digits (64 bits). Whoever holds the salt can test guesses of an
id against a hash; the salt is recorded in manifest.json (so splits are
reproducible), therefore treat manifest.json as you would a key file.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Iterable

HASH_HEX_DIGITS = 16


def new_salt() -> str:
    """Returns: a fresh random salt (32 hex digits)."""
    return secrets.token_hex(16)


def salted_hash(value: str, salt: str, domain: str = "id") -> str:
    """Hashes one identifier.

    Args:
        value: the raw identifier (stripped of surrounding whitespace).
        salt: the dataset salt.
        domain: namespace, e.g. "patient", "study", "image".

    Returns:
        16 lowercase hex digits.
    """
    message = f"{domain}:{str(value).strip()}".encode("utf-8")
    return hmac.new(salt.encode("utf-8"), message, hashlib.sha256).hexdigest()[:HASH_HEX_DIGITS]


def unit_interval(value: str, salt: str, domain: str = "split") -> float:
    """Maps an identifier to a uniform number in [0, 1) through its salted hash.

    Args:
        value: the identifier.
        salt: the dataset salt.
        domain: namespace of the draw.

    Returns:
        A float in [0, 1), stable for a (value, salt, domain).
    """
    digest = hmac.new(salt.encode("utf-8"), f"{domain}:{str(value).strip()}".encode("utf-8"),
                      hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def redact(text: str, secrets_: Iterable[str], salt: str) -> str:
    """Replaces every occurrence of the given raw identifiers in a text by their hash.

    Used on reject reasons and image paths written to rejects.csv, since
    paths such as CBIS-DDSM's ``Mass-Training_P_00001_LEFT_CC`` embed the
    patient id. Matching is case-insensitive; values shorter than 3
    characters are ignored (they would match everywhere).

    Args:
        text: the text to clean.
        secrets_: raw identifiers that must not appear.
        salt: the dataset salt.

    Returns:
        The text with each identifier replaced by ``<id:HASH>``.
    """
    values = sorted({str(v).strip() for v in secrets_ if v is not None and len(str(v).strip()) >= 3},
                    key=len, reverse=True)
    for value in values:
        token = f"<id:{salted_hash(value, salt, 'redacted')}>"
        text = re.sub(re.escape(value), token, text, flags=re.IGNORECASE)
    return text
