//! Field values: typed by the writer schema, shaped by the field's name (emails, phones,
//! cities, picklists), compound fields with the children they set.

use apache_avro::Schema;
use apache_avro::schema::RecordSchema;
use apache_avro::types::Value as Avro;
use rand::Rng;
use rand::rngs::StdRng;

use super::{EPOCH_MS, record_id};
use crate::event::EventSchema;
use crate::sim::catalog::ADDED_FIELD;

/// A plausible value for a field, typed by its schema and shaped by its name. For compound
/// fields, `children` receives the positions of the children set.
pub(super) fn value_for(
    rng: &mut StdRng,
    name: &str,
    field: &Schema,
    schema: &EventSchema,
    children: Option<&mut Vec<usize>>,
) -> Avro {
    let Some(inner) = value_schema(field, name) else {
        return Avro::Null;
    };
    match inner {
        Inner::Record(record) => {
            let record = resolve(record, schema);
            compound(rng, record, children)
        }
        Inner::Simple(kind) => simple(rng, name, kind),
    }
}

enum Inner<'a> {
    Record(&'a Schema),
    Simple(&'a Schema),
}

fn value_schema<'a>(field: &'a Schema, name: &str) -> Option<Inner<'a>> {
    let variants: Vec<&Schema> = match field {
        Schema::Union(u) => u
            .variants()
            .iter()
            .filter(|v| !matches!(v, Schema::Null))
            .collect(),
        other => vec![other],
    };
    // Account's Name is ["null", "string", Switchable_PersonName]: business accounts use text.
    if name == "Name" && variants.iter().any(|v| matches!(v, Schema::String)) {
        return Some(Inner::Simple(&Schema::String));
    }
    variants.into_iter().next().map(|v| match v {
        Schema::Record(_) | Schema::Ref { .. } => Inner::Record(v),
        other => Inner::Simple(other),
    })
}

fn resolve<'a>(record: &'a Schema, schema: &'a EventSchema) -> &'a RecordSchema {
    crate::salesforce::schema::record_of(record, &schema.avro)
        .expect("value_schema returns records, and references name a record of the schema")
}

fn compound(rng: &mut StdRng, record: &RecordSchema, children: Option<&mut Vec<usize>>) -> Avro {
    let mut set = Vec::new();
    let fields = record
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let plausible = matches!(
                f.name.as_str(),
                "Street"
                    | "City"
                    | "State"
                    | "PostalCode"
                    | "Country"
                    | "FirstName"
                    | "LastName"
                    | "Latitude"
                    | "Longitude"
            );
            let v = if plausible && rng.random_range(0..3) > 0 {
                set.push(i);
                let kind = crate::salesforce::schema::non_null(&f.schema);
                simple(rng, &f.name, kind)
            } else {
                Avro::Null
            };
            (f.name.clone(), wrap(&f.schema, v))
        })
        .collect();
    if let Some(out) = children {
        *out = set;
    }
    Avro::Record(fields)
}

const CITIES: [&str; 6] = [
    "San Francisco",
    "Amsterdam",
    "Austin",
    "Lyon",
    "Osaka",
    "Toronto",
];
const NAMES: [&str; 6] = ["Ada", "Grace", "Linus", "Margaret", "Ken", "Barbara"];
const SURNAMES: [&str; 6] = [
    "Lovelace", "Hopper", "Torvalds", "Hamilton", "Thompson", "Liskov",
];
const PICKLIST: [&str; 5] = ["Hot", "Warm", "Cold", "Open", "Closed"];

fn simple(rng: &mut StdRng, name: &str, kind: &Schema) -> Avro {
    match kind {
        Schema::String => Avro::String(text_for(rng, name)),
        Schema::Boolean => Avro::Boolean(rng.random()),
        Schema::Int => Avro::Int(rng.random_range(1..5000)),
        Schema::Long => Avro::Long(EPOCH_MS - rng.random_range(0..400) * 86_400_000),
        Schema::Double | Schema::Float => {
            let v = (rng.random_range(0.0..1_000_000.0_f64) * 100.0).round() / 100.0;
            if matches!(kind, Schema::Float) {
                Avro::Float(v as f32)
            } else {
                Avro::Double(v)
            }
        }
        _ => Avro::Null,
    }
}

fn text_for(rng: &mut StdRng, name: &str) -> String {
    let n: u32 = rng.random_range(0..100_000);
    let first = NAMES[rng.random_range(0..NAMES.len())];
    let last = SURNAMES[rng.random_range(0..SURNAMES.len())];
    if name.contains("Email") {
        format!(
            "{}.{}{}@example.com",
            first.to_lowercase(),
            last.to_lowercase(),
            n % 100
        )
    } else if name.contains("Phone") || name == "Fax" {
        format!("+1-415-555-{:04}", n % 10_000)
    } else if name.ends_with("Id") || name.ends_with("__c") && name.contains("Account") {
        record_id(
            if name.starts_with("Owner") || name.ends_with("ById") {
                "005"
            } else {
                "001"
            },
            u64::from(n),
        )
    } else if name == "FirstName" {
        first.to_string()
    } else if name == "LastName" {
        last.to_string()
    } else if name == "City" {
        CITIES[rng.random_range(0..CITIES.len())].to_string()
    } else if name == "Name" || name == "Company" {
        format!(
            "{last} {} {n}",
            ["Labs", "Systems", "Industries"][n as usize % 3]
        )
    } else if name == "Website" || name.contains("URL") {
        format!("https://www.{}{n}.example.com", last.to_lowercase())
    } else if name.contains("Source")
        || name.contains("Status")
        || name.contains("Rating")
        || name.contains("Stage")
        || name == ADDED_FIELD
    {
        PICKLIST[rng.random_range(0..PICKLIST.len())].to_string()
    } else {
        format!("{name} {n}")
    }
}

/// Puts a value into the union branch of the field's schema that holds its type.
pub(super) fn wrap(field: &Schema, value: Avro) -> Avro {
    let Schema::Union(u) = field else {
        return value;
    };
    let index = u.variants().iter().position(|v| {
        matches!(
            (v, &value),
            (Schema::Null, Avro::Null)
                | (Schema::String, Avro::String(_))
                | (Schema::Boolean, Avro::Boolean(_))
                | (Schema::Int, Avro::Int(_))
                | (Schema::Long, Avro::Long(_))
                | (Schema::Double, Avro::Double(_))
                | (Schema::Float, Avro::Float(_))
                | (Schema::Record(_), Avro::Record(_))
                | (Schema::Ref { .. }, Avro::Record(_))
        )
    });
    match index {
        Some(i) => Avro::Union(i as u32, Box::new(value)),
        None => Avro::Union(0, Box::new(Avro::Null)),
    }
}
