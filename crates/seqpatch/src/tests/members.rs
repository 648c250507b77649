//! The `serde_json` oracle shared by the oracle test and the `scan` fuzz
//! target (which includes this file by path): a top-level object read as
//! its members in order, duplicates kept, and what a scan must make of it.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// A top-level object's members in order, duplicates kept.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Members(pub(crate) Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(V)
    }
}

impl Members {
    /// The first member named `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// What a scan must find (`op` and `s`), or `None` where it must fail:
    /// a repeated gateway key, no unsigned `op`, an `s` that is neither
    /// `null` nor unsigned, a `t` that is neither `null` nor a string.
    pub(crate) fn expected(&self) -> Option<(u64, Option<u64>)> {
        for key in ["op", "s", "t", "d"] {
            if self.0.iter().filter(|(k, _)| k == key).count() > 1 {
                return None;
            }
        }
        let op = self.get("op")?.as_u64()?;
        let seq = match self.get("s") {
            None | Some(Value::Null) => None,
            Some(s) => Some(s.as_u64()?),
        };
        match self.get("t") {
            None | Some(Value::Null | Value::String(_)) => Some((op, seq)),
            Some(_) => None,
        }
    }

    /// The members a rewrite to `seq` must give: `s` replaced where it was,
    /// inserted first where it was not.
    pub(crate) fn with_seq(mut self, seq: u64) -> Self {
        match self.0.iter_mut().find(|(k, _)| k == "s") {
            Some((_, v)) => *v = Value::from(seq),
            None => self.0.insert(0, ("s".to_owned(), Value::from(seq))),
        }
        self
    }
}
