"""Administrative division codes of GB/T 2260 and how near two places are to each other."""

from __future__ import annotations

import re
from typing import Literal

# Keyed by the two-digit province part of a division code: it is what ID numbers and
# division codes share, and "370000" is just that prefix padded with zeros.
PROVINCE_CODES: dict[str, str] = {
    "11": "北京市",
    "12": "天津市",
    "13": "河北省",
    "14": "山西省",
    "15": "内蒙古自治区",
    "21": "辽宁省",
    "22": "吉林省",
    "23": "黑龙江省",
    "31": "上海市",
    "32": "江苏省",
    "33": "浙江省",
    "34": "安徽省",
    "35": "福建省",
    "36": "江西省",
    "37": "山东省",
    "41": "河南省",
    "42": "湖北省",
    "43": "湖南省",
    "44": "广东省",
    "45": "广西壮族自治区",
    "46": "海南省",
    "50": "重庆市",
    "51": "四川省",
    "52": "贵州省",
    "53": "云南省",
    "54": "西藏自治区",
    "61": "陕西省",
    "62": "甘肃省",
    "63": "青海省",
    "64": "宁夏回族自治区",
    "65": "新疆维吾尔自治区",
    "71": "台湾省",
    "81": "香港特别行政区",
    "82": "澳门特别行政区",
}

# Municipalities directly under the central government: their city part (01 districts,
# 02 counties) is a bookkeeping split, not a city, so the whole municipality is one city.
MUNICIPALITY_PROVINCES = frozenset({"11", "12", "31", "50"})

# City part 90 groups county-level units governed directly by the province (e.g. 济源 419001);
# each of them is a city of its own, not a county of a shared "90" city.
PROVINCE_ADMINISTERED_CITY_PART = "90"

DivisionLevel = Literal["province", "city", "county"]

_SIX_DIGITS = re.compile(r"[0-9]{6}")


def is_valid_division_code(code: str) -> bool:
    """True for six digits whose province is known and whose parts nest.

    The rule applied: a known province (PROVINCE_CODES), and a county part other than "00"
    only under a city part other than "00" (no GB/T 2260 code looks like 37 00 12).
    Whether the city or county exists is not checked: the national list changes yearly and
    ID numbers keep the code that was valid when they were issued.
    """
    if not isinstance(code, str) or not _SIX_DIGITS.fullmatch(code):
        return False
    if code[:2] not in PROVINCE_CODES:
        return False
    return not (code[2:4] == "00" and code[4:6] != "00")


def division_level(code: str) -> DivisionLevel:
    """Whether a division code names a province, a city (prefecture) or a county (district)."""
    if not is_valid_division_code(code):
        raise ValueError("not a valid six-digit administrative division code")
    if code[2:] == "0000":
        return "province"
    if code[4:] == "00":
        return "city"
    return "county"


def _city_key(code: str) -> str | None:
    """The part of a code that identifies its city, or None for a province-level code."""
    level = division_level(code)
    if level == "province":
        return None
    if code[:2] in MUNICIPALITY_PROVINCES:
        return code[:2]
    if code[2:4] == PROVINCE_ADMINISTERED_CITY_PART:
        # Only the county-level unit itself is its "city"; the bare 4190 00 groups nothing.
        return code if level == "county" else None
    return code[:4]


def same_city(a: str, b: str) -> bool:
    """True when both codes lie in the same prefecture-level city (a city code lies in itself).

    Codes that are not valid name no place and so share no city.
    """
    if not (is_valid_division_code(a) and is_valid_division_code(b)):
        return False
    key_a, key_b = _city_key(a), _city_key(b)
    return key_a is not None and key_a == key_b


def same_county(a: str, b: str) -> bool:
    """True when both codes name the same county-level division."""
    if not (is_valid_division_code(a) and is_valid_division_code(b)):
        return False
    return division_level(a) == "county" and a == b


def nearness(a: str, b: str) -> int:
    """3 for the same county, 2 for the same city, 1 for the same province, 0 otherwise."""
    if not (is_valid_division_code(a) and is_valid_division_code(b)):
        return 0
    if same_county(a, b):
        return 3
    if same_city(a, b):
        return 2
    if a[:2] == b[:2]:
        return 1
    return 0
