"""Request bodies checked as the real FastAPI app checks them: against openapi.json's pydantic schemas."""

from __future__ import annotations

import json
import re

from tests.emulator import flags

SIZE = re.compile(r"^(\d+)x(\d+)$")
_VALIDATORS: dict = {}


def public(job: dict) -> dict:
    """A video job as the API shows it (private fields such as the MP4 bytes start with an underscore)."""
    return {k: v for k, v in job.items() if not k.startswith("_")}


def typed_form(form: dict[str, str], name: str) -> dict:
    """Form strings converted to the declared field types, as pydantic does before validating."""
    props = _openapi()["components"]["schemas"][name]["properties"]
    out: dict = {}
    for key, text in form.items():
        kinds = [s.get("type") for s in props.get(key, {}).get("anyOf", [props.get(key, {})])]
        value: object = text
        for kind, conv in (("integer", int), ("number", float), ("boolean", _bool)):
            if kind in kinds:
                try:
                    value = conv(text)
                    break
                except ValueError:
                    continue
        out[key] = value
    return out


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise ValueError(text)


def _openapi() -> dict:
    if "doc" not in _VALIDATORS:
        _VALIDATORS["doc"] = json.loads((flags.REFERENCE.parent / "openapi.json").read_text())
    return _VALIDATORS["doc"]


def schema_errors(name: str, body) -> list[dict]:
    """FastAPI/pydantic's 422 detail for a body that breaks the real request model (openapi.json's schema)."""
    if name not in _VALIDATORS:
        from jsonschema import Draft202012Validator
        doc = _openapi()
        _VALIDATORS[name] = Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                                  "components": doc["components"]})
    return [{"loc": ["body", *err.absolute_path] if err.absolute_path else ["body"], "msg": err.message,
             "type": err.validator if isinstance(err.validator, str) else "value_error"}
            for err in _VALIDATORS[name].iter_errors(body)]


def parse_size(text: str | None, default: str) -> tuple[int, int]:
    m = SIZE.match(text or default)
    if not m:
        raise ValueError(f"Invalid size format: {text!r}. Expected WIDTHxHEIGHT.")
    return int(m.group(1)), int(m.group(2))
