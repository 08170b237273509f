// `__NAME__`: redacts the fields named in `fields=` (default `Email`) and keeps every event.
// Change `process` to filter (`return drop()`), fan out (`event.duplicate()`), or route
// (`return route(event, "other_table")`). The contract is `wit/transform.wit`; the helpers
// are in `sfzb-transform.js`; errors are thrown as strings.

import { Config, Value, counterAdd, keep } from "./sfzb-transform.js";

let fields = ["Email"];

export function init(items) {
  const settings = new Config(items);
  settings.only("fields");
  const given = settings.list("fields");
  fields = given.length > 0 ? given : ["Email"];
}

export function process(event) {
  for (const name of fields) {
    if (event.get(name)?.tag === "text") {
      event.set(name, Value.text("REDACTED"));
      counterAdd("redacted", 1n);
    }
  }
  return keep(event);
}
