//! Lists every key the policy file accepts, derived from the raw serde types themselves, so that the
//! reference in `docs/policy.md` can be checked against the code rather than against a second list.
//!
//! A tracing deserializer walks the raw types: a struct offers all its fields, a map one entry named `<name>`
//! and a sequence one element marked `[]`. Leaves are located strings, fed an empty string.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};

use super::raw::RawPolicy;

/// Every key path the policy file accepts, in declaration order, such as `server.listen`,
/// `profiles.<name>.resources.cpus` or `auth.static_tokens[].sha256`.
pub fn keys() -> Vec<String> {
    let mut out = Vec::new();
    match RawPolicy::deserialize(Tracer { path: String::new(), out: &mut out }) {
        Ok(_) => out,
        // The raw types only use what the tracer understands; a test guards this.
        Err(_) => Vec::new(),
    }
}

#[derive(Debug)]
struct TraceError(String);

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

struct Tracer<'a> {
    path: String,
    out: &'a mut Vec<String>,
}

impl Tracer<'_> {
    fn child(&self, segment: &str) -> String {
        if self.path.is_empty() { segment.to_owned() } else { format!("{}.{segment}", self.path) }
    }
}

impl<'de> Deserializer<'de> for Tracer<'_> {
    type Error = TraceError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TraceError> {
        v.visit_str("")
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TraceError> {
        v.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, TraceError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, TraceError> {
        v.visit_map(Fields { tracer: self, fields, next: 0 })
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TraceError> {
        let path = self.child("<name>");
        v.visit_map(OneEntry { tracer: Some(Tracer { path, out: self.out }) })
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TraceError> {
        let path = format!("{}[]", self.path);
        v.visit_seq(OneItem { tracer: Some(Tracer { path, out: self.out }) })
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TraceError> {
        v.visit_unit()
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TraceError> {
        v.visit_str("")
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TraceError> {
        v.visit_str("")
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit unit_struct
        tuple tuple_struct enum identifier
    }
}

struct Fields<'a> {
    tracer: Tracer<'a>,
    fields: &'static [&'static str],
    next: usize,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, TraceError> {
        let Some(field) = self.fields.get(self.next) else { return Ok(None) };
        seed.deserialize(field.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, TraceError> {
        let field = self.fields.get(self.next).ok_or_else(|| TraceError("value before key".into()))?;
        self.next += 1;
        let path = self.tracer.child(field);
        self.tracer.out.push(path.clone());
        seed.deserialize(Tracer { path, out: &mut *self.tracer.out })
    }
}

struct OneEntry<'a> {
    tracer: Option<Tracer<'a>>,
}

impl<'de> MapAccess<'de> for OneEntry<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, TraceError> {
        if self.tracer.is_none() {
            return Ok(None);
        }
        let mut scratch = Vec::new();
        seed.deserialize(Tracer { path: String::new(), out: &mut scratch }).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, TraceError> {
        let tracer = self.tracer.take().ok_or_else(|| TraceError("value before key".into()))?;
        seed.deserialize(tracer)
    }
}

struct OneItem<'a> {
    tracer: Option<Tracer<'a>>,
}

impl<'de> SeqAccess<'de> for OneItem<'_> {
    type Error = TraceError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, TraceError> {
        match self.tracer.take() {
            Some(tracer) => seed.deserialize(tracer).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cover_sections_nested_structs_maps_and_lists() {
        let keys = keys();
        for k in [
            "apiVersion",
            "server",
            "server.listen",
            "auth.static_tokens[].sha256",
            "auth.jwt.key_file",
            "profiles",
            "profiles.<name>.image",
            "profiles.<name>.env",
            "profiles.<name>.credentials[].claim",
            "profiles.<name>.resources.cpus",
            "profiles.<name>.security.tmpfs[].path",
            "docker.name_prefix",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
        assert!(!keys.iter().any(|k| k.contains("<name>.<name>")), "{keys:?}");
    }
}
