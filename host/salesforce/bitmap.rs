//! Decodes the field bitmaps of `ChangeEventHeader` (`changedFields`, `nulledFields`,
//! `diffFields`) into field names.
//!
//! Salesforce sends each list as hex bitmaps over the schema's field positions: one
//! top-level entry `0x…` (bit N = the schema's field N, `ChangeEventHeader` being field 0)
//! and, for compound fields, entries `P-0x…` whose bits address the children of the
//! top-level field at position P. Children come out as `Parent.Child`. Anything that does
//! not fit (a bit past the last field, a position that is not a compound field, bad hex) is
//! ignored: a malformed header must never stop the stream.

use crate::event::FieldNames;

/// Field names for one bitmap list, top-level fields first, then compound children,
/// each in bit order.
pub fn decode(bitmaps: &[String], names: &FieldNames) -> Vec<String> {
    let mut out = Vec::new();
    for entry in bitmaps.iter().filter(|e| !e.contains('-')) {
        for bit in set_bits(entry) {
            if let Some(name) = names.top.get(bit) {
                out.push(name.to_string());
            }
        }
    }
    for entry in bitmaps {
        let Some((position, bitmap)) = entry.split_once('-') else {
            continue;
        };
        let Ok(position) = position.trim().parse::<usize>() else {
            continue;
        };
        let (Some(parent), Some(Some(children))) =
            (names.top.get(position), names.children.get(position))
        else {
            continue;
        };
        for bit in set_bits(bitmap) {
            if let Some(child) = children.get(bit) {
                out.push(format!("{parent}.{child}"));
            }
        }
    }
    out
}

/// Positions of the set bits of a `0x…` hex bitmap, lowest first. The last hex digit holds
/// bits 0–3. Any length and either case; an entry with a non-hex digit yields nothing.
fn set_bits(bitmap: &str) -> Vec<usize> {
    let bitmap = bitmap.trim();
    let digits = bitmap
        .strip_prefix("0x")
        .or_else(|| bitmap.strip_prefix("0X"))
        .unwrap_or(bitmap);
    let mut nibbles = Vec::with_capacity(digits.len());
    for c in digits.chars().rev() {
        match c.to_digit(16) {
            Some(n) => nibbles.push(n),
            None => return Vec::new(),
        }
    }
    let mut bits = Vec::new();
    for (i, nibble) in nibbles.into_iter().enumerate() {
        for b in 0..4 {
            if nibble & (1 << b) != 0 {
                bits.push(i * 4 + b);
            }
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::salesforce::schema::parse_schema;

    fn account() -> FieldNames {
        let json = include_str!("../sim/schemas/AccountChangeEvent.avsc");
        parse_schema("acct", json).unwrap().event.names.clone()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn top_level_bits_map_to_schema_positions() {
        // Bits 5,6,7,10,24,26,29,30 of the real AccountChangeEvent schema.
        let names = account();
        let got = decode(&strings(&["0x650004E0"]), &names);
        assert_eq!(
            got,
            [
                "BillingAddress",
                "ShippingAddress",
                "Phone",
                "Website",
                "LastModifiedById",
                "PersonMailingAddress",
                "PersonHomePhone",
                "PersonOtherPhone"
            ]
        );
    }

    #[test]
    fn nested_entries_on_simple_fields_are_ignored() {
        // Positions 4 (ParentId) and 7 (Phone) are not compound in this schema: their
        // nested bitmaps name nothing, and the top-level bits still decode.
        let names = account();
        let got = decode(&strings(&["0x650004E0", "4-0x10", "7-0x06"]), &names);
        assert_eq!(got.len(), 8);
        assert!(got.iter().all(|n| !n.contains('.')));
    }

    #[test]
    fn nested_entries_name_compound_children() {
        // 5 = BillingAddress (Street, City, State, PostalCode, Country, …, Xyz at bit 9),
        // 26 = PersonMailingAddress.
        let names = account();
        let got = decode(&strings(&["0x04000020", "5-0x206", "26-0x10"]), &names);
        assert_eq!(
            got,
            [
                "BillingAddress",
                "PersonMailingAddress",
                "BillingAddress.City",
                "BillingAddress.State",
                "BillingAddress.Xyz",
                "PersonMailingAddress.Country"
            ]
        );
    }

    #[test]
    fn name_union_with_record_has_children() {
        // Field 1 is Name: ["null", "string", Switchable_PersonName].
        let names = account();
        let got = decode(&strings(&["1-0x06"]), &names);
        assert_eq!(got, ["Name.FirstName", "Name.LastName"]);
    }

    #[test]
    fn any_length_and_case_and_out_of_range_bits() {
        let names = account();
        let wide = format!("0x{}{}", "F".repeat(30), "0000002");
        let got = decode(&[wide], &names);
        // Bit 1 (Name) plus every field from bit 28 to the end of the schema; bits past
        // the last field are ignored.
        assert_eq!(got[0], "Name");
        assert_eq!(got.len(), 1 + names.top.len() - 28);
        assert_eq!(
            decode(&strings(&["0x000a"]), &names),
            decode(&strings(&["0XA"]), &names)
        );
    }

    #[test]
    fn garbage_never_panics() {
        let names = account();
        for bad in [
            "",
            "0x",
            "0xZZ",
            "-",
            "x-0x1",
            "999-0x1",
            "5-",
            "5-0xG",
            "18446744073709551616-0x1",
        ] {
            let _ = decode(&strings(&[bad]), &names);
        }
        assert!(decode(&strings(&["0xZZ"]), &names).is_empty());
        assert!(decode(&[], &names).is_empty());
    }
}
