"""Ed25519 signatures for updates, frame batches and snapshot requests (issue #13).

Why: a shared HMAC key lets every robot that holds it sign every other robot's updates, and
SROS2 (DDS-Security) is not available on the pip wheels (Fast DDS is built with
``HAVE_SECURITY 0``). With public-key signatures only the base station can make an update, and
only a robot can make its own frame batches and snapshot requests:

- the server signs every update, catch-up and snapshot with its private key; robots hold the
  base station's public key(s) — a list, so a key can be rotated — and reject unsigned or
  wrongly signed updates once any key is configured;
- each robot signs its frame batches and snapshot requests with its own key; the server holds
  one or more public keys per robot. Snapshot requests also carry a timestamp and a nonce
  inside the signature (:class:`ReplayGuard`), so a captured request cannot be replayed.

What is signed is a canonical byte string: a domain-separation prefix per message kind (an
update signature can never pass as a batch signature) followed by length-prefixed fields, so
no two different field tuples give the same bytes. An update's input covers the target robot,
the chain tag and every field that decides what it does to the model (versions, catch_up,
full_snapshot, encoding, sizes, fingerprint) plus the SHA-256 of both blobs. Freshness of
updates comes from the versions and chain tag being signed: :mod:`ams_ros.core.edge.chain_sync` and
the version chain refuse anything that would take the robot backwards.

Keys: private keys are PEM (PKCS#8) files written with mode 0600 (loading refuses a file that
others can read); public keys travel as base64 of the 32 raw bytes (one short line to paste
into YAML) or as a file holding that line (or a PEM public key). Each signature is sent with
the signer's key id (:func:`key_id`, a short fingerprint of the public key) so a verifier
holding several keys knows which one to use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import stat
import struct
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ams_ros.core.wire.update import EncodedUpdate, UpdateError

DOMAIN_UPDATE = b"ams_ros/model-update/v1"
DOMAIN_FRAME_BATCH = b"ams_ros/frame-batch/v1"
DOMAIN_SNAPSHOT_REQUEST = b"ams_ros/snapshot-request/v1"

SIGNATURE_BYTES = 64
KEY_ID_CHARS = 16  # 64 bits of SHA-256 of the raw public key, hex
NONCE_BYTES = 16
DEFAULT_REQUEST_WINDOW_S = 30.0

Field = Union[bytes, str, int, bool, float]


class SignatureError(UpdateError):
    """A signature is missing, made with an unknown key, or does not match the signed content."""


class KeyFileError(ValueError):
    """A key file or public key string cannot be used (missing, unreadable, wrong format, too open)."""


# ---------------------------------------------------------------------------- canonical input
def _field_bytes(value: Field) -> bytes:
    # one type byte + the value, so that e.g. the string "1" and the integer 1 differ
    if isinstance(value, bool):
        return b"b" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        if value < 0:
            return b"i" + struct.pack("<q", value)
        return b"u" + struct.pack("<Q", value)
    if isinstance(value, float):  # message floats are float32: sign the value the wire carries
        return b"f" + struct.pack("<f", value)
    if isinstance(value, str):
        return b"s" + value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return b"y" + bytes(value)
    raise TypeError(f"cannot sign a field of type {type(value).__name__}")


def canonical(domain: bytes, fields: Sequence[Field]) -> bytes:
    """``domain`` then each field as an 8-byte little-endian length and its typed bytes."""
    out = [struct.pack("<Q", len(domain)), domain]
    for value in fields:
        b = _field_bytes(value)
        out.append(struct.pack("<Q", len(b)))
        out.append(b)
    return b"".join(out)


def update_signing_input(update: EncodedUpdate, device_id: str) -> bytes:
    """What the server signs for ``update`` addressed to robot ``device_id``."""
    return canonical(DOMAIN_UPDATE, (
        device_id, update.chain_tag, bool(update.catch_up), update.fingerprint,
        int(update.base_version), int(update.new_version), bool(update.full_snapshot), update.encoding,
        int(update.num_params), int(update.num_selected),
        hashlib.sha256(update.indices_blob).digest(), hashlib.sha256(update.values_blob).digest(),
    ))


def batch_signing_input(device_id: str, batch_seq: int, codec: str, width: int, height: int,
                        stamps_ns: Iterable[int], sampling_rate: float, update_period: float,
                        target_bitrate: int, data: bytes) -> bytes:
    """What a robot signs for one frame batch (every field but the header and checksum)."""
    stamps = b"".join(struct.pack("<q", int(s)) for s in stamps_ns)
    return canonical(DOMAIN_FRAME_BATCH, (
        device_id, int(batch_seq), codec, int(width), int(height), stamps, float(sampling_rate),
        float(update_period), int(target_bitrate), hashlib.sha256(bytes(data)).digest(),
    ))


def snapshot_request_signing_input(device_id: str, model_fingerprint: str, have_version: int, encoding: str,
                                   have_chain_tag: str, request_time_ns: int, nonce: bytes) -> bytes:
    """What a robot signs for a snapshot (resync) request, its timestamp and nonce included."""
    return canonical(DOMAIN_SNAPSHOT_REQUEST, (
        device_id, model_fingerprint, int(have_version), encoding, have_chain_tag, int(request_time_ns), bytes(nonce),
    ))


# ---------------------------------------------------------------------------- keys
def public_key_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short fingerprint of a public key, sent beside each signature."""
    return hashlib.sha256(public_key_bytes(public_key)).hexdigest()[:KEY_ID_CHARS]


def public_key_text(public_key: Ed25519PublicKey) -> str:
    """The base64 line a user pastes into YAML."""
    return base64.b64encode(public_key_bytes(public_key)).decode("ascii")


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A public key from its base64 line, or from a file holding that line or a PEM public key."""
    text = text.strip()
    if not text:
        raise KeyFileError("empty public key: paste the line `ams-keys generate` or `ams-keys public FILE` printed")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = None
    if raw is not None and len(raw) == 32:
        return Ed25519PublicKey.from_public_bytes(raw)
    path = Path(text).expanduser()
    if path.is_file():
        content = path.read_bytes()
        if b"-----BEGIN" in content:
            try:
                key = serialization.load_pem_public_key(content)
            except ValueError as exc:
                raise KeyFileError(f"{path}: not a PEM public key ({exc})") from exc
            if not isinstance(key, Ed25519PublicKey):
                raise KeyFileError(f"{path}: holds a {type(key).__name__}, an Ed25519 public key is needed")
            return key
        return parse_public_key(content.decode("ascii", "replace").strip())
    raise KeyFileError(f"public key {text[:60]!r} is neither base64 of 32 bytes (an Ed25519 public key) nor a "
                       f"file; use the line `ams-keys public PRIVATE_KEY_FILE` prints")


@dataclass
class SigningKey:
    """A private key and the id of its public key."""

    private_key: Ed25519PrivateKey
    path: str = ""

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    @property
    def public_text(self) -> str:
        return public_key_text(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    @classmethod
    def generate(cls) -> "SigningKey":
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SigningKey":
        """Load a PEM private key; refuses a file that group or others may read."""
        p = Path(path).expanduser()
        try:
            mode = p.stat().st_mode
            content = p.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"cannot read private key file {p}: {exc}; create one with "
                               f"`ams-keys generate --out DIR --name NAME`") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"private key file {p} has mode {stat.S_IMODE(mode):04o}: others can read it; "
                               f"run `chmod 600 {p}`")
        try:
            key = serialization.load_pem_private_key(content, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{p}: not an unencrypted PEM private key ({exc})") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{p}: holds a {type(key).__name__}, an Ed25519 private key is needed")
        return cls(key, str(p))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the key as PEM with mode 0600 (created so, never world-readable in between)."""
        p = Path(path).expanduser()
        p.parent.mkdir(parents=True, exist_ok=True)
        pem = self.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.chmod(p, 0o600)
        return p


@dataclass
class TrustedKeys:
    """The public keys a verifier accepts, by key id (several: rotation)."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)

    @classmethod
    def parse(cls, texts: Iterable[str]) -> "TrustedKeys":
        keys = {}
        for t in texts:
            if t and t.strip():
                k = parse_public_key(t)
                keys[key_id(k)] = k
        return cls(keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def verify(self, data: bytes, signature: bytes, signer_key_id: str, what: str) -> None:
        """Raises :class:`SignatureError` unless ``signature`` over ``data`` is by a trusted key."""
        signature = bytes(signature)
        if not signature:
            raise SignatureError(f"{what} is unsigned, but signing keys are configured (trusted key ids: "
                                 f"{', '.join(sorted(self.keys))})")
        key = self.keys.get(signer_key_id)
        if key is None:
            raise SignatureError(f"{what} is signed by unknown key {signer_key_id or '(no key id)'!r}; trusted key "
                                 f"ids: {', '.join(sorted(self.keys))} (add the signer's public key to the list)")
        try:
            key.verify(signature, data)
        except InvalidSignature:
            raise SignatureError(f"{what}: the signature of key {signer_key_id} does not match the content "
                                 f"(forged, tampered with, or addressed to another robot)") from None


def parse_robot_keys(entries: Iterable[str]) -> dict[str, TrustedKeys]:
    """``["robot1=BASE64", "robot1=BASE64_NEW", "robot2=/path/key.pub"]`` -> trusted keys per robot."""
    out: dict[str, TrustedKeys] = {}
    for e in entries:
        if not e or not e.strip():
            continue
        dev, sep, key = e.partition("=")
        if not sep or not dev.strip() or not key.strip():
            raise KeyFileError(f"robot public key entry {e[:60]!r} is not DEVICE_ID=PUBLIC_KEY (e.g. "
                               f"robot1=<the line `ams-keys public robot1.key` prints>)")
        k = parse_public_key(key)
        out.setdefault(dev.strip(), TrustedKeys()).keys[key_id(k)] = k
    return out


# ---------------------------------------------------------------------------- updates
def sign_update(update: EncodedUpdate, device_id: str, key: SigningKey) -> None:
    """Sign ``update`` for robot ``device_id``: sets ``signature`` and ``signer_key_id``."""
    update.signature = key.sign(update_signing_input(update, device_id))
    update.signer_key_id = key.key_id


def verify_update(update: EncodedUpdate, device_id: str, trusted: TrustedKeys) -> None:
    """Raises :class:`SignatureError` unless ``update`` was signed for ``device_id`` by a
    trusted key. With no trusted key configured every update passes (unsigned mode)."""
    if not trusted:
        return
    what = f"update v{update.base_version}->v{update.new_version}{' (snapshot)' if update.full_snapshot else ''}"
    trusted.verify(update_signing_input(update, device_id), update.signature, update.signer_key_id, what)


# ---------------------------------------------------------------------------- snapshot requests
def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


class ReplayGuard:
    """Refuses snapshot requests whose timestamp is outside ``window_s`` of now, or whose nonce
    was already seen within the window (per robot). Thread-safe; memory bounded by the window."""

    def __init__(self, window_s: float = DEFAULT_REQUEST_WINDOW_S) -> None:
        if window_s <= 0:
            raise ValueError(f"request window must be > 0 s, got {window_s}")
        self.window_ns = int(window_s * 1e9)
        self._seen: dict[str, dict[bytes, int]] = {}
        self._lock = threading.Lock()

    def check(self, device_id: str, request_time_ns: int, nonce: bytes, now_ns: int) -> None:
        """Raises :class:`SignatureError` for a stale, future or replayed request; else records it."""
        age = now_ns - int(request_time_ns)
        if abs(age) > self.window_ns:
            raise SignatureError(f"snapshot request is {age / 1e9:+.1f} s old, outside the "
                                 f"{self.window_ns / 1e9:g} s window (replayed, or the robot's clock is off: "
                                 f"synchronise the clocks)")
        if len(nonce) < 8:
            raise SignatureError(f"snapshot request nonce has {len(nonce)} bytes, at least 8 are needed")
        with self._lock:
            seen = self._seen.setdefault(device_id, {})
            for n, t in list(seen.items()):
                if now_ns - t > 2 * self.window_ns:
                    del seen[n]
            if bytes(nonce) in seen:
                raise SignatureError("snapshot request nonce was already used (a replayed request)")
            seen[bytes(nonce)] = now_ns


class SeenSignatures:
    """Refuses a signed message whose signature was already seen (per sender), so a genuine
    frame batch recorded off the network and played again is not trained on twice (issue #13).
    Ed25519 signatures are deterministic, so equal signatures mean an equal signed message; a
    robot's new batches differ in their stamps and content. Keeps the last ``capacity`` per
    sender (a batch's replay after that many newer batches is not caught). Thread-safe."""

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._seen: dict[str, tuple[deque, set]] = {}
        self._lock = threading.Lock()

    def check(self, sender: str, signature: bytes, what: str) -> None:
        """Raises :class:`SignatureError` if ``signature`` was seen from ``sender``; else records it."""
        sig = bytes(signature)
        with self._lock:
            order, seen = self._seen.setdefault(sender, (deque(), set()))
            if sig in seen:
                raise SignatureError(f"{what} is a replay: its signature was already seen from {sender} "
                                     f"(a recorded message played again)")
            order.append(sig)
            seen.add(sig)
            while len(order) > self.capacity:
                seen.discard(order.popleft())


def generate_key_file(out: str | Path, name: str) -> tuple[Path, SigningKey]:
    """Create ``out/name.key``; refuses to overwrite an existing key."""
    path = Path(out) / f"{name}.key"
    if path.exists():
        raise KeyFileError(f"{path} exists: choose another --name or remove it first (keys are never overwritten)")
    key = SigningKey.generate()
    key.save(path)
    return path, key
