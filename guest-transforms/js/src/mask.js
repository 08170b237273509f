// `mask`: redacts or hashes sensitive fields. The JavaScript twin of guest-transforms/mask:
// same settings, same outputs.
//
// Config:
// - `fields=Email,Phone,*Phone,Name.LastName`: field names; `*` at the start or end matches
//   any prefix or suffix.
// - `mode=redact` (default): text becomes `REDACTED`, other values null.
// - `mode=hash`: text becomes the hex SHA-256 of `salt` + value, so masked ids still join.
// - `salt=...`: required with `mode=hash`.
import { sha256 } from "@noble/hashes/sha2";
import { bytesToHex, utf8ToBytes } from "@noble/hashes/utils";

const config = { patterns: [], hash: false, salt: "" };
// Field names matching the patterns, per schema id: listing a schema's fields is costly.
const matched = new Map();

function matches(pattern, name) {
  if (pattern.startsWith("*")) return name.endsWith(pattern.slice(1));
  if (pattern.endsWith("*")) return name.startsWith(pattern.slice(0, -1));
  return pattern === name;
}

export function init(settings) {
  let patterns = [];
  let hash = false;
  let salt = "";
  for (const [key, value] of settings) {
    if (key === "fields") {
      patterns = value.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
    } else if (key === "mode") {
      if (value !== "redact" && value !== "hash") throw `mode=${value} is not redact or hash`;
      hash = value === "hash";
    } else if (key === "salt") {
      salt = value;
    } else {
      throw `unknown setting ${key}; mask takes fields, mode, salt`;
    }
  }
  if (patterns.length === 0) throw "fields is required, e.g. fields=Email,Phone";
  if (hash && salt.length === 0) throw "mode=hash needs a salt, e.g. salt=some-secret";
  Object.assign(config, { patterns, hash, salt });
}

export function process(event) {
  let names = config.patterns;
  if (names.some((p) => p.includes("*"))) {
    const schema = event.schemaId();
    names = matched.get(schema);
    if (names === undefined) {
      names = event.fieldNames().filter((n) => config.patterns.some((p) => matches(p, n)));
      matched.set(schema, names);
    }
  }
  for (const name of names) {
    const value = event.get(name);
    if (value === undefined || value.tag === "null") continue;
    let masked;
    if (value.tag === "text") {
      masked = config.hash
        ? { tag: "text", val: bytesToHex(sha256(utf8ToBytes(config.salt + value.val))) }
        : { tag: "text", val: "REDACTED" };
    } else {
      masked = { tag: "null" };
    }
    event.set(name, masked);
  }
  return [{ event, table: undefined }];
}
