"""Secrets at rest: the CIFS password is stored encrypted in the catalog.

Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``) with a key in
``state_dir/secret.key`` (mode 0600, created on first use). The catalog then
holds only ``fernet:<token>``; copying the catalog without the key file does
not reveal a password. Several appliances sharing one catalog need the same
key file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import SendenseError
from engine.private import make_private_dirs

if TYPE_CHECKING:  # loaded at the first secret: most commands never touch one
    from cryptography.fernet import Fernet

PREFIX = "fernet:"


class SecretError(SendenseError):
    """A stored secret cannot be decrypted (wrong or missing key file)."""


class SecretBox:
    def __init__(self, key_file: Path) -> None:
        self.key_file = Path(key_file)
        self._fernet: Fernet | None = None

    def _box(self) -> Fernet:
        if self._fernet is None:
            from cryptography.fernet import Fernet

            if not self.key_file.exists():
                make_private_dirs(self.key_file.parent)
                fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(Fernet.generate_key())
            self._fernet = Fernet(self.key_file.read_bytes().strip())
        return self._fernet

    def encrypt(self, plain: str) -> str:
        return PREFIX + self._box().encrypt(plain.encode()).decode()

    def decrypt(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            raise SecretError("a stored secret is not in the expected encrypted form")
        from cryptography.fernet import InvalidToken

        try:
            return self._box().decrypt(stored[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise SecretError(
                f"a stored password cannot be decrypted with {self.key_file}",
                hint="restore the original secret.key, or enter the password again (repo edit)",
            ) from None
