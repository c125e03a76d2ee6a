"""Division codes against the real codes of Shandong's cities and counties."""

import pytest

from fhir_profiles.divisions import (
    PROVINCE_CODES,
    division_level,
    is_valid_division_code,
    nearness,
    same_city,
    same_county,
)

# Real GB/T 2260 codes: 济南 and its 平阴县, 商河县; 青岛 and 胶州, 平度; 菏泽's 曹县, 单县.
JINAN, PINGYIN, SHANGHE = "370100", "370124", "370126"
QINGDAO, JIAOZHOU, PINGDU = "370200", "370281", "370283"
CAOXIAN, SHANXIAN = "371721", "371722"


def test_province_table_holds_the_34_province_level_divisions():
    assert len(PROVINCE_CODES) == 34
    assert PROVINCE_CODES["37"] == "山东省"
    assert "83" not in PROVINCE_CODES and "10" not in PROVINCE_CODES


@pytest.mark.parametrize("code", ["370000", JINAN, PINGYIN, "371700", SHANXIAN, "110105", "500228", "419001", "820000"])
def test_real_codes_are_valid(code):
    assert is_valid_division_code(code)


@pytest.mark.parametrize("code", ["990102", "380100", "370012", "37010", "3701000", "37o100", "", None, 370100])
def test_impossible_codes_are_not(code):
    assert not is_valid_division_code(code)


@pytest.mark.parametrize(
    ("code", "level"), [("370000", "province"), (JINAN, "city"), (PINGYIN, "county"), ("370102", "county")]
)
def test_division_level(code, level):
    assert division_level(code) == level


def test_division_level_refuses_an_invalid_code():
    with pytest.raises(ValueError):
        division_level("370012")


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (PINGYIN, PINGYIN, 3),
        (PINGYIN, SHANGHE, 2),
        (PINGYIN, JINAN, 2),
        (JINAN, JINAN, 2),
        (PINGYIN, JIAOZHOU, 1),
        (JINAN, QINGDAO, 1),
        (PINGYIN, "370000", 1),
        (CAOXIAN, SHANXIAN, 2),
        (PINGYIN, "110105", 0),
        # Beijing's districts (01) and former counties (02) are one city.
        ("110105", "110228", 2),
        # 济源 and 仙桃-like units under city part 90 are cities of their own.
        ("419001", "419002", 1),
        ("370012", "370012", 0),
        (PINGYIN, "not-a-code", 0),
    ],
)
def test_nearness(a, b, expected):
    assert nearness(a, b) == expected
    assert nearness(b, a) == expected


def test_same_city_and_same_county():
    assert same_city(JIAOZHOU, PINGDU) and same_city(QINGDAO, PINGDU)
    assert not same_city(JIAOZHOU, PINGYIN)
    assert not same_city("370000", "370000")
    assert same_county(SHANXIAN, SHANXIAN)
    assert not same_county(JINAN, JINAN)
    assert not same_county(CAOXIAN, SHANXIAN)
