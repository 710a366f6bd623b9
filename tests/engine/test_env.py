"""Env helpers: one parser per kind of value, errors that name the variable."""

from __future__ import annotations

import pytest

from engine.env import env_bool, env_float, env_int, env_rate, parse_rate


def test_unset_or_empty_means_the_default() -> None:
    env = {"EMPTY": ""}
    assert env_float(env, "EMPTY", 1.5) == 1.5 and env_float(env, "UNSET", 2.0) == 2.0
    assert env_int(env, "EMPTY", 3) == 3 and env_bool(env, "UNSET", True) is True
    assert env_rate(env, "RATE_X", 0.25) == 0.25


def test_values_are_parsed() -> None:
    env = {"F": "0.5", "Z": "0", "I": "10.0", "B1": " Yes", "B0": "off", "R": "10 / min"}
    assert env_float(env, "F", 1.0) == 0.5 and env_float(env, "Z", 1.0) == 0.0
    assert env_int(env, "I", 1) == 10
    assert env_bool(env, "B1") is True and env_bool(env, "B0", True) is False
    assert env_rate(env, "R", 1.0) == pytest.approx(10 / 60)
    assert parse_rate("1/s") == 1.0 and parse_rate("5") == 5.0 and parse_rate("120/h") == pytest.approx(1 / 30)


@pytest.mark.parametrize("call, message", [
    (lambda: env_float({"T": "ten"}, "T", 1.0), "T must be a number, got 'ten'"),
    (lambda: env_float({"T": "nan"}, "T", 1.0), "T must be a number"),
    (lambda: env_float({"T": "-1"}, "T", 1.0), "T must not be negative"),
    (lambda: env_float({"T": "0"}, "T", 1.0, positive=True), "T must be above 0"),
    (lambda: env_int({"N": "2.5"}, "N", 1), "N must be a whole number, got '2.5'"),
    (lambda: env_bool({"AUTO_APPROVE": "ture"}, "AUTO_APPROVE"), "AUTO_APPROVE must be one of"),
    (lambda: env_rate({"RATE_ZILLOW": "10/fortnight"}, "RATE_ZILLOW", 1.0), "RATE_ZILLOW must look like '10/min'"),
    (lambda: env_rate({"RATE_SES": "0/s"}, "RATE_SES", 1.0), "RATE_SES must be above 0"),
])
def test_garbage_is_a_value_error_naming_the_variable(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        call()
