"""Settings every test file shares."""

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  """Runs the files marked `long_file` first (in their own order).

  `make test` runs files whole on two workers (`--dist loadfile`), handing
  out files in collection order: a file of several minutes handed out
  last keeps one worker busy while the other has nothing left. Started
  first, it runs while the other worker takes the short files.
  """
  items.sort(key=lambda item: item.get_closest_marker("long_file") is None)
