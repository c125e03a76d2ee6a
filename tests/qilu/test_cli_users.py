"""`qilu user add` creates a working login of each role, with the FHIR resource the user stands for."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from sample_records import PASSWORD, new_national_id

ROOT = Path(__file__).resolve().parents[2]


def _user_add(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qilu", "user", "add", *args, "--password", PASSWORD], cwd=ROOT,
                          env=os.environ.copy(), capture_output=True, text=True, timeout=120)


async def test_user_add_creates_patients_practitioners_and_admins_who_can_log_in(client, world):
    number = new_national_id()
    practitioner_number = f"CLI{uuid.uuid4().hex[:8]}"
    org_id = world.home.removeprefix("Organization/")
    created = [
        _user_add("--role", "patient", "--login", number, "--name", "周桂英", "--organization", org_id),
        _user_add("--role", "practitioner", "--login", practitioner_number, "--name", "吴医生",
                  "--organization", org_id, "--specialty", "cardiology"),
        _user_add("--role", "admin", "--login", f"ops-{uuid.uuid4().hex[:6]}", "--name", "运维"),
    ]
    for result in created:
        assert result.returncode == 0, result.stderr
    token = (await client.post("/api/auth/token", data={"username": number, "password": PASSWORD})).json()
    me = (await client.get("/api/me", headers={"Authorization": f"Bearer {token['access_token']}"})).json()
    assert me["role"] == "patient" and me["fhirUser"].startswith("Patient/")
    patient = (await client.get(f"/fhir/{me['fhirUser']}",
                                headers={"Authorization": f"Bearer {token['access_token']}"})).json()
    assert patient["identifier"][0]["value"] == number and patient["managingOrganization"]["reference"] == world.home

    token = (await client.post("/api/auth/token", data={"username": practitioner_number,
                                                        "password": PASSWORD})).json()
    me = (await client.get("/api/me", headers={"Authorization": f"Bearer {token['access_token']}"})).json()
    assert me["fhirUser"].startswith("PractitionerRole/") and me["organization"] == world.home


def test_user_add_refuses_a_bad_role_an_unknown_hospital_and_a_second_user_with_the_same_login():
    assert _user_add("--role", "wizard", "--login", "x", "--name", "x").returncode != 0
    unknown_org = _user_add("--role", "practitioner", "--login", f"U{uuid.uuid4().hex[:6]}", "--name", "x",
                            "--organization", "no-such-org")
    assert unknown_org.returncode == 1 and "not in the directory" in unknown_org.stderr
    login = f"dup-{uuid.uuid4().hex[:6]}"
    assert _user_add("--role", "admin", "--login", login, "--name", "a").returncode == 0
    second = _user_add("--role", "admin", "--login", login, "--name", "b")
    assert second.returncode == 1 and "exists already" in second.stderr
