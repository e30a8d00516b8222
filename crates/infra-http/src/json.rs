//! Strict JSON request objects, and JSON strings written straight into response buffers.
//!
//! `serde_json::Map` keeps the last of repeated keys without a word, so `{"a":"1","a":"2"}` would store one
//! pair and lose the other silently. [`StringPairs`] reads the object with its own visitor and refuses a
//! repeated key, naming it; keys are compared after JSON unescaping (`"a"` and `"\u0061"` are the same key).

use std::collections::btree_map::{BTreeMap, Entry};
use std::fmt;

use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, Visitor};

/// Appends `s` to `out` as a JSON string literal, quoted and escaped by serde_json, with no intermediate
/// `String` or `serde_json::Value` (a range answer writes two per entry).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    // Cannot fail: serialising a `str` only fails when the writer does, and writing to a `Vec` never does.
    let _ = serde_json::to_writer(out, s);
}

/// A JSON object whose values are all strings and whose keys are all distinct (the `/batchput` body).
/// Invariant: no key appears twice in the document it was read from.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StringPairs(pub BTreeMap<String, String>);

/// A value that must be a JSON string; anything else fails with a message naming the key it belongs to.
struct StringValue<'a>(&'a str);

impl<'de> serde::de::DeserializeSeed<'de> for StringValue<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        struct V<'a>(&'a str);
        impl Visitor<'_> for V<'_> {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a string as the value of key {:?}", self.0)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<String, E> {
                Ok(v)
            }
        }
        d.deserialize_string(V(self.0))
    }
}

impl<'de> Deserialize<'de> for StringPairs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = StringPairs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StringPairs, A::Error> {
                let mut pairs = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value_seed(StringValue(&key))?;
                    match pairs.entry(key) {
                        Entry::Vacant(slot) => {
                            slot.insert(value);
                        }
                        Entry::Occupied(slot) => {
                            return Err(A::Error::custom(format!("duplicate key {:?}", slot.key())))
                        }
                    }
                }
                Ok(StringPairs(pairs))
            }
        }
        d.deserialize_map(Pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<StringPairs, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn distinct_string_pairs_are_read() {
        let p = parse(r#"{"b":"2","a":"1"}"#).unwrap();
        assert_eq!(
            p.0.into_iter().collect::<Vec<_>>(),
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert_eq!(parse("{}").unwrap(), StringPairs::default());
    }

    #[test]
    fn a_repeated_key_is_refused_and_named_even_when_escaped_differently() {
        let e = parse(r#"{"a":"1","b":"2","a":"3"}"#).unwrap_err();
        assert!(e.contains("duplicate key \"a\""), "{e}");
        let e = parse(r#"{"a":"1","\u0061":"2"}"#).unwrap_err();
        assert!(e.contains("duplicate key \"a\""), "{e}");
    }

    #[test]
    fn non_string_values_and_non_objects_are_refused() {
        let e = parse(r#"{"k":5}"#).unwrap_err();
        assert!(e.contains("value of key \"k\""), "{e}");
        assert!(parse(r#"["a"]"#).is_err());
        assert!(parse(r#""a""#).is_err());
    }
}
