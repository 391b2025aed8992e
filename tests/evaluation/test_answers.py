import pytest

from model.labels import EXPRESSIONS, UTK_GENDERS, UTK_RACES
from pipelines.evaluation.answers import parse_choice, parse_name, parse_number, parse_yes_no


@pytest.mark.parametrize("text, expected", [
    ("Yes.", 1), ("No.", 0), ("yes", 1), ("  NO ", 0), ("Yes, this person has bangs.", 1),
    ("No, this person has no bangs.", 0), ("Yes, but not much.", 1), ("Not really.", 0),
    ("The answer is yes", 1), ("I cannot tell.", None), ("", None), ("Yesterday", None), ("Nobody", None),
])
def test_yes_no(text, expected):
    assert parse_yes_no(text) == expected


OPTIONS = ["baby (0-2)", "child (3-9)", "teenager (10-19)", "twenties (20-29)"]


@pytest.mark.parametrize("text, expected", [
    ("B. child (3-9)", 1), ("B", 1), ("(c)", 2), ("d) twenties", 3), ("Option A", 0), ("b.", 1),
    ("teenager (10-19).", 2), ("E", None), ("Both baby and child", None), ("Bigger", None), ("", None),
])
def test_choice(text, expected):
    assert parse_choice(text, OPTIONS) == expected


@pytest.mark.parametrize("text, names, expected", [
    ("female.", UTK_GENDERS, 1), ("Male.", UTK_GENDERS, 0), ("A 34-year-old female (thirties)", UTK_GENDERS, 1),
    ("male or female", UTK_GENDERS, None), ("Happiness.", EXPRESSIONS, 3),
    ("happiness and surprise", EXPRESSIONS, None),
    ("Asian.", UTK_RACES, 2), ("others", UTK_RACES, 4), ("Caucasian", UTK_RACES, None),
])
def test_name(text, names, expected):
    assert parse_name(text, names) == expected


@pytest.mark.parametrize("text, expected", [
    ("34 years old.", 34), ("About 7.", 7), ("A 61-year-old male", 61), ("twenty", None), ("3.5", None),
    ("", None), ("Age: 116", 116),
])
def test_number(text, expected):
    assert parse_number(text) == expected
