"""`mask`: redacts or pseudonymises sensitive fields. The Python twin of
guest-transforms/mask: same settings, same outputs.

Config:
- `fields=Email,Phone,*Phone,Name.LastName`: field names; `*` at the start or end matches
  any prefix or suffix.
- `types=Email,Phone`: also every field of these Salesforce types (`event.field_type`).
- `mode=redact` (default): text becomes `REDACTED`, other values null.
- `mode=hash`: text becomes the HMAC-SHA256 (hex) of the value under the key named by
  `key`, computed in place by the host (`event.hash_field`): the key never enters the
  transform; other values are nulled.
- `key=NAME`: required with `mode=hash`; the transform's `keys` must hold NAME.

It counts what it masks in the counter `masked_values` and sets the gauge `masked_fields`
to how many fields it masks in the last schema it saw (at `/metrics`). In hash mode its
"mask ready" line carries `key_check`, the first 8 hex digits of the key's HMAC of the empty
text (the same check exactly when the key is the same; the check does not reveal it).
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import Output, Value_Null, Value_Text

_config = {"patterns": [], "types": [], "key": None, "names": None}
# Field names to mask, per schema id: listing a schema's fields is costly.
_matched = {}


def _matches(pattern, name):
    if pattern.startswith("*"):
        return name.endswith(pattern[1:])
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return pattern == name


def _list(value):
    return [s.strip() for s in value.split(",") if s.strip()]


class WitWorld(wit_world.WitWorld):
    def init(self, config):
        patterns, types, hashed, key = [], [], False, None
        for name, value in config:
            if name == "fields":
                patterns = _list(value)
            elif name == "types":
                types = _list(value)
            elif name == "mode":
                if value not in ("redact", "hash"):
                    raise Err(f"mode={value} is not redact or hash")
                hashed = value == "hash"
            elif name == "key":
                key = value
            else:
                raise Err(f"unknown setting {name}; mask takes fields, types, mode, key")
        if not patterns and not types:
            raise Err("fields or types is required, e.g. fields=Email,Phone")
        if hashed and key is None:
            raise Err("mode=hash needs key=NAME, naming one of the transform's keys")
        if not hashed and key is not None:
            raise Err("key is for mode=hash")
        ready = [
            ("mode", "hash" if hashed else "redact"),
            ("fields", ",".join(patterns)),
            ("types", ",".join(types)),
        ]
        if hashed:
            # Refuses a missing key now, not on the first event.
            ready.append(("key_check", host.hmac_sha256(key, "")[:8]))
        host.log_with(host.Level.INFO, "mask ready", ready)
        # Plain names need no schema: decided once here, as every line of `process` costs
        # (CPython runs interpreted inside the component).
        static = None if types or any("*" in p for p in patterns) else patterns
        if static is not None:
            host.gauge_set("masked_fields", float(len(static)))
        _config.update(patterns=patterns, types=types, key=key, names=static)
        _matched.clear()

    def process(self, event):
        names, key = _config["names"], _config["key"]
        if names is None:
            patterns, types = _config["patterns"], _config["types"]
            schema = event.schema_id()
            names = _matched.get(schema)
            if names is None:
                names = []
                for n in event.field_names():
                    if any(_matches(p, n) for p in patterns):
                        names.append(n)
                    elif types:
                        t = event.field_type(n)
                        if t is not None and t.salesforce_type in types:
                            names.append(n)
                if host.log_enabled(host.Level.DEBUG):
                    host.log_with(
                        host.Level.DEBUG,
                        "mask matched",
                        [("schema", schema), ("fields", ",".join(names))],
                    )
                host.gauge_set("masked_fields", float(len(names)))
                _matched[schema] = names
        masked_values = 0
        for name in names:
            # The host hashes a text field in place; other values are nulled as in redact mode.
            if key is not None and event.hash_field(name, key):
                masked_values += 1
                continue
            value = event.get(name)
            if value is None or isinstance(value, Value_Null):
                continue
            if isinstance(value, Value_Text):
                masked = Value_Text("REDACTED")
            else:
                masked = Value_Null()
            event.set(name, masked)
            masked_values += 1
        if masked_values:
            host.counter_add("masked_values", masked_values)
        return [Output(event, None)]
