"""HE key sets as types: parameters, ``SecretContext`` (sites) and ``PublicContext`` (coordinator).

A key set is made once per federation (``fedcore keys init``). Every site gets the secret context
(it can encrypt and decrypt); the coordinator gets the public context, which holds the encryption
parameters (and, for public-key encryption, the public key) but never a secret key: this module has
no code path that serializes a secret key into a public context.

Key files are self-describing: ``MAGIC | u32 header length | JSON header | TenSEAL bytes``. The
header names the kind (``secret``/``public``), the key-set id and the parameters, and carries a
SHA-256 of the payload so a damaged file is reported, not half-loaded. Pure library: no Flower.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
import tempfile
from pathlib import Path
from typing import Any, Literal

import tenseal as ts

from fedcore.errors import ConfigError, KeyMismatchError
from fedcore.he.params import DEFAULT_PARAMS, Encryption, HEParams, Scheme

__all__ = [
    "PublicContext",
    "SecretContext",
    "generate_keyset",
    "init_keys",
    "load_public_context",
    "load_secret_context",
    "save_keyset",
    "save_public",
    "save_secret",
]


_MAGIC = b"FCHEKEY1"
Kind = Literal["secret", "public"]


def _new_tenseal_context(params: HEParams) -> ts.Context:
    enc = (
        ts.ENCRYPTION_TYPE.SYMMETRIC
        if params.encryption is Encryption.SYMMETRIC
        else ts.ENCRYPTION_TYPE.ASYMMETRIC
    )
    bits = list(params.coeff_mod_bit_sizes)
    if params.scheme is Scheme.CKKS:
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            params.poly_modulus_degree,
            coeff_mod_bit_sizes=bits,
            encryption_type=enc,
        )
        ctx.global_scale = 2.0**params.scale_bits
        return ctx
    return ts.context(
        ts.SCHEME_TYPE.BFV,
        params.poly_modulus_degree,
        params.plain_modulus,
        coeff_mod_bit_sizes=bits,
        encryption_type=enc,
    )


def _public_bytes(ctx: ts.Context, params: HEParams) -> bytes:
    """The only serializer used for public contexts: secret key never saved."""
    return bytes(
        ctx.serialize(
            save_public_key=params.encryption is Encryption.PUBLIC_KEY,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )
    )


class PublicContext:
    """The coordinator's context: it can load and add ciphertexts, never decrypt them."""

    def __init__(self, tenseal_ctx: ts.Context, params: HEParams, keyset_id: str) -> None:
        if tenseal_ctx.is_private():
            raise KeyMismatchError(
                f"a public context must not hold a secret key (key set {keyset_id}); "
                "build it with SecretContext.public() or load public.ctx"
            )
        self._ctx = tenseal_ctx
        self.params = params
        self.keyset_id = keyset_id

    @property
    def tenseal(self) -> ts.Context:
        """The wrapped TenSEAL context (public: no secret key)."""
        return self._ctx

    def to_bytes(self) -> bytes:
        """The serialized public context (parameters, public key if any; no secret key)."""
        return _public_bytes(self._ctx, self.params)

    def __repr__(self) -> str:
        return f"PublicContext(keyset_id={self.keyset_id!r}, scheme={self.params.scheme.value})"


class SecretContext:
    """A site's context: it can encrypt and decrypt. Never send it to the coordinator."""

    def __init__(self, tenseal_ctx: ts.Context, params: HEParams, keyset_id: str) -> None:
        if not tenseal_ctx.is_private():
            raise KeyMismatchError(
                f"key set {keyset_id} context holds no secret key, so it cannot decrypt; "
                "sites need secret.ctx from the key ceremony (fedcore keys init)"
            )
        self._ctx = tenseal_ctx
        self.params = params
        self.keyset_id = keyset_id

    @property
    def tenseal(self) -> ts.Context:
        """The wrapped TenSEAL context (holds the secret key)."""
        return self._ctx

    def public(self) -> PublicContext:
        """The matching public context, re-loaded from its secret-free serialization."""
        return PublicContext(
            ts.context_from(_public_bytes(self._ctx, self.params)), self.params, self.keyset_id
        )

    def derived_key(self, purpose: str) -> bytes:
        """A 32-byte key only secret-key holders can compute (SHA-256 of the secret key and
        ``purpose``): e.g. for the sites' markers in encrypted statistics, which the coordinator
        cannot forge. (The secret key's bytes, not the context's: a context's serialization changes
        once it has encrypted.)"""
        with tempfile.TemporaryDirectory() as folder:  # SEAL saves keys to a path only; 0700, removed
            path = os.path.join(folder, "sk")
            self._ctx.secret_key().data.save(path)
            with open(path, "rb") as fh:
                secret = fh.read()
        return hashlib.sha256(b"fedcore/" + purpose.encode() + b"/" + secret).digest()

    def __repr__(self) -> str:
        return f"SecretContext(keyset_id={self.keyset_id!r}, scheme={self.params.scheme.value})"


def generate_keyset(params: HEParams = DEFAULT_PARAMS) -> SecretContext:
    """Make a new key set. Its id is the first 16 hex digits of SHA-256 over a 128-bit random salt
    and the serialized public context (the salt keeps ids of symmetric key sets, whose public
    context holds only parameters, distinct)."""
    ctx = _new_tenseal_context(params)
    digest = hashlib.sha256(secrets.token_bytes(16) + _public_bytes(ctx, params))
    return SecretContext(ctx, params, digest.hexdigest()[:16])


def _write_key_file(path: Path, kind: Kind, ctx: SecretContext, payload: bytes) -> None:
    header = json.dumps(
        {
            "kind": kind,
            "keyset_id": ctx.keyset_id,
            "params": ctx.params.to_dict(),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
        }
    ).encode()
    mode = 0o600 if kind == "secret" else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), mode)
        fh.write(_MAGIC + struct.pack(">I", len(header)) + header + payload)


def save_secret(ctx: SecretContext, path: Path) -> None:
    """Write a site's ``secret.ctx`` to ``path`` (mode 0600, in a 0700 folder it creates)."""
    path = Path(path)
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True)
        path.parent.chmod(0o700)
    secret = ctx.tenseal.serialize(
        save_public_key=ctx.params.encryption is Encryption.PUBLIC_KEY,
        save_secret_key=True,
        save_galois_keys=False,
        save_relin_keys=False,
    )
    _write_key_file(path, "secret", ctx, bytes(secret))


def save_public(ctx: SecretContext, path: Path) -> None:
    """Write the coordinator's ``public.ctx`` (no secret key in it, by construction)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _write_key_file(Path(path), "public", ctx, _public_bytes(ctx.tenseal, ctx.params))


def save_keyset(ctx: SecretContext, out_dir: Path, *, overwrite: bool = False) -> None:
    """Write ``secret.ctx`` (mode 0600), ``public.ctx`` and ``keyset.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = ("secret.ctx", "public.ctx", "keyset.json")
    existing = [n for n in names if (out_dir / n).exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{out_dir} already holds key files {existing}; replacing a key set makes every "
            "ciphertext made with it undecryptable. Pick another directory or pass overwrite=True"
        )
    save_secret(ctx, out_dir / "secret.ctx")
    save_public(ctx, out_dir / "public.ctx")
    info = {
        "keyset_id": ctx.keyset_id,
        "params": ctx.params.to_dict(),
        "files": {"secret": "secret.ctx", "public": "public.ctx"},
    }
    (out_dir / "keyset.json").write_text(json.dumps(info, indent=2) + "\n")


def init_keys(out_dir: Path, *, params: HEParams = DEFAULT_PARAMS) -> str:
    """Key ceremony for ``fedcore keys init --out DIR``: generate, save, return the key-set id."""
    ctx = generate_keyset(params)
    save_keyset(ctx, Path(out_dir))
    return ctx.keyset_id


def _read_key_file(path: Path, expected: Kind) -> tuple[dict[str, Any], bytes]:
    path = Path(path)
    if not path.is_file():
        raise KeyMismatchError(
            f"{expected} key file {path} does not exist; create a key set with "
            f"`fedcore keys init --out DIR` and copy DIR/{expected}.ctx here"
        )
    raw = path.read_bytes()
    if raw[: len(_MAGIC)] != _MAGIC or len(raw) < len(_MAGIC) + 4:
        raise ConfigError(
            f"{path} is not a fedcore key file (bad magic); use a .ctx file written by `fedcore keys init`"
        )
    (hlen,) = struct.unpack(">I", raw[8:12])
    try:
        header = json.loads(raw[12 : 12 + hlen])
        kind, digest = header["kind"], header["payload_sha256"]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"{path} has a corrupt header ({err}); re-copy it from the key ceremony output"
        ) from err
    payload = raw[12 + hlen :]
    if kind != expected:
        hint = (
            "the coordinator must get public.ctx, never secret.ctx"
            if kind == "secret"
            else "sites need secret.ctx to decrypt"
        )
        raise KeyMismatchError(f"{path} holds a {kind} context, expected {expected}; {hint}")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise ConfigError(
            f"{path} is corrupt or truncated (payload checksum mismatch, "
            f"{len(payload)} bytes); re-copy it from the key ceremony output"
        )
    return header, payload


def _load(path: Path, kind: Kind) -> tuple[ts.Context, HEParams, str]:
    header, payload = _read_key_file(path, kind)
    params = HEParams.from_dict(header["params"])
    try:
        ctx = ts.context_from(payload)
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"TenSEAL cannot read {path}: {err}; re-copy it") from err
    return ctx, params, str(header["keyset_id"])


def load_secret_context(path: Path) -> SecretContext:
    """Load a site's ``secret.ctx``; ``KeyMismatchError`` if it is missing or not a secret one."""
    return SecretContext(*_load(path, "secret"))


def load_public_context(path: Path) -> PublicContext:
    """Load the coordinator's ``public.ctx``; refuses a file that holds a secret key."""
    return PublicContext(*_load(path, "public"))
