"""Standard Webhooks signatures (https://www.standardwebhooks.com): HMAC-SHA256 over
"{webhook-id}.{webhook-timestamp}.{body}" with the secret's bytes (base64 after whsec_),
sent as `webhook-signature: v1,<base64>`. Written here in a few lines; the tests verify
it with the `standardwebhooks` package."""

from __future__ import annotations

import base64
import hashlib
import hmac


def secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    signed = f"{message_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()).decode()
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp), "webhook-signature": f"v1,{signature}"}
