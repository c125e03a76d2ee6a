"""National ID, USCC and masking rules, checked against numbers worked out by hand and from the standards."""

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_profiles.identifiers import (
    china_today,
    IdentifierError,
    make_national_id,
    make_uscc,
    mask_name,
    mask_national_id,
    national_id_check_char,
    parse_national_id,
    parse_uscc,
    uscc_check_char,
)

TODAY = dt.date(2025, 6, 1)


@pytest.mark.parametrize(
    ("value", "region", "birth_date", "sex"),
    [
        # The worked example of GB 11643-1999 itself, with an X check character.
        ("11010519491231002X", "110105", dt.date(1949, 12, 31), "female"),
        ("37010219850307123X", "370102", dt.date(1985, 3, 7), "male"),
        ("370124196005010062", "370124", dt.date(1960, 5, 1), "female"),
        ("371722200002290046", "371722", dt.date(2000, 2, 29), "female"),
        ("370283199912319994", "370283", dt.date(1999, 12, 31), "male"),
        ("370102189001011232", "370102", dt.date(1890, 1, 1), "male"),
        ("810000198503071239", "810000", dt.date(1985, 3, 7), "male"),
    ],
)
def test_valid_national_ids_parse_to_region_birth_date_and_sex(value, region, birth_date, sex):
    parsed = parse_national_id(value, today=TODAY)
    assert (parsed.value, parsed.region_code, parsed.birth_date, parsed.sex) == (value, region, birth_date, sex)


def test_lower_case_x_is_accepted_and_upper_cased():
    assert parse_national_id("37010219850307123x", today=TODAY).value == "37010219850307123X"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("370124196005010063", "check-digit"),
        ("370102198503071230", "check-digit"),
        ("370102199002301230", "birth-date"),  # 30 February
        ("370102200102291231", "birth-date"),  # 29 February of a common year
        ("370102199013011239", "birth-date"),  # month 13
        ("370102000000001233", "birth-date"),
        ("370102188912311231", "birth-date"),  # before 1890
        ("370102209901011233", "future-birth-date"),
        ("990102198503071235", "region"),
        ("720102198503071235", "region"),
        ("370012198503071237", "region"),  # a county part under city part 00
        ("37010219850307123", "length"),
        ("37010219850307123X0", "length"),
        ("", "length"),
        ("37010219850307A23X", "charset"),
        ("370102198503071X3X", "charset"),
        ("３７0102198503071230", "charset"),  # full-width digits
        ("37010219850307123Y", "charset"),
    ],
)
def test_invalid_national_ids_name_the_broken_rule(value, code):
    with pytest.raises(IdentifierError) as caught:
        parse_national_id(value, today=TODAY)
    assert caught.value.code == code
    assert isinstance(caught.value, ValueError)


def test_birth_date_today_is_not_in_the_future():
    value = make_national_id("370102", TODAY, 0, "female")
    assert parse_national_id(value, today=TODAY).birth_date == TODAY
    with pytest.raises(IdentifierError) as caught:
        parse_national_id(value, today=TODAY - dt.timedelta(days=1))
    assert caught.value.code == "future-birth-date"


def test_check_char_of_the_standard_example():
    assert national_id_check_char("11010519491231002") == "X"
    assert national_id_check_char("44052418800101001") == "4"
    with pytest.raises(IdentifierError):
        national_id_check_char("1101051949123100")


@pytest.mark.parametrize(
    ("region", "birth_date", "sequence", "sex", "expected"),
    [
        ("370102", dt.date(1985, 3, 7), 61, "male", "37010219850307123X"),
        ("370124", dt.date(1960, 5, 1), 3, "female", "370124196005010062"),
        ("370283", dt.date(1999, 12, 31), 499, "male", "370283199912319994"),
    ],
)
def test_make_national_id_builds_the_number_worked_out_by_hand(region, birth_date, sequence, sex, expected):
    assert make_national_id(region, birth_date, sequence, sex) == expected


@pytest.mark.parametrize(
    "arguments",
    [
        ("990102", dt.date(1985, 3, 7), 1, "male"),
        ("370102", dt.date(1889, 12, 31), 1, "male"),
        ("370102", TODAY + dt.timedelta(days=1), 1, "male"),
        ("370102", dt.date(1985, 3, 7), 500, "male"),
        ("370102", dt.date(1985, 3, 7), -1, "male"),
        ("370102", dt.date(1985, 3, 7), 1, "other"),
    ],
)
def test_make_national_id_refuses_what_it_cannot_build(arguments):
    with pytest.raises(ValueError):
        make_national_id(*arguments, today=TODAY)


def test_make_national_id_refuses_tomorrow_by_the_clock_of_china():
    # Worked out when the test runs, not when it is collected: a run that crosses midnight
    # must still be asking about tomorrow.
    tomorrow = china_today() + dt.timedelta(days=1)
    with pytest.raises(ValueError):
        make_national_id("370102", tomorrow, 1, "male")
    assert make_national_id("370102", china_today(), 1, "male")


def test_a_birth_after_midnight_in_china_is_today_there_while_utc_is_still_on_yesterday():
    # 01:30 in Jinan on 1 June is 17:30 UTC on 31 May.
    evening_in_utc = dt.datetime(2025, 5, 31, 17, 30, tzinfo=dt.UTC)
    assert china_today(evening_in_utc) == dt.date(2025, 6, 1)
    assert china_today(dt.datetime(2025, 5, 31, 15, 59, tzinfo=dt.UTC)) == dt.date(2025, 5, 31)
    newborn = make_national_id("370102", dt.date(2025, 6, 1), 0, "female", today=china_today(evening_in_utc))
    assert parse_national_id(newborn, today=china_today(evening_in_utc)).birth_date == dt.date(2025, 6, 1)
    with pytest.raises(ValueError):
        china_today(dt.datetime(2025, 5, 31, 17, 30))


REAL_SHANDONG_CODES = ["370000", "370100", "370124", "370126", "370281", "371082", "371721", "110105", "500228"]

national_id_arguments = st.tuples(
    st.sampled_from(REAL_SHANDONG_CODES),
    st.dates(min_value=dt.date(1890, 1, 1), max_value=china_today()),
    st.integers(min_value=0, max_value=499),
    st.sampled_from(["male", "female"]),
)


@given(national_id_arguments)
def test_every_made_national_id_parses_back_to_what_it_was_made_of(arguments):
    region, birth_date, sequence, sex = arguments
    parsed = parse_national_id(make_national_id(region, birth_date, sequence, sex))
    assert (parsed.region_code, parsed.birth_date, parsed.sex) == (region, birth_date, sex)


@given(national_id_arguments, st.integers(min_value=0, max_value=16), st.integers(min_value=1, max_value=9))
def test_one_changed_digit_is_always_caught_and_never_echoed(arguments, position, shift):
    value = make_national_id(*arguments)
    digit = str((int(value[position]) + shift) % 10)
    broken = value[:position] + digit + value[position + 1 :]
    with pytest.raises(IdentifierError) as caught:
        parse_national_id(broken)
    assert broken not in str(caught.value)
    assert broken[6:14] not in str(caught.value)


@given(national_id_arguments)
def test_the_mask_hides_the_birth_date_and_order_code(arguments):
    value = make_national_id(*arguments)
    masked = mask_national_id(value)
    assert masked == value[:6] + "********" + value[-4:]
    assert value[6:14] not in masked
    assert value not in repr(parse_national_id(value))


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("37010219850307123X", "370102********123X"),
        ("3701021985030712", "**************12"),
        ("370102198503071230X", "*****************0X"),
        ("1234", "****"),
        ("", ""),
    ],
)
def test_mask_national_id(value, masked):
    assert mask_national_id(value) == masked


@pytest.mark.parametrize(
    ("name", "masked"),
    [
        ("张三", "张*"),
        ("王小明", "王**"),
        ("欧阳娜娜", "欧阳**"),
        ("欧阳修", "欧阳*"),
        ("王", "*"),
        ("阿依古丽·买买提", "阿*******"),
        ("Li Wei", "L***"),
        ("Alexander", "A***"),
        ("  张三 ", "张*"),
        ("", ""),
    ],
)
def test_mask_name(name, masked):
    assert mask_name(name) == masked


# Credit codes published by the companies themselves, and the sample of GB 32100-2015.
@pytest.mark.parametrize("value", ["91350100M000100Y43", "91440300708461136T", "914403001922038216"])
def test_published_credit_codes_are_valid(value):
    assert parse_uscc(value) == value
    assert uscc_check_char(value[:17]) == value[17]


# Worked out by hand: weighted sums 0 and 1 mod 31, the two ends of the check-character table.
@pytest.mark.parametrize("value", ["123700004955709880", "1237000049557098JY"])
def test_credit_codes_whose_check_character_wraps_around(value):
    assert parse_uscc(value) == value


def test_lower_case_credit_code_is_upper_cased():
    assert parse_uscc("91350100m000100y43") == "91350100M000100Y43"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("91350100M000100Y44", "check-digit"),
        ("91440300708461136X", "check-digit"),
        ("91350100M000100Y4", "length"),
        ("91350100M000100Y433", "length"),
        ("91350100I000100Y43", "charset"),  # I is left out of the charset
        ("91350100O000100Y43", "charset"),
        ("9135010-M000100Y43", "charset"),
    ],
)
def test_invalid_credit_codes_name_the_broken_rule(value, code):
    with pytest.raises(IdentifierError) as caught:
        parse_uscc(value)
    assert caught.value.code == code


def test_a_national_id_in_the_credit_code_field_is_not_echoed():
    with pytest.raises(IdentifierError) as caught:
        parse_uscc("37010219850307123X")
    assert "37010219850307123X" not in str(caught.value)


@given(st.one_of(st.integers(), st.text(max_size=30)))
def test_made_credit_codes_are_valid_and_repeatable(seed):
    code = make_uscc(seed)
    assert parse_uscc(code) == code
    assert code == make_uscc(seed)
    assert code.startswith("12370000")


def test_made_credit_codes_differ_by_seed_and_region():
    codes = {make_uscc(seed) for seed in range(200)}
    assert len(codes) == 200
    assert make_uscc("x", region_code="370124")[2:8] == "370124"
