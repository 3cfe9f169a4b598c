"""The job's wall time from the records the trainer logs to metrics.jsonl (`workdir.read_metrics`).

Each training record carries `interval_seconds` (the steps since the previous record) and each
validation record `validation_seconds`; summed over a workdir's records they give the time the
job spent across every session it was resumed in (start-up and compilation excluded). Records
written before those fields existed only have `steps_per_sec`, whose intervals then included
the validation passes; they are read as steps / steps_per_sec, the same quantity.
"""

from __future__ import annotations

from typing import Any


def cumulative_seconds(records: list[dict[str, Any]]) -> dict[int, float]:
  """Cumulative training wall time (seconds: the steps and the periodic validation passes) at
  each logged step."""
  seconds, total, previous = {}, 0.0, 0
  for record in records:
    if "interval_seconds" in record:
      total += record["interval_seconds"]
    elif "steps_per_sec" in record:
      total += (record["step"] - previous) / record["steps_per_sec"]
    total += record.get("validation_seconds", 0.0)
    if "steps_per_sec" in record or "validation_seconds" in record:
      previous = record["step"]
      seconds[record["step"]] = total
  return seconds


def has_interval_times(records: list[dict[str, Any]]) -> bool:
  """Whether every training record carries `interval_seconds` (a log begun by a trainer that
  writes it): only then is the sum exact across resumed sessions."""
  train = [r for r in records if "steps_per_sec" in r]
  return bool(train) and all("interval_seconds" in r for r in train)
