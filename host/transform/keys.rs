//! The secret keys a transform pseudonymises with (`host.hmac-sha256`), by name. They come
//! from the configuration (`keys = { pii = { env = "MASK_KEY" } }`), stay in the host, and
//! are never handed to the guest, printed or logged: a guest names a key, the host hashes.

use std::collections::BTreeMap;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A transform's keys, each kept as its prepared HMAC state (the key already folded into
/// the inner and outer pads), so a hash costs two SHA-256 passes over short data.
#[derive(Clone, Default)]
pub struct Keys(Arc<BTreeMap<String, HmacSha256>>);

/// Names only: specs and plans end up in `{:?}` output.
impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl Keys {
    /// Keys by name from their secret values (any length; HMAC hashes a long one first).
    pub fn new<'a>(keys: impl IntoIterator<Item = (String, &'a [u8])>) -> Keys {
        Keys(Arc::new(
            keys.into_iter()
                .map(|(name, key)| {
                    let mac =
                        HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
                    (name, mac)
                })
                .collect(),
        ))
    }

    /// These keys with `name` added or replaced.
    pub fn with(&self, name: &str, key: &[u8]) -> Keys {
        let mut keys = (*self.0).clone();
        let mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
        keys.insert(name.to_string(), mac);
        Keys(Arc::new(keys))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each key by name with an HMAC of a fixed text under it: equal keys give equal
    /// fingerprints, so instances can be shared by transforms with the same keys, and the
    /// key cannot be recovered from one.
    pub fn fingerprints(&self) -> impl Iterator<Item = (&str, [u8; 32])> {
        self.0.iter().map(|(name, mac)| {
            let mut mac = mac.clone();
            mac.update(b"sfzb-host instance key");
            (name.as_str(), mac.finalize().into_bytes().into())
        })
    }

    /// HMAC-SHA256 of `data` with the key `name`, as lowercase hex; the error is what the
    /// guest is told (the key names it may use, never a value).
    pub fn hmac_sha256_hex(&self, name: &str, data: &[u8]) -> Result<String, String> {
        let Some(mac) = self.0.get(name) else {
            return Err(if self.0.is_empty() {
                format!(
                    "no key named {name:?}: this transform has no keys; give it keys = {{ {name} = {{ env = \"VAR\" }} }} in its [[subscription.transform]], --transform-key TRANSFORM.{name}=env:VAR on a run, or --key {name}=env:VAR to transform test and bench"
                )
            } else {
                let names: Vec<&str> = self.names().collect();
                format!("no key named {name:?}; its keys are {}", names.join(", "))
            });
        };
        let mut mac = mac.clone();
        mac.update(data);
        Ok(hex::encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_rfc_4231_and_unknown_keys_are_named() {
        // RFC 4231, test case 2.
        let keys = Keys::new([("jefe".to_string(), &b"Jefe"[..])]);
        assert_eq!(
            keys.hmac_sha256_hex("jefe", b"what do ya want for nothing?")
                .unwrap(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let error = keys.hmac_sha256_hex("pii", b"x").unwrap_err();
        assert!(
            error.contains("\"pii\"") && error.contains("jefe"),
            "{error}"
        );
        assert_eq!(format!("{keys:?}"), "[\"jefe\"]", "Debug shows names only");
    }
}
