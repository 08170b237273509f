// Helpers for sfzb-host transforms in JavaScript (jco componentize, world `transform` of
// `wit/transform.wit`): settings, outcomes, values, and the host's functions. Bundle it with
// the transform (esbuild --bundle --external:sfzb:*), as `npm run build` does.
//
//   import { Config, keep, drop, text } from "./sfzb-transform.js";
//   let settings;
//   export function init(items) { settings = new Config(items); settings.only("fields"); }
//   export function process(event) { …; return keep(event); }
//
// Throw a string from `init` to refuse the settings, and from `process` to dead-letter the
// event with the message.

export {
  counterAdd,
  gaugeSet,
  hmacSha256,
  log,
  logEnabled,
  logWith,
} from "sfzb:transform/host@0.1.1";

// The transform's settings, as `init` gets them (a list of [key, value]).
export class Config {
  constructor(items) {
    this.items = Array.from(items);
  }

  // The last value given for `key`.
  get(key, fallback = undefined) {
    for (let i = this.items.length - 1; i >= 0; i--) {
      if (this.items[i][0] === key) return this.items[i][1];
    }
    return fallback;
  }

  // `key`'s value split on `sep`, trimmed, without empty items.
  list(key, sep = ",") {
    const value = this.get(key);
    if (value === undefined) return [];
    return value.split(sep).map((s) => s.trim()).filter((s) => s.length > 0);
  }

  // Refuses a setting that is not one of `known` ("prefix.*" allows every key of that
  // prefix), naming them all: a typo fails at start, not silently.
  only(...known) {
    const allowed = (key) =>
      known.some((k) =>
        k.endsWith("*") ? key.startsWith(k.slice(0, -1)) && key.length > k.length - 1 : k === key,
      );
    for (const [key] of this.items) {
      if (!allowed(key)) throw `unknown setting ${key}; this transform takes ${known.join(", ")}`;
    }
  }
}

// The event, as changed, to the subscription's own table.
export const keep = (event) => [{ event, table: undefined }];

// The event to another table.
export const route = (event, table) => [{ event, table }];

// No output: the event is not written, and the checkpoint passes it.
export const drop = () => [];

// A value as text, as the Rust SDK's transforms print it; undefined for null, bytes and a
// missing field.
export function text(value) {
  switch (value?.tag) {
    case "boolean":
      return value.val ? "true" : "false";
    case "integer":
      return value.val.toString();
    case "float":
      return floatText(value.val);
    case "text":
      return value.val;
    default:
      return undefined;
  }
}

// `x` as Rust prints an f64: its shortest digits, never an exponent, no trailing ".0".
function floatText(x) {
  if (Number.isNaN(x)) return "NaN";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  const sign = x < 0 || Object.is(x, -0) ? "-" : "";
  const [mantissa, exponent] = Math.abs(x).toString().split("e");
  const [whole, fraction = ""] = mantissa.split(".");
  const digits = whole + fraction;
  const point = whole.length + Number(exponent ?? 0);
  let text;
  if (point <= 0) text = "0." + "0".repeat(-point) + digits;
  else if (point >= digits.length) text = digits + "0".repeat(point - digits.length);
  else text = digits.slice(0, point) + "." + digits.slice(point);
  if (text.includes(".")) text = text.replace(/0+$/, "").replace(/\.$/, "");
  return sign + text;
}

// Values to `set`: Value.text("REDACTED"), Value.null, …
export const Value = {
  null: { tag: "null" },
  boolean: (val) => ({ tag: "boolean", val }),
  integer: (val) => ({ tag: "integer", val: BigInt(val) }),
  float: (val) => ({ tag: "float", val }),
  text: (val) => ({ tag: "text", val }),
  bytes: (val) => ({ tag: "bytes", val }),
};

// The change type as the header spells it: "gap-update" → "GAP_UPDATE".
export const changeTypeName = (type) => type.toUpperCase().replace("-", "_");
