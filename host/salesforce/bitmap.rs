//! Decodes the field bitmaps of `ChangeEventHeader` (`changedFields`, `nulledFields`,
//! `diffFields`) into field names.
//!
//! Salesforce sends each list as hex bitmaps over the schema's field positions: one
//! top-level entry `0x…` (bit N = the schema's field N, `ChangeEventHeader` being field 0)
//! and, for compound fields, entries `P-0x…` whose bits address the children of the
//! top-level field at position P. Children come out as `Parent.Child`. Anything that does
//! not fit (a bit past the last field, a position that is not a compound field, bad hex) is
//! ignored: a malformed header must never stop the stream.

use crate::event::{FieldNames, Name};

/// Field names for one bitmap list, top-level fields first, then compound children,
/// each in position order and each once. The work and the output are bounded by the
/// schema's field count, whatever the header holds: a bit past the last field is not even
/// expanded, so a megabyte of `f`s costs a scan, not a list of millions of positions.
pub fn decode(bitmaps: &[String], names: &FieldNames) -> Vec<Name> {
    if bitmaps.is_empty() {
        return Vec::new();
    }
    // Bit sets, 64 positions a word: this runs three times per event, and a word set is
    // marked a hex digit at a time and read back a set bit at a time.
    let mut top = Bits::new(names.top.len());
    // Only the compound fields an entry names get a set: most schemas have a hundred
    // fields but few compound ones.
    let mut nested: Vec<(usize, Bits)> = Vec::new();
    for entry in bitmaps {
        match entry.split_once('-') {
            None => top.mark(entry),
            Some((position, bitmap)) => {
                let Some((p, children)) = position.trim().parse::<usize>().ok().and_then(|p| {
                    let children = names.dotted.get(p)?.as_ref()?;
                    Some((p, children))
                }) else {
                    continue;
                };
                let i = match nested.iter().position(|(q, _)| *q == p) {
                    Some(i) => i,
                    None => {
                        nested.push((p, Bits::new(children.len())));
                        nested.len() - 1
                    }
                };
                nested[i].1.mark(bitmap);
            }
        }
    }
    nested.sort_unstable_by_key(|(p, _)| *p);
    let count = top.count() + nested.iter().map(|(_, set)| set.count()).sum::<usize>();
    let mut out = Vec::with_capacity(count);
    out.extend(top.positions().map(|i| names.top[i]));
    for (p, set) in &nested {
        if let Some(Some(children)) = names.dotted.get(*p) {
            out.extend(set.positions().map(|i| children[i]));
        }
    }
    out
}

/// A set of the positions below `len`.
struct Bits {
    words: Vec<u64>,
    len: usize,
}

impl Bits {
    fn new(len: usize) -> Bits {
        Bits {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    /// Marks the positions whose bits a `0x…` hex bitmap sets (the last hex digit holds
    /// bits 0–3; any length and either case). Bits past the set's length are ignored; an
    /// entry with a non-hex digit marks nothing.
    fn mark(&mut self, bitmap: &str) {
        let bitmap = bitmap.trim();
        let digits = bitmap
            .strip_prefix("0x")
            .or_else(|| bitmap.strip_prefix("0X"))
            .unwrap_or(bitmap);
        if !digits.bytes().all(|c| c.is_ascii_hexdigit()) {
            return;
        }
        // A digit's four bits never straddle two words (64 is a multiple of 4).
        for (i, c) in digits.bytes().rev().take(self.len.div_ceil(4)).enumerate() {
            let nibble = (c as char).to_digit(16).unwrap_or(0) as u64;
            self.words[i / 16] |= nibble << (i % 16 * 4);
        }
        // Bits past the last position, in the last word.
        if let Some(last) = self.words.last_mut()
            && self.len % 64 != 0
        {
            *last &= (1 << (self.len % 64)) - 1;
        }
    }

    fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The marked positions, in order.
    fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(k, &word)| {
            let mut word = word;
            std::iter::from_fn(move || {
                (word != 0).then(|| {
                    let bit = word.trailing_zeros() as usize;
                    word &= word - 1;
                    k * 64 + bit
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::salesforce::schema::parse_schema;

    fn account() -> FieldNames {
        let json = include_str!("../sim/schemas/AccountChangeEvent.avsc");
        parse_schema("acct", json).unwrap().names.clone()
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
    fn a_huge_or_repeated_bitmap_names_each_field_once() {
        let names = account();
        let huge = format!("0x{}", "f".repeat(4 << 20));
        let repeated = vec![huge; 8];
        let got = decode(&repeated, &names);
        assert_eq!(got.len(), names.top.len(), "every top-level field, once");
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
