"""Helpers for sfzb-host transforms in Python (componentize-py, world `transform` of
`wit/transform.wit`): settings, outcomes, values as text, and the host's functions.

    import wit_world
    from sfzb_transform import Config, keep, drop, text

    class WitWorld(wit_world.WitWorld):
        def init(self, config):
            global settings
            settings = Config(config)
            settings.only("fields")

        def process(self, event):
            ...
            return keep(event)

Raise `Err(message)` (re-exported here) from `init` to refuse the settings, and from
`process` to dead-letter the event with the message.
"""

from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.host import Level
from wit_world.imports.types import (
    Output,
    Value_Boolean,
    Value_Bytes,
    Value_Float,
    Value_Integer,
    Value_Null,
    Value_Text,
)

__all__ = [
    "Config", "Err", "Level", "Output", "drop", "keep", "route", "text",
    "log", "log_with", "log_enabled", "hmac_sha256", "counter_add", "gauge_set",
    "Value_Boolean", "Value_Bytes", "Value_Float", "Value_Integer", "Value_Null", "Value_Text",
]

log = host.log
log_with = host.log_with
log_enabled = host.log_enabled
hmac_sha256 = host.hmac_sha256
counter_add = host.counter_add
gauge_set = host.gauge_set


class Config:
    """The transform's settings, as `init` gets them (a list of (key, value))."""

    def __init__(self, items):
        self.items = list(items)

    def get(self, key, default=None):
        """The last value given for `key`."""
        for k, v in reversed(self.items):
            if k == key:
                return v
        return default

    def list(self, key, sep=","):
        """`key`'s value split on `sep`, trimmed, without empty items."""
        value = self.get(key)
        return [] if value is None else [s.strip() for s in value.split(sep) if s.strip()]

    def only(self, *known):
        """Refuses a setting that is not one of `known` (`"prefix.*"` allows every key of
        that prefix), naming them all: a typo fails at start, not silently."""
        def allowed(key):
            for k in known:
                if k.endswith("*"):
                    if key.startswith(k[:-1]) and len(key) > len(k) - 1:
                        return True
                elif k == key:
                    return True
            return False

        for key, _ in self.items:
            if not allowed(key):
                raise Err(f"unknown setting {key}; this transform takes {', '.join(known)}")


def keep(event):
    """The event, as changed, to the subscription's own table."""
    return [Output(event, None)]


def route(event, table):
    """The event to another table."""
    return [Output(event, table)]


def drop():
    """No output: the event is not written, and the checkpoint passes it."""
    return []


def text(value):
    """A value as text, as the Rust SDK's transforms print it; None for null, bytes and a
    missing field."""
    if isinstance(value, Value_Boolean):
        return "true" if value.value else "false"
    if isinstance(value, Value_Integer):
        return str(value.value)
    if isinstance(value, Value_Float):
        return _float_text(value.value)
    if isinstance(value, Value_Text):
        return value.value
    return None


def _float_text(f):
    """`f` as Rust prints an f64: its shortest digits, never an exponent, no trailing `.0`."""
    r = repr(f)
    if r in ("nan", "inf", "-inf"):
        return "NaN" if r == "nan" else r
    sign, r = ("-", r[1:]) if r.startswith("-") else ("", r)
    mantissa, _, exponent = r.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + int(exponent or 0)
    if point <= 0:
        text = "0." + "0" * -point + digits
    elif point >= len(digits):
        text = digits + "0" * (point - len(digits))
    else:
        text = digits[:point] + "." + digits[point:]
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return sign + text
