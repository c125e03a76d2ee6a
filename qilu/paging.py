"""The paging parameter the list routes share."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

# Far past any page a person asks for; without a bound, a number beyond 64 bits reached MongoDB's `skip` and
# failed there (500) instead of being refused here.
MAX_OFFSET = 1_000_000

Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="how many entries to skip")]
