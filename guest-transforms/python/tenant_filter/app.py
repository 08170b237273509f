"""`tenant-filter`: keeps only the events of one tenant and drops the rest. The Python twin
of guest-transforms/tenant-filter: same settings, same outputs.

Config (every rule given must match):
- `entities=Account,Contact`: allowed objects.
- `change-types=CREATE,UPDATE`: allowed change types.
- `field.<Name>=v1|v2`: the field's value (as text) is one of these.
- `missing=drop` (default) or `keep`: what to do when a rule's field is null in the event.
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports.types import (
    Output,
    Value_Boolean,
    Value_Float,
    Value_Integer,
    Value_Text,
)

_config = {"entities": None, "change_types": None, "fields": [], "keep_missing": False}


def _list(value, sep):
    return [s.strip() for s in value.split(sep) if s.strip()]


def _as_text(value):
    """A value as the Rust transform prints it; None for null and bytes."""
    if isinstance(value, Value_Boolean):
        return "true" if value.value else "false"
    if isinstance(value, Value_Integer):
        return str(value.value)
    if isinstance(value, Value_Float):
        f = value.value
        return str(int(f)) if f.is_integer() and abs(f) < 1e16 else repr(f)
    if isinstance(value, Value_Text):
        return value.value
    return None


class WitWorld(wit_world.WitWorld):
    def init(self, config):
        entities, change_types, fields, keep_missing = None, None, [], False
        for key, value in config:
            if key == "entities":
                entities = _list(value, ",")
            elif key == "change-types":
                change_types = [s.upper() for s in _list(value, ",")]
            elif key == "missing":
                if value not in ("keep", "drop"):
                    raise Err(f"missing={value} is not keep or drop")
                keep_missing = value == "keep"
            elif key.startswith("field.") and len(key) > len("field."):
                fields.append((key[len("field."):], _list(value, "|")))
            else:
                raise Err(
                    f"unknown setting {key}; tenant-filter takes entities, change-types, field.<Name>, missing"
                )
        if entities is None and change_types is None and not fields:
            raise Err("no rule given: set entities=, change-types= or field.<Name>=")
        _config.update(
            entities=entities, change_types=change_types, fields=fields, keep_missing=keep_missing
        )

    def process(self, event):
        c = _config
        if c["entities"] is not None and event.entity_name() not in c["entities"]:
            return []
        if c["change_types"] is not None:
            # CREATE, GAP_UPDATE, …: the enum's name is the header's text.
            if event.change_type().name not in c["change_types"]:
                return []
        for field, allowed in c["fields"]:
            value = event.get(field)
            text = _as_text(value) if value is not None else None
            if text is None:
                if not c["keep_missing"]:
                    return []
            elif text not in allowed:
                return []
        return [Output(event, None)]
