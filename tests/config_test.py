"""Tests of the typed config: JSON round trip, overrides, validation."""

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
