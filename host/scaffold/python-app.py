"""`__NAME__`: redacts the fields named in `fields=` (default `Email`) and keeps every event.
Change `process` to filter (`return drop()`), fan out (`event.duplicate()`), or route
(`return route(event, "other_table")`). The contract is `wit/transform.wit`; the helpers are
in `sfzb_transform.py`."""

import wit_world
from sfzb_transform import Config, Value_Text, counter_add, keep

_fields = ["Email"]


class WitWorld(wit_world.WitWorld):
    def init(self, config):
        settings = Config(config)
        settings.only("fields")
        _fields[:] = settings.list("fields") or ["Email"]

    def process(self, event):
        for name in _fields:
            if isinstance(event.get(name), Value_Text):
                event.set(name, Value_Text("REDACTED"))
                counter_add("redacted", 1)
        return keep(event)
