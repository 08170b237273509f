// `tenant-filter`: keeps only the events of one tenant and drops the rest. The JavaScript
// twin of guest-transforms/tenant-filter: same settings, same outputs.
//
// Config (every rule given must match):
// - `entities=Account,Contact`: allowed objects.
// - `change-types=CREATE,UPDATE`: allowed change types.
// - `field.<Name>=v1|v2`: the field's value (as text) is one of these.
// - `missing=drop` (default) or `keep`: what to do when a rule's field is null in the event.

let config = { entities: null, changeTypes: null, fields: [], keepMissing: false };

const list = (value, sep) => value.split(sep).map((s) => s.trim()).filter((s) => s.length > 0);

// A value as the Rust transform prints it; undefined for null and bytes.
function asText(value) {
  switch (value.tag) {
    case "boolean":
      return value.val ? "true" : "false";
    case "integer":
      return value.val.toString();
    case "float":
      return String(value.val);
    case "text":
      return value.val;
    default:
      return undefined;
  }
}

export function init(settings) {
  const c = { entities: null, changeTypes: null, fields: [], keepMissing: false };
  for (const [key, value] of settings) {
    if (key === "entities") {
      c.entities = list(value, ",");
    } else if (key === "change-types") {
      c.changeTypes = list(value, ",").map((s) => s.toUpperCase());
    } else if (key === "missing") {
      if (value !== "keep" && value !== "drop") throw `missing=${value} is not keep or drop`;
      c.keepMissing = value === "keep";
    } else if (key.startsWith("field.") && key.length > "field.".length) {
      c.fields.push([key.slice("field.".length), list(value, "|")]);
    } else {
      throw `unknown setting ${key}; tenant-filter takes entities, change-types, field.<Name>, missing`;
    }
  }
  if (c.entities === null && c.changeTypes === null && c.fields.length === 0) {
    throw "no rule given: set entities=, change-types= or field.<Name>=";
  }
  config = c;
}

export function process(event) {
  if (config.entities !== null && !config.entities.includes(event.entityName())) return [];
  if (config.changeTypes !== null) {
    // "gap-update" → "GAP_UPDATE", as the header spells it.
    const type = event.changeType().toUpperCase().replace("-", "_");
    if (!config.changeTypes.includes(type)) return [];
  }
  for (const [field, allowed] of config.fields) {
    const value = event.get(field);
    const text = value === undefined ? undefined : asText(value);
    if (text === undefined) {
      if (!config.keepMissing) return [];
    } else if (!allowed.includes(text)) {
      return [];
    }
  }
  return [{ event, table: undefined }];
}
