//! The `mask` transform written against the rejected full-record design
//! (`benches/wit-record/record.wit`), so the benchmark compares like with like.

wit_bindgen::generate!({ path: "../../benches/wit-record", world: "transform-record" });

struct Mask;

impl Guest for Mask {
    fn process(mut event: Event) -> Result<Vec<Event>, String> {
        for field in event.fields.iter_mut() {
            if matches!(field.name.as_str(), "PersonEmail" | "Phone") && matches!(field.value, Value::Text(_)) {
                field.value = Value::Text("REDACTED".into());
            }
        }
        Ok(vec![event])
    }
}

export!(Mask);
