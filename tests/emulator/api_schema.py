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


def schema_errors(name: str, body, form: bool = False) -> list[dict]:
    """pydantic's errors (type, loc, msg, input, ctx) for a body that breaks the real request model.

    Checked against openapi.json's schema for the model; ``form``: the values came as form strings (pydantic then
    reports ``int_parsing`` rather than ``int_type``). Missing required fields come first, the rest by name.
    """
    if name not in _VALIDATORS:
        from jsonschema import Draft202012Validator
        doc = _openapi()
        _VALIDATORS[name] = Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                                  "components": doc["components"]})
    out = []
    for err in _VALIDATORS[name].iter_errors(body):
        if err.validator == "required":
            field = re.findall(r"'([^']+)' is a required property", err.message)[0]
            out.append({"type": "missing", "loc": ["body", field], "msg": "Field required",
                        "input": None if form else body})
            continue
        leaf = _leaf(err)
        out.append({"loc": ["body", *err.absolute_path], "input": err.instance, **_pydantic_kind(leaf, form)})
    return sorted(out, key=lambda e: (e["type"] != "missing", [str(p) for p in e["loc"]]))


def _leaf(err):
    """The branch of an anyOf [T, null] that says what was wrong (pydantic reports the typed branch)."""
    if err.validator == "anyOf" and err.context:
        typed = [e for e in err.context if e.schema.get("type") != "null"]
        return min(typed or err.context, key=lambda e: e.validator == "type")
    return err


_TYPES = {"integer": ("int", "a valid integer", "unable to parse string as an integer"),
          "number": ("float", "a valid number", "unable to parse string as a number"),
          "boolean": ("bool", "a valid boolean", "unable to interpret input"),
          "string": ("string", "a valid string", ""), "object": ("dict", "a valid dictionary", ""),
          "array": ("list", "a valid list", "")}


def _pydantic_kind(err, form: bool) -> dict:
    """jsonschema's failed keyword in pydantic's words (error type, message and ctx)."""
    value = err.validator_value
    bounds = {"maximum": ("less_than_equal", "less than or equal to", "le"),
              "minimum": ("greater_than_equal", "greater than or equal to", "ge"),
              "exclusiveMaximum": ("less_than", "less than", "lt"),
              "exclusiveMinimum": ("greater_than", "greater than", "gt")}
    if err.validator in bounds:
        kind, words, key = bounds[err.validator]
        number = int(value) if float(value).is_integer() else value
        return {"type": kind, "msg": f"Input should be {words} {number}", "ctx": {key: number}}
    if err.validator == "type" and isinstance(value, str) and value in _TYPES:
        prefix, words, parsing = _TYPES[value]
        if form and isinstance(err.instance, str) and parsing:
            return {"type": f"{prefix}_parsing", "msg": f"Input should be {words}, {parsing}"}
        return {"type": f"{prefix}_type", "msg": f"Input should be {words}"}
    if err.validator == "enum":
        options = " or ".join(repr(v) for v in value)
        return {"type": "enum", "msg": f"Input should be {options}", "ctx": {"expected": options}}
    return {"type": "value_error", "msg": err.message}


def validation_error(errors: list[dict]) -> dict:
    """vLLM's 400 for a RequestValidationError (serve/exception_handling/handlers/validation.py)."""
    count = len(errors)
    lines = [f"{count} validation {'error' if count == 1 else 'errors'}:"]
    for err in errors[:10]:
        shown = {"type": err["type"], "loc": ".".join(str(p) for p in err["loc"]), "msg": err["msg"],
                 "input": _summary(err.get("input"))}
        if err.get("ctx"):
            shown["ctx"] = err["ctx"]
        lines.append(f"  {shown}")
    if count > 10:
        lines.append(f"  ...and {count - 10} more {'error' if count - 10 == 1 else 'errors'}")
    param = ".".join(str(p) for p in errors[0]["loc"]) if errors and errors[0].get("loc") else None
    return {"error": {"message": "\n".join(lines), "type": "Bad Request", "param": param, "code": 400}}


def _summary(value) -> str:
    """The bounded ``input`` the real handler echoes (containers described, scalars as str)."""
    if isinstance(value, (list, tuple, set, dict)):
        return f"<{type(value).__name__} of {len(value)} items>"
    text = str(value)
    return text[:200] + "...[truncated]" if len(text) > 200 else text


def parse_size(text: str | None, default: str) -> tuple[int, int]:
    m = SIZE.match(text or default)
    if not m:
        raise ValueError(f"Invalid size format: {text!r}. Expected WIDTHxHEIGHT.")
    return int(m.group(1)), int(m.group(2))
