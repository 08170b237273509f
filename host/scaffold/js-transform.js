// `__NAME__`: redacts the fields named in `fields=` (default `Email`) and keeps every event.
// Change `process` to filter (return `[]`), fan out (`event.duplicate()`), or route
// (`{ event, table: "other_table" }`). The contract is `wit/transform.wit`; errors are thrown
// as strings.

let fields = ["Email"];

export function init(settings) {
  for (const [key, value] of settings) {
    if (key === "fields") {
      fields = value.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
    } else {
      throw `unknown setting ${key}; __NAME__ takes fields`;
    }
  }
}

export function process(event) {
  for (const name of fields) {
    if (event.get(name)?.tag === "text") event.set(name, { tag: "text", val: "REDACTED" });
  }
  return [{ event, table: undefined }];
}
