"""`mask`: redacts or hashes sensitive fields. The Python twin of guest-transforms/mask:
same settings, same outputs.

Config:
- `fields=Email,Phone,*Phone,Name.LastName`: field names; `*` at the start or end matches
  any prefix or suffix.
- `mode=redact` (default): text becomes `REDACTED`, other values null.
- `mode=hash`: text becomes the hex SHA-256 of `salt` + value, so masked ids still join.
- `salt=...`: required with `mode=hash`.
"""

import hashlib

import wit_world
from componentize_py_types import Err
from wit_world.imports.types import Output, Value_Null, Value_Text

_config = {"patterns": [], "hash": False, "salt": ""}
# Field names matching the patterns, per schema id: listing a schema's fields is costly.
_matched = {}


def _matches(pattern, name):
    if pattern.startswith("*"):
        return name.endswith(pattern[1:])
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return pattern == name


class WitWorld(wit_world.WitWorld):
    def init(self, config):
        patterns, hashed, salt = [], False, ""
        for key, value in config:
            if key == "fields":
                patterns = [s.strip() for s in value.split(",") if s.strip()]
            elif key == "mode":
                if value not in ("redact", "hash"):
                    raise Err(f"mode={value} is not redact or hash")
                hashed = value == "hash"
            elif key == "salt":
                salt = value
            else:
                raise Err(f"unknown setting {key}; mask takes fields, mode, salt")
        if not patterns:
            raise Err("fields is required, e.g. fields=Email,Phone")
        if hashed and not salt:
            raise Err("mode=hash needs a salt, e.g. salt=some-secret")
        _config.update(patterns=patterns, hash=hashed, salt=salt)

    def process(self, event):
        patterns = _config["patterns"]
        if all("*" not in p for p in patterns):
            names = patterns
        else:
            schema = event.schema_id()
            names = _matched.get(schema)
            if names is None:
                names = [n for n in event.field_names() if any(_matches(p, n) for p in patterns)]
                _matched[schema] = names
        for name in names:
            value = event.get(name)
            if value is None or isinstance(value, Value_Null):
                continue
            if isinstance(value, Value_Text):
                if _config["hash"]:
                    digest = hashlib.sha256((_config["salt"] + value.value).encode()).hexdigest()
                    masked = Value_Text(digest)
                else:
                    masked = Value_Text("REDACTED")
            else:
                masked = Value_Null()
            event.set(name, masked)
        return [Output(event, None)]
