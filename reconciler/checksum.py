"""A migration's checksum: SHA-256 of its text, blind to line-ending style and a BOM.

Why: the checksum rule ("a migration edited after it was applied stops the fleet")
must catch edits, not checkouts. The same committed file arrives with CRLF line endings
on a host with ``core.autocrlf=true``, or with a UTF-8 byte-order mark from some
editors; those are the same migration, and refusing the fleet over them only teaches
people to ignore the refusal. The rule is the one Flyway uses for its checksums (lines
read without their terminators, a leading BOM dropped — flywaydb.org, "Checksums" /
``ChecksumCalculator``): here the text is made canonical — a leading UTF-8 BOM
removed, every CRLF and lone CR turned into LF — and hashed with SHA-256.

The reconciler also *runs* that canonical text (``migrations.load``), so a CRLF checkout
creates exactly the same schema text in ``sqlite_master`` as an LF one: ignoring the
difference in the checksum is safe because the difference never reaches a tenant.

Compatibility: releases before this one recorded SHA-256 of the raw bytes. A recorded
value is accepted when it equals the canonical checksum, the raw bytes' checksum, or
the raw checksum of the same text in any of the four renderings (LF or CRLF, with or
without a BOM) — so a fleet whose registry was written by an older release is not
refused after upgrading, whichever way its files were checked out then or now.
"""

from __future__ import annotations

import hashlib

BOM = b"\xef\xbb\xbf"


def canonical(data: bytes) -> bytes:
    """``data`` without a leading UTF-8 BOM, with CRLF and lone CR turned into LF."""
    return data.removeprefix(BOM).replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def of(data: bytes) -> str:
    """The checksum recorded for a migration file's bytes: hex SHA-256 of ``canonical``."""
    return hashlib.sha256(canonical(data)).hexdigest()


def accepted(data: bytes) -> frozenset[str]:
    """Every recorded value that means "this file, as applied": the canonical checksum,
    and the raw-bytes checksums older releases recorded for it (see the module doc)."""
    text = canonical(data)
    crlf = text.replace(b"\n", b"\r\n")
    return frozenset(hashlib.sha256(d).hexdigest()
                     for d in (text, crlf, BOM + text, BOM + crlf, data))
