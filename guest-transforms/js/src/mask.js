// `mask`: redacts or pseudonymises sensitive fields. The JavaScript twin of
// guest-transforms/mask: same settings, same outputs.
//
// Config:
// - `fields=Email,Phone,*Phone,Name.LastName`: field names; `*` at the start or end matches
//   any prefix or suffix.
// - `types=Email,Phone`: also every field of these Salesforce types (`event.fieldType`).
// - `mode=redact` (default): text becomes `REDACTED`, other values null.
// - `mode=hash`: text becomes the HMAC-SHA256 (hex) of the value under the key named by
//   `key`, computed in place by the host (`event.hashField`): the key never enters the
//   transform; other values are nulled.
// - `key=NAME`: required with `mode=hash`; the transform's `keys` must hold NAME.
//
// It counts what it masks in the counter `masked_values` and sets the gauge `masked_fields`
// to how many fields it masks in the last schema it saw (at `/metrics`). In hash mode its
// "mask ready" line carries `key_check`, the first 8 hex digits of the key's HMAC of the
// empty text (the same check exactly when the key is the same; the check does not reveal it).
import { counterAdd, gaugeSet, hmacSha256, logEnabled, logWith } from "sfzb:transform/host@0.1.1";

const config = { patterns: [], types: [], key: undefined, names: undefined };
// Field names to mask, per schema id: listing a schema's fields is costly.
const matched = new Map();

function matches(pattern, name) {
  if (pattern.startsWith("*")) return name.endsWith(pattern.slice(1));
  if (pattern.endsWith("*")) return name.startsWith(pattern.slice(0, -1));
  return pattern === name;
}

const list = (value) => value.split(",").map((s) => s.trim()).filter((s) => s.length > 0);

export function init(settings) {
  let patterns = [];
  let types = [];
  let hash = false;
  let key;
  for (const [name, value] of settings) {
    if (name === "fields") {
      patterns = list(value);
    } else if (name === "types") {
      types = list(value);
    } else if (name === "mode") {
      if (value !== "redact" && value !== "hash") throw `mode=${value} is not redact or hash`;
      hash = value === "hash";
    } else if (name === "key") {
      key = value;
    } else {
      throw `unknown setting ${name}; mask takes fields, types, mode, key`;
    }
  }
  if (patterns.length === 0 && types.length === 0) throw "fields or types is required, e.g. fields=Email,Phone";
  if (hash && key === undefined) throw "mode=hash needs key=NAME, naming one of the transform's keys";
  if (!hash && key !== undefined) throw "key is for mode=hash";
  const ready = [
    ["mode", hash ? "hash" : "redact"],
    ["fields", patterns.join(",")],
    ["types", types.join(",")],
  ];
  // Refuses a missing key now, not on the first event, with the host's message.
  if (hash) {
    try {
      ready.push(["key_check", hmacSha256(key, "").slice(0, 8)]);
    } catch (e) {
      throw e.payload ?? String(e);
    }
  }
  logWith("info", "mask ready", ready);
  // Plain names need no schema: decided once here, not per event.
  const names = types.length > 0 || patterns.some((p) => p.includes("*")) ? undefined : patterns;
  if (names !== undefined) gaugeSet("masked_fields", names.length);
  Object.assign(config, { patterns, types, key, names });
  matched.clear();
}

export function process(event) {
  const { patterns, types, key } = config;
  let names = config.names;
  if (names === undefined) {
    const schema = event.schemaId();
    names = matched.get(schema);
    if (names === undefined) {
      names = event.fieldNames().filter((n) => {
        if (patterns.some((p) => matches(p, n))) return true;
        if (types.length === 0) return false;
        const type = event.fieldType(n);
        return type !== undefined && types.includes(type.salesforceType);
      });
      if (logEnabled("debug")) {
        logWith("debug", "mask matched", [
          ["schema", schema],
          ["fields", names.join(",")],
        ]);
      }
      gaugeSet("masked_fields", names.length);
      matched.set(schema, names);
    }
  }
  let maskedValues = 0;
  for (const name of names) {
    // The host hashes a text field in place; other values are nulled as in redact mode.
    if (key !== undefined && event.hashField(name, key)) {
      maskedValues += 1;
      continue;
    }
    const value = event.get(name);
    if (value === undefined || value.tag === "null") continue;
    event.set(name, value.tag === "text" ? { tag: "text", val: "REDACTED" } : { tag: "null" });
    maskedValues += 1;
  }
  if (maskedValues > 0) counterAdd("masked_values", BigInt(maskedValues));
  return [{ event, table: undefined }];
}
