"""Every range of the config, declared once and refused the same everywhere.

The walk below finds the bounded fields from their declarations
(`config.bounded_fields`), not from a list, so a new field with a range is
tested the day it is added. Each out-of-range value goes through what a
binary does before it touches its workdir: the flag parser
(`common.parse_flags`), the config check (`common.config_from_flags`, for
values from --config=FILE) and `train.train_and_evaluate` under
`common.run_or_fail` on an empty workdir, which must stay empty and
unlocked. A few cases run `pipelines.train` as a real process.
"""

import json
import math
import os
import subprocess
import sys
import typing

import numpy as np
import pytest
from absl import app, flags

import tfr_ssl  # noqa: F401
from pipelines import common
from tfr_ssl import config as config_lib
from tfr_ssl.data import splits
from tfr_ssl.evaluation import slices as eval_slices
from tfr_ssl.model import augment
from tfr_ssl.training import train, workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOUNDED = config_lib.bounded_fields()


def _item_kind(kind):
  """int for tuple[int, ...], else the type itself."""
  return typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else kind


def out_of_range(bounds: config_lib.Bounds, kind) -> list:
  """Values just outside each end, and the non-finite floats."""
  item = _item_kind(kind)
  values = []
  if bounds.low is not None:
    values.append(bounds.low if bounds.low_open else bounds.low - 1)
  if bounds.high is not None:
    values.append(bounds.high if bounds.high_open else bounds.high + 1)
  if item is float:
    values += [math.inf, -math.inf, math.nan]
  if item is not kind:  # a tuple field: one bad value among good ones
    good = max(bounds.low or 0, 1)
    values = [(good, v) for v in values]
    if bounds.min_items:
      values.append(())
  return values


CASES = [
  pytest.param(path, value, id=f"{path}={value}")
  for path, (bounds, kind) in BOUNDED.items()
  for value in out_of_range(bounds, kind)
]


def as_flag(value) -> str:
  if isinstance(value, tuple):
    return ",".join(str(v) for v in value)
  return str(value)


def assert_untouched(path):
  # Nothing created (no lock file, no config.json), and free to lock.
  assert os.listdir(path) == []
  with workdir.lock(str(path)):
    pass


def test_every_numeric_field_declares_a_range():
  # A numeric field with no range would take any value (and a float,
  # inf); the walk below would not see it.
  for path, _, kind in config_lib.fields_of(config_lib.Config):
    if _item_kind(kind) in (int, float):
      assert path in BOUNDED, path
  # The walk is not vacuous: every bounded field has a bad value.
  for path, (bounds, kind) in BOUNDED.items():
    assert out_of_range(bounds, kind), path
  # The defaults are in range.
  config_lib.check(config_lib.Config())


@pytest.mark.parametrize("path, value", CASES)
def test_a_flag_out_of_range_is_one_line_at_parse_time(path, value, capsys):
  flag_values = flags.FlagValues()
  common.define_config_flags(flag_values)
  name = common.flag_of(path)
  with pytest.raises(SystemExit) as exit_info:
    common.parse_flags(["train", f"--{name}={as_flag(value)}"], flag_values)
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  lines = err.splitlines()
  assert len(lines) == 1, err
  prefix = f"error: flag --{name}={as_flag(value)}: {path} "
  assert lines[0].startswith(prefix), err
  assert "must" in lines[0] or "needs" in lines[0], err
  assert "--help" in lines[0], err


@pytest.mark.parametrize("path, value", CASES)
def test_a_config_file_value_out_of_range_is_refused_naming_its_flag(
  path, value
):
  # What --config=FILE gives: the value reaches the config check.
  base = config_lib.Config().override({path: value})
  with pytest.raises(app.UsageError) as error:
    common.config_from_flags(base)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"--{common.flag_of(path)} ({path}): "), message


@pytest.mark.parametrize("path, value", CASES)
def test_training_refuses_it_in_one_line_leaving_the_workdir_untouched(
  path, value, tmp_path, capsys
):
  # What pipelines.train does with the config: train_and_evaluate under
  # run_or_fail. The range is checked before the workdir is locked.
  run = tmp_path / "run"
  run.mkdir()
  config = config_lib.Config().override({path: value})
  with pytest.raises(SystemExit) as exit_info:
    common.run_or_fail(train.train_and_evaluate, config, str(run))
  assert exit_info.value.code == 1
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1, lines
  assert lines[0].startswith(f"error: --{common.flag_of(path)} ({path}): ")
  assert_untouched(run)


def test_the_flag_and_the_check_agree_on_every_end():
  # At each declared end, the flag accepts exactly what check_value
  # accepts: open ends are refused, closed ends taken, by both.
  flag_values = flags.FlagValues()
  common.define_config_flags(flag_values)
  for path, (bounds, kind) in BOUNDED.items():
    item = _item_kind(kind)
    for end, is_open in (
      (bounds.low, bounds.low_open),
      (bounds.high, bounds.high_open),
    ):
      if end is None:
        continue
      value = (end,) if item is not kind else end
      parser = flag_values[common.flag_of(path)].parser
      try:
        config_lib.check_value(path, value)
        checked = True
      except config_lib.ConfigError:
        checked = False
      try:
        parser.parse(as_flag(value))
        parsed = True
      except ValueError:
        parsed = False
      assert checked == parsed == (not is_open), (path, value)


def test_the_layers_read_the_same_rule():
  # ssl.mask_rate = 1 under random masking masks every content feature
  # in both views: nothing to contrast, so the augmenter, the config and
  # the flag all refuse it (it once passed the config and then failed in
  # the augmenter with a trace).
  with pytest.raises(config_lib.ConfigError, match=r"ssl\.mask_rate.*\[0, 1\)"):
    augment.Augmenter(["id", "a", "b"], masking="random", mask_rate=1.0)
  assert augment.Augmenter(["id", "a", "b"], masking="random", mask_rate=0.9)
  mask_rate = config_lib.Config().override({"ssl.mask_rate": 1.0})
  with pytest.raises(config_lib.ConfigError, match=r"ssl\.mask_rate"):
    workdir.check_config(mask_rate)
  # eval.head_fraction is [0, 1] for the config and the slices alike: 1
  # calls every seen item head (the tail is empty).
  workdir.check_config(
    config_lib.Config().override({"eval.head_fraction": 1.0})
  )
  slices = eval_slices.item_slices(np.array([3, 0, 1]), head_fraction=1.0)
  np.testing.assert_array_equal(slices["head"], [True, False, True])
  with pytest.raises(
    ValueError, match=r"eval\.head_fraction: must be in \[0, 1\]"
  ):
    eval_slices.item_slices(np.array([3, 0, 1]), head_fraction=math.nan)
  # The split fractions: one rule for the data and the config.
  with pytest.raises(config_lib.ConfigError, match="leave nothing to train on"):
    splits.check_fractions(0.5, 0.5, 1.0)
  with pytest.raises(config_lib.ConfigError, match="leave nothing to train on"):
    workdir.check_config(
      config_lib.Config().override(
        {"data.validation_fraction": 0.5, "data.test_fraction": 0.5}
      )
    )


def test_a_batch_that_does_not_split_over_the_replicas_is_refused():
  config_lib.check_batch_split("train.batch_size", 1024, 4)
  with pytest.raises(config_lib.ConfigError, match="use a multiple of 3") as e:
    config_lib.check_batch_split("train.batch_size", 1024, 3)
  assert e.value.path == "train.batch_size"


# -------------------------------------------------- as a user runs it


def run_train(workdir_path, *args, cwd=REPO):
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "pipelines.train",
      f"--workdir={workdir_path}",
      *args,
    ],
    capture_output=True,
    text=True,
    cwd=cwd,
    env={**os.environ, "PYTHONPATH": REPO},
    timeout=300,
  )


def assert_one_error_line(result, *fragments):
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = result.stderr.splitlines()
  # One line: not the --help (hundreds of lines) before it.
  assert len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith("error: "), lines[0]
  assert "python -m pipelines.train --help" in lines[0], lines[0]
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
  "args, fragments",
  [
    # A bad float: inf once passed `> 0` and trained on NaN losses.
    (
      ["--learning_rate=inf"],
      ["--learning_rate=inf: train.learning_rate must be a finite"],
    ),
    # The case that passed the config check and then crashed.
    (
      ["--masking=random", "--mask_rate=1.0"],
      ["--mask_rate=1.0: ssl.mask_rate must be in [0, 1)"],
    ),
    # A bad enum, an unknown flag.
    (["--masking=bogus"], ["--masking=bogus: value should be one of"]),
    (["--bogus_flag=1"], ["Unknown command line flag 'bogus_flag'"]),
  ],
  ids=["inf", "mask_rate", "enum", "unknown"],
)
def test_train_refuses_a_bad_flag_in_one_line_before_the_workdir(
  tmp_path, args, fragments
):
  run = tmp_path / "run"
  run.mkdir()
  assert_one_error_line(run_train(run, *args), *fragments)
  assert_untouched(run)


def test_train_refuses_a_nan_from_a_config_file_in_one_line(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  path = tmp_path / "config.json"
  # json writes NaN (not strict JSON, but what json.dumps gives).
  path.write_text(json.dumps({"ssl": {"temperature": math.nan}}))
  result = run_train(run, f"--config={path}")
  assert_one_error_line(
    result, "--ssl_temperature (ssl.temperature): must be a finite number"
  )
  assert_untouched(run)


def test_every_float_flag_of_a_binary_refuses_non_finite_values():
  # A binary's own float flag goes through FiniteFloatParser (a config
  # flag through its field's range): absl's DEFINE_float takes nan within
  # any bounds, and inf above a lower one.
  folder = os.path.join(REPO, "pipelines")
  for name in os.listdir(folder):
    if name.endswith(".py") and name != "common.py":
      with open(os.path.join(folder, name)) as f:
        assert "DEFINE_float" not in f.read(), name
  parser = common.FiniteFloatParser(0, None)
  assert parser.parse("2.5") == 2.5
  for text in ("inf", "nan"):
    with pytest.raises(ValueError, match=r"^\w+ is not a finite number$"):
      parser.parse(text)
  # Below the lower bound: absl's own check, first.
  with pytest.raises(ValueError, match="is not a non-negative number"):
    parser.parse("-inf")
