"""`tenant-filter`: keeps only the events of one tenant and drops the rest. The Python twin
of guest-transforms/tenant-filter: same settings, same outputs; written with the SDK's
helper module (`guest-transforms/sdk/python/sfzb_transform.py`).

Config (every rule given must match):
- `entities=Account,Contact`: allowed objects.
- `change-types=CREATE,UPDATE`: allowed change types.
- `field.<Name>=v1|v2`: the field's value (as text) is one of these.
- `missing=drop` (default) or `keep`: what to do when a rule's field is null in the event.
"""

import wit_world
from sfzb_transform import Config, Err, drop, keep, text

_config = {"entities": None, "change_types": None, "fields": [], "keep_missing": False}


class WitWorld(wit_world.WitWorld):
    def init(self, config):
        c = Config(config)
        c.only("entities", "change-types", "field.*", "missing")
        missing = c.get("missing", "drop")
        if missing not in ("keep", "drop"):
            raise Err(f"missing={missing} is not keep or drop")
        fields = [
            (key[len("field."):], [s.strip() for s in value.split("|") if s.strip()])
            for key, value in c.items
            if key.startswith("field.")
        ]
        entities = c.list("entities") if c.get("entities") is not None else None
        change_types = c.get("change-types")
        if change_types is not None:
            change_types = [s.upper() for s in c.list("change-types")]
        if entities is None and change_types is None and not fields:
            raise Err("no rule given: set entities=, change-types= or field.<Name>=")
        _config.update(
            entities=entities, change_types=change_types, fields=fields, keep_missing=missing == "keep"
        )

    def process(self, event):
        c = _config
        if c["entities"] is not None and event.entity_name() not in c["entities"]:
            return drop()
        # CREATE, GAP_UPDATE, …: the enum's name is the header's text.
        if c["change_types"] is not None and event.change_type().name not in c["change_types"]:
            return drop()
        for field, allowed in c["fields"]:
            value = text(event.get(field))
            if value is None:
                if not c["keep_missing"]:
                    return drop()
            elif value not in allowed:
                return drop()
        return keep(event)
