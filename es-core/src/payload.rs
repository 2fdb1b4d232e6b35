//! A stored event's payload, and decoding an event enum from its type name and payload.
//!
//! A store hands the payload over as the JSON text it read, unparsed: an event at its current
//! schema version is then parsed once, straight into the application's enum. Only an event that
//! needs upcasting is parsed into a [`serde_json::Value`] first, because upcasters rewrite
//! values. On a replay this halves the work of decoding.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeOwned, IntoDeserializer};
use serde_json::Value;

/// The JSON payload of a stored event: its text as read from the store, or a value.
#[derive(Clone, Debug)]
pub struct Payload(Repr);

#[derive(Clone, Debug)]
enum Repr {
    /// JSON text, not yet parsed (nor checked: a malformed text fails when decoded).
    Text(String),
    /// A parsed (or upcast) value.
    Value(Value),
}

impl Payload {
    /// A payload from JSON text, parsed only when needed.
    pub fn from_json_text(text: String) -> Self {
        Self(Repr::Text(text))
    }

    /// The payload as a JSON value, parsing it if it is text.
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        match &self.0 {
            Repr::Text(text) => serde_json::from_str(text),
            Repr::Value(value) => Ok(value.clone()),
        }
    }

    /// The payload as a JSON value, parsing it if it is text.
    pub fn into_value(self) -> Result<Value, serde_json::Error> {
        match self.0 {
            Repr::Text(text) => serde_json::from_str(&text),
            Repr::Value(value) => Ok(value),
        }
    }

    /// The payload as JSON text.
    pub fn json_text(&self) -> Cow<'_, str> {
        match &self.0 {
            Repr::Text(text) => Cow::Borrowed(text),
            Repr::Value(value) => Cow::Owned(value.to_string()),
        }
    }

    /// Decodes the event enum `E` from its variant name and this payload (see
    /// [`decode_tagged`]).
    pub fn decode<E: DeserializeOwned>(self, event_type: &str) -> Result<E, serde_json::Error> {
        match self.0 {
            Repr::Text(text) => {
                let mut json = serde_json::Deserializer::from_str(&text);
                let event = decode_tagged(event_type, &mut json)?;
                json.end()?;
                Ok(event)
            }
            Repr::Value(value) => decode_tagged(event_type, value),
        }
    }
}

impl Default for Payload {
    fn default() -> Self {
        Self(Repr::Value(Value::Null))
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Self(Repr::Value(value))
    }
}

/// Payloads are equal when their JSON values are, whatever their form; malformed texts compare
/// as text.
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        match (self.to_value(), other.to_value()) {
            (Ok(a), Ok(b)) => a == b,
            _ => self.json_text() == other.json_text(),
        }
    }
}

impl PartialEq<Value> for Payload {
    fn eq(&self, other: &Value) -> bool {
        self.to_value().is_ok_and(|value| value == *other)
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.json_text())
    }
}

/// Decodes an externally tagged enum `E` from its variant name and the variant's content, as
/// if from `{event_type: content}` but without building that object: a unit variant's content
/// is `null`, a newtype variant's is its value, a struct variant's an object.
pub fn decode_tagged<'de, E, D>(event_type: &str, content: D) -> Result<E, D::Error>
where
    E: de::Deserialize<'de>,
    D: de::Deserializer<'de>,
{
    E::deserialize(Tagged {
        tag: event_type,
        content,
    })
}

/// A deserializer that presents `content` as the variant `tag` of an enum.
struct Tagged<'t, D> {
    tag: &'t str,
    content: D,
}

impl<'de, D: de::Deserializer<'de>> de::Deserializer<'de> for Tagged<'_, D> {
    type Error = D::Error;

    fn deserialize_any<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        visitor.visit_enum(self)
    }

    fn deserialize_enum<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

impl<'de, D: de::Deserializer<'de>> de::EnumAccess<'de> for Tagged<'_, D> {
    type Error = D::Error;
    type Variant = Content<D>;

    fn variant_seed<S: de::DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Content<D>), D::Error> {
        let tag: de::value::StrDeserializer<'_, D::Error> = self.tag.into_deserializer();
        Ok((seed.deserialize(tag)?, Content(self.content)))
    }
}

/// The content of the variant.
struct Content<D>(D);

impl<'de, D: de::Deserializer<'de>> de::VariantAccess<'de> for Content<D> {
    type Error = D::Error;

    fn unit_variant(self) -> Result<(), D::Error> {
        // Stored as `null`; `()` accepts nothing else.
        <() as de::Deserialize>::deserialize(self.0)
    }

    fn newtype_variant_seed<S: de::DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, D::Error> {
        seed.deserialize(self.0)
    }

    fn tuple_variant<V: de::Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, visitor)
    }

    fn struct_variant<V: de::Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_struct("", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, PartialEq, Deserialize)]
    enum E {
        Created,
        Renamed(String),
        Moved(i32, i32),
        Configured { gas: u32, unit: Option<String> },
    }

    fn both(event_type: &str, content: Value) -> (Result<E, String>, Result<E, String>) {
        let text = Payload::from_json_text(content.to_string()).decode::<E>(event_type);
        let value = Payload::from(content).decode::<E>(event_type);
        (
            text.map_err(|e| e.to_string()),
            value.map_err(|e| e.to_string()),
        )
    }

    #[test]
    fn every_variant_shape_decodes_from_text_and_from_value() {
        for (event_type, content, expected) in [
            ("Created", json!(null), E::Created),
            ("Renamed", json!("x"), E::Renamed("x".into())),
            ("Moved", json!([1, 2]), E::Moved(1, 2)),
            (
                "Configured",
                json!({"gas": 5, "unit": "kWh"}),
                E::Configured {
                    gas: 5,
                    unit: Some("kWh".into()),
                },
            ),
            (
                "Configured",
                json!({"gas": 5}),
                E::Configured { gas: 5, unit: None },
            ),
        ] {
            let (text, value) = both(event_type, content);
            assert_eq!(text.as_ref(), Ok(&expected), "{event_type} from text");
            assert_eq!(value.as_ref(), Ok(&expected), "{event_type} from value");
        }
    }

    #[test]
    fn mismatches_are_errors_in_both_forms() {
        for (event_type, content) in [
            ("Unknown", json!(null)),
            ("Created", json!({"a": 1})),
            ("Renamed", json!(5)),
            ("Configured", json!({"gas": "five"})),
            ("Configured", json!(null)),
        ] {
            let (text, value) = both(event_type, content.clone());
            assert!(text.is_err(), "{event_type} {content} from text");
            assert!(value.is_err(), "{event_type} {content} from value");
        }
    }

    #[test]
    fn malformed_text_is_an_error_not_a_panic() {
        for text in ["{\"gas\": 5", "{\"gas\": 5} trailing", "", "nul"] {
            let payload = Payload::from_json_text(text.into());
            assert!(payload.to_value().is_err(), "{text:?}");
            assert!(payload.decode::<E>("Configured").is_err(), "{text:?}");
        }
    }

    #[test]
    fn equality_is_by_value() {
        let text = Payload::from_json_text("{\"b\": 1, \"a\": [true]}".into());
        assert_eq!(text, Payload::from(json!({"a": [true], "b": 1})));
        assert_eq!(text, json!({"a": [true], "b": 1}));
        assert_ne!(text, Payload::from(json!({"a": [true]})));
        assert_eq!(text.to_string(), "{\"b\": 1, \"a\": [true]}");
    }
}
