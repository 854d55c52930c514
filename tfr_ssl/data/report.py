"""Plain-text report of `describe()` statistics, for people and logs."""

from __future__ import annotations


def _numeric(cell: str) -> bool:
  return cell.replace(",", "").replace(".", "").isdigit()


def _table(rows: list[list[str]]) -> list[str]:
  """Aligned columns: numbers to the right, text to the left."""
  columns = list(zip(*rows, strict=True))
  widths = [max(len(cell) for cell in column) for column in columns]
  right = [all(_numeric(c) for c in column[1:]) for column in columns]
  return [
    "  ".join(
      cell.rjust(w) if r else cell.ljust(w)
      for cell, w, r in zip(row, widths, right, strict=True)
    ).rstrip()
    for row in rows
  ]


def format_description(stats: dict, query_item: str | None = None) -> str:
  """Formats a `describe()` dict as an aligned text report.

  Args:
    stats: What `describe(prepared)` returns.
    query_item: The schema's query-item column (`schema.query_item`), which
      then gives the item-to-item queries; None: the previous item does.

  Example:
    >>> print(format_description(describe(prepared), schema.query_item))
  """
  splits = stats["interactions"]
  lines = [
    f"version       {stats['version']}",
    f"items         {stats['num_items']:,} "
    f"({stats['train_items_seen']:,} seen in training)",
    f"queries       {stats['num_queries']:,}",
    "interactions  "
    + "  ".join(f"{name} {count:,}" for name, count in splits.items())
    + f"  (timestamps: {'yes' if stats['has_timestamps'] else 'no'})",
    f"popularity    top 10% of items hold {stats['top10_share']:.1%} of "
    f"training interactions; gini {stats['gini']:.3f}",
    f"cold items    {stats['cold_items']:,} corpus items are in no training "
    f"interaction; {stats['cold_test_items']:,} of them are test items, in "
    f"{stats['cold_test_interactions']:,} test interactions "
    f"({stats['cold_test_share']:.2%})",
    f"item-to-item  {stats['item_to_item_train']:,} training interactions "
    + (
      "have a previous item"
      if query_item is None
      else f"have a query item (column {query_item!r})"
    )
    + " (the rows that task trains on); "
    f"{stats['item_to_item_cold_items']:,} corpus items are in none of them",
    "",
    "features",
  ]
  rows = [["  name", "kind", "role", "vocabulary", "max_len"]]
  for f in stats["features"]:
    rows.append(
      [
        f"  {f['name']}",
        f["kind"],
        f["role"],
        f"{f['vocabulary_size']:,}",
        str(f["max_len"]),
      ]
    )
  lines += _table(rows)
  dependence = stats["dependence"]
  lines += [
    "",
    "dependence between item features, what CFM masks by (bias-corrected "
    "MI / sqrt(H(a) H(b)): 0 independent, 1 a copy)",
  ]
  rows = [["  ", *dependence["features"]]]
  for name, values in zip(
    dependence["features"], dependence["matrix"], strict=True
  ):
    rows.append([f"  {name}", *(f"{v:.3f}" for v in values)])
  lines += _table(rows)
  return "\n".join(lines)
