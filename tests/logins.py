"""Test clients that carry a user's access token, obtained through the API as any client would."""

from __future__ import annotations

import httpx

from qilu.identity import User
from sample_records import PASSWORD


async def login(app, user: User, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    """An httpx client on the live app that carries `user`'s access token (obtained through the API).

    With `raise_app_exceptions=False` an unhandled error comes back as the app's own 500 response instead of
    being raised in the test, as a fuzzer that counts server errors needs."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    http = httpx.AsyncClient(transport=transport, base_url="http://testserver")
    response = await http.post("/api/auth/token", data={"username": user.login, "password": PASSWORD})
    assert response.status_code == 200, response.text
    http.headers["Authorization"] = "Bearer " + response.json()["access_token"]
    return http
