"""The base of every params group: strict, frozen, no unknown keys."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Group(BaseModel):
    # strict: YAML gives real types, so "1" for an int or 1.5 for an int is a mistake worth reporting.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
