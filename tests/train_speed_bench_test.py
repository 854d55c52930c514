"""bench/train_speed.py: flags, config and report, without measuring."""

import os
import sys
import types

import pytest

# The bench scripts import their siblings by name, as when run from bench/.
sys.path.insert(
  0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench")
)
import train_speed


def test_flags_and_base_config(tmp_path):
  args = train_speed.parse_args(["--cache_dir", str(tmp_path / "cache")])
  assert (args.rounds, args.steps, args.profile_steps, args.out) == (
    3,
    60,
    40,
    "",
  )
  missing = train_speed.parse_args(["--data_dir", str(tmp_path / "none")])
  assert train_speed.base_config(missing).data.source == "synthetic"
  present = train_speed.parse_args(["--data_dir", str(tmp_path)])
  config = train_speed.base_config(present)
  assert config.data.source == "movielens"
  assert config.data.data_dir == str(tmp_path)
  with pytest.raises(SystemExit):
    train_speed.parse_args(["--rounds", "x"])


def _measured():
  ts = train_speed
  return ts.Measured(
    flops={
      "input pipeline alone": 0.0,
      ts.TUTORIAL: ts.tutorial_flops(ts.TUTORIAL_BATCH),
      ts.MAIN_20: 1e9,
      ts.SSL_20: 2e9,
    },
    batch={
      "input pipeline alone": 1024,
      ts.TUTORIAL: ts.TUTORIAL_BATCH,
      ts.MAIN_20: 1024,
      ts.SSL_20: 1024,
    },
    rates={
      "input pipeline alone": [4096.0],
      ts.TUTORIAL: [8192.0, 8192.0],
      ts.MAIN_20: [1000.0, 3000.0, 2048.0],
      ts.SSL_20: [1024.0],
    },
    roofs=[100.0, 200.0, 150.0],
  )


def test_render_derives_rates_flops_and_ratios():
  args = train_speed.parse_args(["--rounds", "3", "--steps", "5"])
  prepared = types.SimpleNamespace(num_items=1234, splits={"train": [0] * 99})
  base = train_speed.base_config(
    train_speed.parse_args(["--data_dir", "/nonexistent"])
  )
  profiles = {
    "main only": {("MatMul", "query_tower/MatMul"): 3.0},
    "main + SSL": {("MatMul", "query_tower/MatMul"): 1.0},
  }
  text = train_speed.render(
    args, ["--steps", "5"], 1.5, base, prepared, _measured(), profiles
  )
  lines = text.splitlines()
  assert (
    lines[2] == "Command: `.venv/bin/python bench/train_speed.py --steps 5`"
  )
  assert "wall time 1.5 min. Data: synthetic (1,234 items, 99 training" in text
  # Roof: median of 100, 200, 150.
  assert "median **150 GFLOP/s** (rounds: 100, 200, 150)" in text
  # Main only: median 2048 ex/s over batch 1024 = 2 steps/s x 1 GFLOP =
  # 2.0 GFLOP/s, 1% of 150; vs the tutorial's 8192 ex/s: 0.25x.
  assert (
    "| ours, main only, 20 steps per call | 1024 | 2,048 (1,000, 3,000, "
    "2,048) | 1.00 | 2.0 | 1% | 0.25x |" in lines
  )
  assert (
    "| input pipeline alone | 1024 | 4,096 (4,096) | - | - | - | 0.50x |"
    in (lines)
  )
  # 2048 / 1024 ex/s.
  assert "A main + SSL step costs **2.00x** a main-only step" in text
  assert "## Profile of the step (40 steps each, TF profiler)" in text
  assert "| matmul | 3.0 (100%) | 1.0 (100%) |" in lines
  no_profile = train_speed.render(
    args, [], 1.5, base, prepared, _measured(), {}
  )
  assert "## Profile" not in no_profile
  assert no_profile.endswith("(20 steps per call, by examples/s).\n")


def test_render_gives_the_ssl_steps_cpu_ratio_when_measured():
  args = train_speed.parse_args(["--rounds", "3", "--steps", "5"])
  prepared = types.SimpleNamespace(num_items=1234, splits={"train": [0] * 99})
  base = train_speed.base_config(
    train_speed.parse_args(["--data_dir", "/nonexistent"])
  )
  measured = _measured()
  # CPU s per step: main median 0.10, SSL median 0.15: 1.50x in CPU time
  # beside 2.00x by examples/s (a core idles in the SSL step).
  measured.cpu = {
    train_speed.MAIN_20: [0.10, 0.30, 0.05],
    train_speed.SSL_20: [0.15],
  }
  text = train_speed.render(args, [], 1.5, base, prepared, measured, {})
  assert (
    "A main + SSL step costs **2.00x** a main-only step (20 steps per "
    "call, by examples/s), and **1.50x** in the process's CPU time" in text
  )
  measured.cpu = {train_speed.MAIN_20: [0.1]}  # SSL not measured: no ratio
  text = train_speed.render(args, [], 1.5, base, prepared, measured, {})
  assert "CPU time" not in text
