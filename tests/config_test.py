"""Tests of the typed config: JSON round trip, overrides, validation."""

import math

import pytest

from tfr_ssl import config as config_lib


def test_json_round_trip_is_identity():
  config = config_lib.Config().override(
    {"ssl.alpha": 0.3, "model.query_layers": (128, 64)}
  )
  assert config_lib.Config.from_json(config.to_json()) == config


def test_override_coerces_strings_like_flags_give_them():
  config = config_lib.Config().override(
    {
      "ssl.alpha": "0.3",
      "model.item_layers": "512,128",
      "model.remove_accidental_hits": "false",
      "train.epochs": "3",
    }
  )
  assert config.ssl.alpha == 0.3
  assert config.model.item_layers == (512, 128)
  assert config.model.remove_accidental_hits is False
  assert config.train.epochs == 3


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"ssl.bogus": 1}, "Unknown config key 'ssl.bogus'"),
    ({"nope.alpha": 1}, "Unknown config key 'nope.alpha'"),
    ({"ssl": 1}, "Unknown config key 'ssl'"),
    ({"ssl.masking": "xx"}, "'ssl.masking' must be one of"),
    ({"train.epochs": 1.5}, "'train.epochs' expects int"),
    ({"train.epochs": "many"}, "'train.epochs' expects int"),
  ],
)
def test_bad_overrides_name_the_field(overrides, message):
  with pytest.raises(ValueError, match=message):
    config_lib.Config().override(overrides)


def test_unknown_key_in_json_names_the_section():
  with pytest.raises(ValueError, match="section 'model': colour"):
    config_lib.Config.from_dict({"model": {"colour": "red"}})


def test_every_field_has_help_text():
  # The binaries turn help text into flag help; an undocumented field would
  # be an undocumented flag.
  for name, field, _ in config_lib.fields_of(config_lib.Config):
    assert field.metadata.get("help"), name


@pytest.mark.parametrize(
  "bounds, is_float, words, inside, outside",
  [
    (config_lib.AT_LEAST_1, False, ">= 1", [1, 10**30], [0, -1]),
    (
      config_lib.POSITIVE,
      True,
      "a finite number > 0",
      [1e-30, 1e30],
      [0.0, -1.0, math.inf, math.nan],
    ),
    (config_lib.RATE, True, "in [0, 1)", [0.0, 0.999], [1.0, -0.1, math.nan]),
    (config_lib.SHARE, True, "in (0, 1]", [1.0, 1e-9], [0.0, 1.5, math.inf]),
    (config_lib.FINITE, True, "a finite number", [-1e300, 0.0], [-math.inf]),
  ],
)
def test_bounds_say_and_hold_their_ends(
  bounds, is_float, words, inside, outside
):
  assert bounds.describe(is_float) == words
  for value in inside:
    assert bounds.contains(value), value
  for value in outside:
    assert not bounds.contains(value), value


def test_check_value_names_the_field_its_range_and_the_value():
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.check_value("train.learning_rate", math.inf)
  assert error.value.path == "train.learning_rate"
  assert error.value.reason == "must be a finite number > 0, got inf"
  with pytest.raises(config_lib.ConfigError, match=r"every value must be >= 1"):
    config_lib.check_value("eval.ks", (10, 0))
  with pytest.raises(config_lib.ConfigError, match=r"needs at least 1 value,"):
    config_lib.check_value("eval.ks", ())
  config_lib.check_value("model.query_layers", ())  # no hidden layer is fine


def test_an_infinite_value_for_an_int_field_is_a_value_error():
  # json reads Infinity; int(inf) raises OverflowError, which once escaped
  # as a trace instead of naming the field.
  with pytest.raises(ValueError, match=r"'train\.epochs' expects int"):
    config_lib.Config.from_json('{"train": {"epochs": Infinity}}')
