"""Argument models that refuse unknown fields, naming the closest valid one.

A misspelt field silently ignored changes behaviour (``max_launch: 1`` ran a 20-launch tune), so every model an
agent fills in derives from :class:`StrictModel`, and the MCP surface makes each tool's own argument model strict
with :func:`strict_subclass`. ``extra="forbid"`` also puts ``additionalProperties: false`` in the JSON schema.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


def unknown_fields_message(model: type[BaseModel] | Mapping[str, Any], data: Mapping[str, Any]) -> str | None:
    """'unknown field 'x' (did you mean 'y'?)' for each key ``model`` (or a mapping of names) does not have; None
    if all are known."""
    fields = model if isinstance(model, Mapping) else model.model_fields
    known = sorted({getattr(f, "alias", None) or name for name, f in fields.items()})
    accepted = set(known) | set(fields)
    unknown = [key for key in data if key not in accepted]
    if not unknown:
        return None
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        if not close:  # a prefix ('max_launch' -> 'max_launches') or a missing unit suffix ('vram_limit')
            close = [k for k in known if k.startswith(str(key)) or str(key).startswith(k)][:1]
        parts.append(f"unknown field {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return "; ".join(parts) + f"; valid fields: {', '.join(known)}"


class StrictModel(BaseModel):
    """A model an agent fills in: unknown fields are an error that names the closest valid field."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            message = unknown_fields_message(cls, data)
            if message:
                raise ValueError(message)
        return data


def strict_subclass(model: type[BaseModel]) -> type[BaseModel]:
    """``model`` with extra fields forbidden and reported like :class:`StrictModel` (same name, same schema title)."""
    config = ConfigDict(**{**model.model_config, "extra": "forbid", "allow_inf_nan": False})  # type: ignore[typeddict-item]
    namespace = {"model_config": config, "__module__": model.__module__}
    return type(model.__name__, (model, StrictModel), namespace)  # pyright: ignore[reportGeneralTypeIssues]
