"""REST API keys: who may read, request views or administer, and for which cameras.

    fchm cloud key create ─► ApiKeyStore.create ─► "fchm_<id>_<secret>" (printed once)
                                                 └► api_keys row: id, name, sha256(key),
                                                    scopes, cameras, created, expiry
    request "Authorization: Bearer fchm_<id>_<secret>" ─► ApiKeyStore.verify
        ─► row by id ─► compare_digest(sha256(key), row) ─► expired? revoked? ─► ApiKey

Only the sha256 of a key is stored. A slow password hash (bcrypt, argon2) is not
needed: it defends low-entropy, human-chosen passwords against offline guessing,
while these keys carry 256 random bits, beyond brute force at any hash speed; a
fast hash also keeps a check per request cheap, so bad keys cannot burn CPU.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from cloud.store.migrations import migrate
from cloud.store.schema import api_keys
from codec.wire import CAMERA_ID

PREFIX = "fchm"
SCOPES = ("read", "view", "admin")
# A scope grants itself and the ones it implies: requesting a view is useless without
# reading the frame it names and polling the job, and admin may do everything.
IMPLIED = {"read": {"read"}, "view": {"view", "read"}, "admin": {"admin", "view", "read"}}


class KeyRefused(Exception):
    """A presented key the API must answer 401 to; the message says why."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: tuple[str, ...]
    cameras: tuple[str, ...]
    """cameras this key may see; empty: every camera"""
    created_ns: int
    expires_ns: int | None = None
    revoked_ns: int | None = None

    def grants(self, scope: str) -> bool:
        return any(scope in IMPLIED[s] for s in self.scopes)

    def allows(self, camera_id: str) -> bool:
        return not self.cameras or camera_id in self.cameras

    @property
    def camera_filter(self) -> tuple[str, ...] | None:
        """The cameras a listing must be limited to, or None for all."""
        return self.cameras or None

    def state(self, now_ns: int) -> str:
        if self.revoked_ns is not None:
            return "revoked"
        if self.expires_ns is not None and now_ns >= self.expires_ns:
            return "expired"
        return "active"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_key_fields(
    name: str, scopes: Iterable[str], cameras: Iterable[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Scopes and cameras, deduplicated and in a fixed order; ValueError names a bad one."""
    if not name or len(name) > 128:
        raise ValueError(f"key name {name!r} must be 1 to 128 characters")
    scopes = tuple(dict.fromkeys(scopes))
    if not scopes:
        raise ValueError(f"a key needs at least one scope of {', '.join(SCOPES)}")
    for scope in scopes:
        if scope not in SCOPES:
            raise ValueError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
    cameras = tuple(sorted(set(cameras)))
    if cameras and "admin" in scopes:
        raise ValueError("an admin key sees every camera: drop the cameras or the admin scope")
    for camera in cameras:
        if not CAMERA_ID.match(camera):
            raise ValueError(f"camera id {camera!r} must match {CAMERA_ID.pattern}")
    return scopes, cameras


class ApiKeyStore:
    """The api_keys table over the cloud's database (the FrameStore's engine or its own)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # The CLI may run before the cloud ever started on this database.
        migrate(engine)

    def create(
        self,
        name: str,
        scopes: Iterable[str],
        cameras: Iterable[str] = (),
        expires_ns: int | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key: its row and the key itself, which is stored nowhere."""
        scope_list, camera_list = check_key_fields(name, scopes, cameras)
        key_id = secrets.token_hex(6)
        key = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(key_id, name, scope_list, camera_list, time.time_ns(), expires_ns)
        with self.engine.begin() as conn:
            conn.execute(
                insert(api_keys).values(
                    id=record.id,
                    name=record.name,
                    key_sha256=hash_key(key),
                    scopes=list(record.scopes),
                    cameras=list(record.cameras),
                    created_ns=record.created_ns,
                    expires_ns=record.expires_ns,
                )
            )
        return record, key

    def list(self) -> list[ApiKey]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.created_ns))
            return [_record(row._mapping) for row in rows]

    def get(self, key_id: str) -> ApiKey | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        return None if row is None else _record(row._mapping)

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key (kept, so the list shows who had access); LookupError if unknown."""
        with self.engine.begin() as conn:
            conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_ns.is_(None))
                .values(revoked_ns=time.time_ns())
            )
        record = self.get(key_id)
        if record is None:
            raise LookupError(f"no API key with id {key_id!r} (see `fchm cloud key list`)")
        return record

    def verify(self, key: str) -> ApiKey:
        """The key's record if it is valid now; KeyRefused says why it is not."""
        parts = key.split("_", 2)
        if len(parts) != 3 or parts[0] != PREFIX:
            raise KeyRefused(f"API key is malformed (expected {PREFIX}_<id>_<secret>)")
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == parts[1])).first()
        # An unknown id and a wrong secret read the same: ids are not secrets, but the
        # answer must not tell which part of a guess was right.
        stored = row._mapping["key_sha256"] if row is not None else "0" * 64
        # Constant time: the answer's timing must not reveal how much of a hash matched.
        if not hmac.compare_digest(hash_key(key), stored) or row is None:
            raise KeyRefused("API key is not valid")
        record = _record(row._mapping)
        state = record.state(time.time_ns())
        if state != "active":  # only the key's holder learns this
            raise KeyRefused(f"API key {record.id} ({record.name}) is {state}")
        return record

    def any_active(self) -> bool:
        now = time.time_ns()
        return any(k.state(now) == "active" for k in self.list())


def _record(row: object) -> ApiKey:
    m = dict(row)  # type: ignore[call-overload]
    m.pop("key_sha256")
    return ApiKey(**{**m, "scopes": tuple(m["scopes"]), "cameras": tuple(m["cameras"])})
