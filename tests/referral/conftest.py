"""Referral fixtures: each test module gets a referral world of its own."""

from __future__ import annotations

import pytest

from referral_world import ReferralWorld, referral_world_for


@pytest.fixture(scope="module")
async def rw(app) -> ReferralWorld:
    return await referral_world_for(app)
