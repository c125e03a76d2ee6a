"""The administrators' users API under /api/users: thin routes over the account rules, each call audited (a patient's
account in that patient's access log too)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from qilu.accounts import AccountService, account_patients, account_reference, account_view
from qilu.audit import record_access
from qilu.auth import CurrentCaller
from qilu.paging import Offset
from qilu.problems import Problem

router = APIRouter(prefix="/api/users", tags=["users"])

ORGANIZATION = r"^(Organization/)?[A-Za-z0-9\-.]{1,64}$"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class AccountBody(StrictModel):
    """A practitioner (at a hospital of the directory) or an administrator."""

    role: Literal["practitioner", "admin"]
    login: str = Field(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*$",
                       description="a practitioner's number; any name for an administrator")
    password: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=100)
    organization: str | None = Field(default=None, pattern=ORGANIZATION, description="Organization/{id}")
    specialty: str | None = Field(default=None, max_length=100)


class PasswordBody(StrictModel):
    password: str = Field(min_length=1, max_length=128)


class LookupBody(StrictModel):
    """In the body, not the URL: a resident's ID number stays out of addresses, histories and proxies' logs."""

    login: str = Field(min_length=1, max_length=64)


def accounts(request: Request) -> AccountService:
    return AccountService(request.app.state.db, request.app.state.settings.fhir_base_url,
                          request.app.state.users)  # its changes are announced to every process


def _organizations(value: str | None) -> list[str]:
    """`organization=a,b`: each as Organization/{id}; a malformed one is refused like any bad query parameter."""
    found = []
    for index, item in enumerate(part.strip() for part in (value or "").split(",") if part.strip()):
        if not re.fullmatch(ORGANIZATION, item):
            raise Problem(422, "Invalid request", f"organization[{index}] must be Organization/{{id}}",
                          expression=["organization"])
        found.append(f"Organization/{item.removeprefix('Organization/')}")
    return found


@router.get("")
async def list_users(request: Request, caller: CurrentCaller, role: Literal["practitioner", "admin"] | None = None,
                     organization: Annotated[str | None, Query(max_length=2000)] = None,
                     limit: int = Query(50, ge=1, le=200), offset: Offset = 0) -> dict[str, Any]:
    """Practitioner and administrator accounts, newest first; `organization` takes one hospital or several."""
    docs, total = await accounts(request).list(caller, role, _organizations(organization), limit, offset)
    await record_access(request, caller, "search-type", entities=[account_reference(d) for d in docs], patients=[],
                        description="user accounts", query=str(request.url.query))
    return {"total": total, "offset": offset, "entries": [account_view(d) for d in docs]}


@router.post("", status_code=201)
async def create_user(body: AccountBody, request: Request, caller: CurrentCaller) -> JSONResponse:
    doc = await accounts(request).create(caller, role=body.role, login=body.login, password=body.password,
                                         name=body.name, organization=body.organization, specialty=body.specialty)
    await record_access(request, caller, "create", entities=[account_reference(doc)], patients=[],
                        description="user account created")
    return JSONResponse(account_view(doc), status_code=201, headers={"Location": f"/api/users/{doc['_id']}"})


@router.post("/lookup")
async def find_user(body: LookupBody, request: Request, caller: CurrentCaller) -> dict[str, Any]:
    """The account with this login, of any role: the help desk finds a resident's account by their ID number."""
    doc = await accounts(request).find_by_login(caller, body.login)
    await record_access(request, caller, "read", entities=[account_reference(doc)], patients=account_patients(doc),
                        description="user account: looked up")
    return account_view(doc)


@router.get("/{user_id}")
async def read_user(user_id: str, request: Request, caller: CurrentCaller) -> dict[str, Any]:
    doc = await accounts(request).get(caller, user_id)
    await record_access(request, caller, "read", entities=[account_reference(doc)], patients=account_patients(doc),
                        description="user account")
    return account_view(doc)


@router.post("/{user_id}/password")
async def reset_password(user_id: str, body: PasswordBody, request: Request, caller: CurrentCaller
                         ) -> dict[str, Any]:
    doc = await accounts(request).reset_password(caller, user_id, body.password)
    await record_access(request, caller, "update", entities=[account_reference(doc)], patients=account_patients(doc),
                        description="user account: password reset")
    return account_view(doc)


@router.post("/{user_id}/{action}")
async def change_user(user_id: str, action: Literal["disable", "enable", "unlock"], request: Request,
                      caller: CurrentCaller) -> dict[str, Any]:
    doc = await accounts(request).act(caller, user_id, action)
    await record_access(request, caller, "update", entities=[account_reference(doc)], patients=account_patients(doc),
                        description=f"user account: {action}")
    return account_view(doc)
