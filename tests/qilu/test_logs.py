"""Log lines never carry a national ID number, a name or a bearer token in clear."""

from __future__ import annotations

import json
import logging

import structlog

from qilu.logs import configure_logging, mask_personal_data
from sample_records import new_national_id


def test_id_numbers_names_and_url_tokens_are_masked_wherever_they_appear():
    number = new_national_id()
    event = mask_personal_data(None, "info", {
        "event": f'"WebSocket /api/consults/r1/ws?token=eyJhbGciOiJFUzI1NiJ9.e30.sig" [accepted] id {number}',
        "name": "欧阳娜娜", "detail": {"numbers": [number]}})
    text = json.dumps(event, ensure_ascii=False)
    assert number not in text and number[:6] + "********" + number[-4:] in text
    assert "eyJhbGciOiJFUzI1NiJ9" not in text and "token=[redacted]" in text
    assert event["name"] == "欧阳**"


def test_library_log_lines_go_through_the_same_masking(capsys):
    number = new_national_id()
    configure_logging("json", "INFO")
    try:
        logging.getLogger("uvicorn.error").info('"GET /fhir/Patient?identifier=%s&access_token=secret123" 200', number)
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        configure_logging("console", "WARNING")
    assert number not in line and "secret123" not in line
    assert json.loads(line)["level"] == "info"


def test_our_own_log_lines_are_masked_in_what_is_written(capsys):
    number = new_national_id()
    configure_logging("json", "INFO")
    try:
        structlog.get_logger("qilu.test").info(f"looked up {number}", name="欧阳娜娜", query={"identifier": number})
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        configure_logging("console", "WARNING")
    assert number not in line and "欧阳娜娜" not in line
    assert json.loads(line)["name"] == "欧阳**"
