"""The ES256 signing keys of this deployment (tokens, e-health card QR codes), generated on first start."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from joserfc.jwk import ECKey, KeySet

from qilu.settings import Settings


def _load_or_generate(path: Path) -> ECKey:
    if path.exists():
        return ECKey.import_key(json.loads(path.read_text()))
    key = ECKey.generate_key("P-256", auto_kid=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written to a temporary file first so two processes starting at once never read half a key.
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(key.as_dict(private=True), handle)
    try:
        os.link(tmp, path)  # fails if another process won the race; then we use its key
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return ECKey.import_key(json.loads(path.read_text()))


@dataclass(frozen=True)
class SigningKeys:
    token_key: ECKey
    card_key: ECKey

    @classmethod
    def load(cls, settings: Settings) -> SigningKeys:
        token_path = settings.signing_key_path or settings.path("keys", "token-signing.jwk.json")
        card_path = settings.card_key_path or settings.path("keys", "card-signing.jwk.json")
        return cls(_load_or_generate(Path(token_path)), _load_or_generate(Path(card_path)))

    def public_jwks(self) -> dict:
        keys = []
        for key, use in ((self.token_key, "sig"), (self.card_key, "sig")):
            public = key.as_dict(private=False)
            keys.append({**public, "use": use, "alg": "ES256"})
        return {"keys": keys}

    def token_key_set(self) -> KeySet:
        return KeySet([self.token_key])

    def card_key_set(self) -> KeySet:
        return KeySet([self.card_key])
