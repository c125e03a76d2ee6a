"""Validators, builders and masks for the identifiers a person or hospital carries in China."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import unicodedata
from dataclasses import dataclass

from fhir_profiles.divisions import PROVINCE_CODES, is_valid_division_code

NATIONAL_ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"  # 居民身份证号
USCC_SYSTEM = "urn:oid:2.16.156.10011.1.5"  # 统一社会信用代码
EHEALTH_CARD_SYSTEM = "urn:oid:2.16.156.10011.1.19"  # 电子健康卡号
PRACTITIONER_NUMBER_SYSTEM = "urn:qilu:practitioner-number"

# GB 11643-1999 does not cover anyone born before the oldest living residents.
EARLIEST_BIRTH_DATE = dt.date(1890, 1, 1)
# The province's clock: a child born at 01:00 in Jinan is born "today" there while it is still
# yesterday in UTC, so birth dates are judged against the date in China, not the server's.
CHINA_STANDARD_TIME = dt.timezone(dt.timedelta(hours=8), "CST")

_NATIONAL_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_NATIONAL_ID_CHECK_CHARS = "10X98765432"  # index = weighted sum mod 11 (ISO 7064 MOD 11-2)

USCC_CHARSET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # GB 32100-2015: no I, O, S, V, Z
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_ORG_CODE_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)  # GB 11714 organisation code, positions 9-17

_DIGITS = re.compile(r"[0-9]+")


def china_today(now: dt.datetime | None = None) -> dt.date:
    """Today's date in China (UTC+8, no daylight saving), for `now` or the present moment."""
    moment = now if now is not None else dt.datetime.now(dt.UTC)
    if moment.tzinfo is None:
        raise ValueError("now must carry a time zone")
    return moment.astimezone(CHINA_STANDARD_TIME).date()


class IdentifierError(ValueError):
    """An identifier that is not valid; `code` says which rule it broke, in one machine word."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class NationalId:
    """A parsed resident ID number (居民身份证号码) and what it says about its holder."""

    value: str
    region_code: str
    birth_date: dt.date
    sex: str  # "male" | "female", the FHIR AdministrativeGender codes

    def __repr__(self) -> str:
        # Dataclass reprs end up in logs and tracebacks; the number must not.
        return f"NationalId(value={mask_national_id(self.value)!r}, sex={self.sex!r})"


def mask_national_id(value: str) -> str:
    """The ID number as it may appear in logs: region, eight stars, last four (370102********123X)."""
    if not isinstance(value, str) or not value:
        return ""
    if len(value) == 18:
        return value[:6] + "*" * 8 + value[-4:]
    if len(value) <= 4:
        # Too short to show anything and still hide most of it.
        return "*" * len(value)
    return "*" * (len(value) - 2) + value[-2:]


# Two-character surnames (复姓) stay whole so that 欧阳娜娜 masks as 欧阳**, not 欧***.
COMPOUND_SURNAMES = frozenset(
    {
        "欧阳", "司马", "上官", "诸葛", "东方", "皇甫", "尉迟", "公孙", "慕容", "长孙",
        "宇文", "司徒", "夏侯", "轩辕", "令狐", "端木", "独孤", "南宫", "西门", "呼延",
        "澹台", "公冶", "太史", "申屠", "闻人", "万俟", "钟离", "赫连", "百里", "东郭",
        "濮阳", "司空", "单于", "拓跋", "鲜于", "第五", "左丘", "闾丘", "漆雕", "乐正",
    }
)


def _is_cjk(char: str) -> bool:
    return unicodedata.name(char, "").startswith(("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH"))


def mask_name(name: str) -> str:
    """A person's name as it may appear in logs: the surname and a star per hidden character
    for Chinese names (张*, 欧阳**), the first letter and three stars for Latin ones (L***)."""
    if not isinstance(name, str):
        return ""
    name = name.strip()
    if not name:
        return ""
    if _is_cjk(name[0]):
        surname = name[:2] if name[:2] in COMPOUND_SURNAMES and len(name) > 2 else name[:1]
        if len(name) == len(surname):
            # A one-character name would be shown whole.
            return "*" * len(name)
        return surname + "*" * (len(name) - len(surname))
    # A fixed number of stars: the length of a Latin name says too much about it.
    return name[0] + "***"


def national_id_check_char(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character for the first 17 digits of an ID number."""
    if not isinstance(first17, str) or len(first17) != 17:
        raise IdentifierError("length", "the body of a national ID number is 17 digits")
    if not _DIGITS.fullmatch(first17):
        raise IdentifierError("charset", "the body of a national ID number is digits only")
    total = sum(int(digit) * weight for digit, weight in zip(first17, _NATIONAL_ID_WEIGHTS))
    return _NATIONAL_ID_CHECK_CHARS[total % 11]


def parse_national_id(value: str, *, today: dt.date | None = None) -> NationalId:
    """Parse and validate an 18-character resident ID number (GB 11643-1999).

    Accepts a lower-case check character x and returns the number with it upper-cased.
    Error messages carry only the masked number.
    """
    if not isinstance(value, str):
        raise IdentifierError("type", "a national ID number must be a string")
    shown = mask_national_id(value)
    if len(value) != 18:
        raise IdentifierError(
            "length", f"national ID number {shown} has {len(value)} characters; it must have 18"
        )
    value = value[:17] + value[17].upper()
    for position, char in enumerate(value, start=1):
        allowed = char.isascii() and (char.isdigit() or (position == 18 and char == "X"))
        if not allowed:
            rule = "a digit or X" if position == 18 else "a digit"
            raise IdentifierError(
                "charset",
                f"national ID number {shown}: character {position} must be {rule}",
            )
    region_code = value[:6]
    if region_code[:2] not in PROVINCE_CODES:
        raise IdentifierError(
            "region",
            f"national ID number {shown}: {region_code[:2]} is not a province-level division code",
        )
    if not is_valid_division_code(region_code):
        raise IdentifierError(
            "region",
            f"national ID number {shown}: {region_code} is not a possible division code "
            "(a county part under city part 00)",
        )
    try:
        birth_date = dt.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        # The date itself is not echoed: it is part of what the mask hides.
        raise IdentifierError(
            "birth-date",
            f"national ID number {shown}: characters 7-14 are not a calendar date (YYYYMMDD)",
        ) from None
    if birth_date < EARLIEST_BIRTH_DATE:
        raise IdentifierError(
            "birth-date",
            f"national ID number {shown}: the birth date is before {EARLIEST_BIRTH_DATE.isoformat()}",
        )
    if birth_date > (today or china_today()):
        raise IdentifierError(
            "future-birth-date", f"national ID number {shown}: the birth date is in the future"
        )
    expected = national_id_check_char(value[:17])
    if value[17] != expected:
        raise IdentifierError(
            "check-digit",
            f"national ID number {shown}: the check character does not match the other 17 "
            "(mistyped digit?)",
        )
    sex = "male" if int(value[16]) % 2 == 1 else "female"
    return NationalId(value=value, region_code=region_code, birth_date=birth_date, sex=sex)


def make_national_id(
    region_code: str, birth_date: dt.date, sequence: int, sex: str, *, today: dt.date | None = None
) -> str:
    """Build a valid ID number; sequence 0..499 picks the order code of that sex (2n+1 male, 2n female)."""
    if not is_valid_division_code(region_code):
        raise ValueError("region_code must be a valid six-digit division code")
    if not isinstance(birth_date, dt.date) or isinstance(birth_date, dt.datetime):
        raise ValueError("birth_date must be a datetime.date")
    if not EARLIEST_BIRTH_DATE <= birth_date <= (today or china_today()):
        raise ValueError(f"birth_date must lie between {EARLIEST_BIRTH_DATE.isoformat()} and today")
    if isinstance(sequence, bool) or not isinstance(sequence, int) or not 0 <= sequence <= 499:
        raise ValueError("sequence must be an integer from 0 to 499")
    if sex not in ("male", "female"):
        raise ValueError('sex must be "male" or "female"')
    order = sequence * 2 + (1 if sex == "male" else 0)
    first17 = f"{region_code}{birth_date:%Y%m%d}{order:03d}"
    return first17 + national_id_check_char(first17)


def uscc_check_char(first17: str) -> str:
    """The GB 32100-2015 check character for the first 17 characters of a credit code."""
    if not isinstance(first17, str) or len(first17) != 17:
        raise IdentifierError("length", "the body of a unified social credit code is 17 characters")
    total = 0
    for char, weight in zip(first17, _USCC_WEIGHTS):
        index = USCC_CHARSET.find(char)
        if index < 0:
            raise IdentifierError(
                "charset", f"{char!r} is not a character of unified social credit codes"
            )
        total += index * weight
    return USCC_CHARSET[(31 - total % 31) % 31]


def parse_uscc(value: str) -> str:
    """Validate a unified social credit code (统一社会信用代码) and return it upper-cased."""
    if not isinstance(value, str):
        raise IdentifierError("type", "a unified social credit code must be a string")
    if len(value) != 18:
        raise IdentifierError(
            "length", f"unified social credit code has {len(value)} characters; it must have 18"
        )
    value = value.upper()
    for position, char in enumerate(value, start=1):
        if char not in USCC_CHARSET:
            raise IdentifierError(
                "charset",
                f"unified social credit code: character {position} ({char!r}) is not one of "
                f"{USCC_CHARSET}",
            )
    if value[17] != uscc_check_char(value[:17]):
        raise IdentifierError(
            "check-digit",
            # The value is not echoed: a national ID number typed into the wrong field lands here.
            "unified social credit code: the check character does not match the other 17",
        )
    return value


def _organization_code_check_char(body8: str) -> str:
    total = sum(USCC_CHARSET.index(char) * weight for char, weight in zip(body8, _ORG_CODE_WEIGHTS))
    check = 11 - total % 11
    return {10: "X", 11: "0"}.get(check, str(check))


def make_uscc(seed: str | int, *, region_code: str = "370000") -> str:
    """Build a valid credit code, the same for the same seed, shaped like a public
    institution's (registration authority 1, category 2 事业单位) as public hospitals have."""
    if not is_valid_division_code(region_code):
        raise ValueError("region_code must be a valid six-digit division code")
    digest = hashlib.sha256(f"qilu-uscc:{seed!r}".encode()).digest()
    body8 = f"{int.from_bytes(digest[:8], 'big') % 10**8:08d}"
    first17 = "12" + region_code + body8 + _organization_code_check_char(body8)
    return first17 + uscc_check_char(first17)
