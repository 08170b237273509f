"""`__NAME__`: redacts the fields named in `fields=` (default `Email`) and keeps every event.
Change `process` to filter (return `[]`), fan out (`event.duplicate()`), or route
(`Output(event, "other_table")`). The contract is `wit/transform.wit`."""

import wit_world
from componentize_py_types import Err
from wit_world.imports.types import Output, Value_Text

_fields = ["Email"]


class WitWorld(wit_world.WitWorld):
    def init(self, config):
        for key, value in config:
            if key == "fields":
                _fields[:] = [s.strip() for s in value.split(",") if s.strip()]
            else:
                raise Err(f"unknown setting {key}; __NAME__ takes fields")

    def process(self, event):
        for name in _fields:
            if isinstance(event.get(name), Value_Text):
                event.set(name, Value_Text("REDACTED"))
        return [Output(event, None)]
