// `tenant-filter`: keeps only the events of one tenant and drops the rest. The JavaScript
// twin of guest-transforms/tenant-filter: same settings, same outputs; written with the
// SDK's helper module (guest-transforms/sdk/js/sfzb-transform.js).
//
// Config (every rule given must match):
// - `entities=Account,Contact`: allowed objects.
// - `change-types=CREATE,UPDATE`: allowed change types.
// - `field.<Name>=v1|v2`: the field's value (as text) is one of these.
// - `missing=drop` (default) or `keep`: what to do when a rule's field is null in the event.

import { Config, changeTypeName, drop, keep, text } from "../../sdk/js/sfzb-transform.js";

let config = { entities: null, changeTypes: null, fields: [], keepMissing: false };

export function init(settings) {
  const c = new Config(settings);
  c.only("entities", "change-types", "field.*", "missing");
  const missing = c.get("missing", "drop");
  if (missing !== "keep" && missing !== "drop") throw `missing=${missing} is not keep or drop`;
  const fields = c.items
    .filter(([key]) => key.startsWith("field."))
    .map(([key, value]) => [
      key.slice("field.".length),
      value.split("|").map((s) => s.trim()).filter((s) => s.length > 0),
    ]);
  const next = {
    entities: c.get("entities") === undefined ? null : c.list("entities"),
    changeTypes:
      c.get("change-types") === undefined ? null : c.list("change-types").map((s) => s.toUpperCase()),
    fields,
    keepMissing: missing === "keep",
  };
  if (next.entities === null && next.changeTypes === null && fields.length === 0) {
    throw "no rule given: set entities=, change-types= or field.<Name>=";
  }
  config = next;
}

export function process(event) {
  if (config.entities !== null && !config.entities.includes(event.entityName())) return drop();
  if (config.changeTypes !== null && !config.changeTypes.includes(changeTypeName(event.changeType()))) {
    return drop();
  }
  for (const [field, allowed] of config.fields) {
    const value = text(event.get(field));
    if (value === undefined) {
      if (!config.keepMissing) return drop();
    } else if (!allowed.includes(value)) {
      return drop();
    }
  }
  return keep(event);
}
