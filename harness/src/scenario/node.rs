//! A TOML document as a tree whose every key and value keeps its byte span, so that the
//! scenario parser can say "file:line:column" for any problem, not only for TOML syntax errors.
//!
//! The tree is read through toml's own deserializer (`toml::Spanned` on every key and value);
//! [`Fields`] then walks a table the way a schema does: take the fields it knows, report the
//! first missing or unknown one with the expected form.

use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// One TOML value with its span in the source text.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub span: Range<usize>,
    pub value: Value,
}

/// The TOML value kinds the scenario format uses (dates and times are refused while reading).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Array(Vec<Node>),
    /// Keys in document order, each with its own span.
    Table(Vec<(Key, Node)>),
}

/// A table key with its span.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub span: Range<usize>,
    pub name: String,
}

impl Value {
    /// How an error names this kind of value ("found a string").
    pub fn kind(&self) -> &'static str {
        match self {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }
}

/// A problem at one place in the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanError {
    pub span: Range<usize>,
    pub message: String,
}

impl SpanError {
    pub fn new(span: Range<usize>, message: impl Into<String>) -> Self {
        SpanError {
            span,
            message: message.into(),
        }
    }
}

/// Parses `text` into a spanned tree. Syntax errors keep toml's message and span.
pub fn parse_document(text: &str) -> Result<Node, SpanError> {
    let doc: MaybeSpanned = toml::from_str(text).map_err(|e| {
        SpanError::new(e.span().unwrap_or(0..0), e.message().trim_end().to_string())
    })?;
    Ok(doc.into_node(0..0))
}

/// 1-based line and column (in characters) of byte offset `at` in `text`.
pub fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

// toml hands out spans through serde_spanned's private struct protocol (the names below, as
// serde_spanned 0.6 defines them for toml 0.8). `toml::Spanned` itself cannot be used for
// values: tables made implicitly by dotted keys (`[cloud.product]`, `a.b = 1`) have no span,
// and `Spanned` then fails. This reader takes the span when there is one and falls back to the
// key's span when there is none.
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START, SPANNED_END, SPANNED_VALUE];
/// toml's private encoding of a date-time: a map with this one key.
const DATETIME_KEY: &str = "$__toml_private_datetime";

const DATETIME_MESSAGE: &str =
    "dates and times are not part of the scenario format; write a quoted string";

/// A value with its span when toml knows it.
struct MaybeSpanned {
    span: Option<Range<usize>>,
    value: Value,
}

impl MaybeSpanned {
    fn into_node(self, fallback: Range<usize>) -> Node {
        Node {
            span: self.span.unwrap_or(fallback),
            value: self.value,
        }
    }
}

impl<'de> Deserialize<'de> for MaybeSpanned {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, NodeVisitor)
    }
}

/// The plain value inside a spanned wrapper.
struct PlainValue(Value);

impl<'de> Deserialize<'de> for PlainValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(NodeVisitor)
            .map(|m| PlainValue(m.value))
    }
}

/// A table key, spanned or plain (the keys of toml's private maps are plain strings).
struct MaybeSpannedKey {
    span: Option<Range<usize>>,
    name: String,
}

impl<'de> Deserialize<'de> for MaybeSpannedKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = MaybeSpannedKey;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a table key")
    }

    fn visit_str<E>(self, v: &str) -> Result<MaybeSpannedKey, E> {
        Ok(MaybeSpannedKey {
            span: None,
            name: v.to_string(),
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MaybeSpannedKey, A::Error> {
        let (start, end) = read_span(&mut map)?;
        let name: String = map.next_value()?;
        Ok(MaybeSpannedKey {
            span: Some(start..end),
            name,
        })
    }
}

/// Reads the start and end fields of a spanned wrapper and positions `map` on its value.
fn read_span<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(usize, usize), A::Error> {
    let mut start = None;
    let mut end = None;
    while let Some(key) = map.next_key::<String>()? {
        match key.as_str() {
            SPANNED_START => start = Some(map.next_value::<usize>()?),
            SPANNED_END => end = Some(map.next_value::<usize>()?),
            SPANNED_VALUE => {
                return match (start, end) {
                    (Some(s), Some(e)) => Ok((s, e)),
                    _ => Err(de::Error::custom("span without start or end")),
                }
            }
            other => return Err(de::Error::custom(format!("unexpected span field {other}"))),
        }
    }
    Err(de::Error::custom("span without a value"))
}

struct NodeVisitor;

impl NodeVisitor {
    fn plain(value: Value) -> MaybeSpanned {
        MaybeSpanned { span: None, value }
    }
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = MaybeSpanned;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<MaybeSpanned, E> {
        Ok(Self::plain(Value::Boolean(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<MaybeSpanned, E> {
        Ok(Self::plain(Value::Integer(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<MaybeSpanned, E> {
        i64::try_from(v)
            .map(|i| Self::plain(Value::Integer(i)))
            .map_err(|_| E::custom("integer out of range"))
    }

    fn visit_f64<E>(self, v: f64) -> Result<MaybeSpanned, E> {
        Ok(Self::plain(Value::Float(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<MaybeSpanned, E> {
        Ok(Self::plain(Value::String(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<MaybeSpanned, E> {
        Ok(Self::plain(Value::String(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MaybeSpanned, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<MaybeSpanned>()? {
            out.push(item.into_node(0..0));
        }
        Ok(Self::plain(Value::Array(out)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MaybeSpanned, A::Error> {
        let mut out = Vec::new();
        let mut first = true;
        while let Some(key) = map.next_key::<MaybeSpannedKey>()? {
            if first && key.span.is_none() {
                match key.name.as_str() {
                    // The spanned wrapper of a value: start, end, then the value itself.
                    SPANNED_START => {
                        let start: usize = map.next_value()?;
                        let end = match map.next_key::<String>()?.as_deref() {
                            Some(SPANNED_END) => map.next_value::<usize>()?,
                            _ => return Err(de::Error::custom("span without an end")),
                        };
                        return match map.next_key::<String>()?.as_deref() {
                            Some(SPANNED_VALUE) => {
                                let PlainValue(value) = map.next_value()?;
                                Ok(MaybeSpanned {
                                    span: Some(start..end),
                                    value,
                                })
                            }
                            _ => Err(de::Error::custom("span without a value")),
                        };
                    }
                    DATETIME_KEY => return Err(de::Error::custom(DATETIME_MESSAGE)),
                    _ => {}
                }
            }
            first = false;
            let value = map.next_value::<MaybeSpanned>()?;
            let key_span = key.span.unwrap_or(0..0);
            let node = value.into_node(key_span.clone());
            out.push((
                Key {
                    span: key_span,
                    name: key.name,
                },
                node,
            ));
        }
        Ok(Self::plain(Value::Table(out)))
    }
}

/// Walks one table: typed access to its fields, then [`Fields::finish`] reports unknown keys.
pub struct Fields<'a> {
    span: Range<usize>,
    entries: &'a [(Key, Node)],
    used: Vec<bool>,
    /// What the table is, for messages ("step 3 (power.cut)").
    what: String,
    /// The keys this table accepts, listed when an unknown key is found.
    known: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    /// `node` must be a table; `what` names it in messages.
    pub fn new(node: &'a Node, what: impl Into<String>) -> Result<Self, SpanError> {
        let what = what.into();
        match &node.value {
            Value::Table(entries) => Ok(Fields {
                span: node.span.clone(),
                entries,
                used: vec![false; entries.len()],
                what,
                known: Vec::new(),
            }),
            other => Err(SpanError::new(
                node.span.clone(),
                format!("{what} must be a table, found {}", other.kind()),
            )),
        }
    }

    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    /// The node of `key`, if present; marks it known and used.
    pub fn get(&mut self, key: &'static str) -> Option<&'a Node> {
        if !self.known.contains(&key) {
            self.known.push(key);
        }
        let i = self.entries.iter().position(|(k, _)| k.name == key)?;
        self.used[i] = true;
        Some(&self.entries[i].1)
    }

    /// The span of `key`'s name, if present.
    pub fn key_span(&self, key: &str) -> Option<Range<usize>> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(k, _)| k.span.clone())
    }

    /// Whether `key` is present (does not mark it used).
    pub fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k.name == key)
    }

    /// A required field, converted by `convert`. `form` shows the expected form when missing.
    pub fn required<T>(
        &mut self,
        key: &'static str,
        form: &str,
        convert: impl FnOnce(&'a Node) -> Result<T, SpanError>,
    ) -> Result<T, SpanError> {
        match self.get(key) {
            Some(node) => self.convert(key, node, convert),
            None => Err(SpanError::new(
                self.span.clone(),
                format!("{}: missing field `{key}`; expected {form}", self.what),
            )),
        }
    }

    /// An optional field, converted by `convert`.
    pub fn optional<T>(
        &mut self,
        key: &'static str,
        convert: impl FnOnce(&'a Node) -> Result<T, SpanError>,
    ) -> Result<Option<T>, SpanError> {
        match self.get(key) {
            Some(node) => self.convert(key, node, convert).map(Some),
            None => Ok(None),
        }
    }

    /// Runs `convert`; an error about the value itself (not something nested in it) is
    /// prefixed with the table and the key: "step 2 (wait.event): `name`: expected a string".
    fn convert<T>(
        &self,
        key: &str,
        node: &'a Node,
        convert: impl FnOnce(&'a Node) -> Result<T, SpanError>,
    ) -> Result<T, SpanError> {
        convert(node).map_err(|mut e| {
            if e.span == node.span {
                e.message = format!("{}: `{key}`: {}", self.what, e.message);
            }
            e
        })
    }

    /// Fails on the first key no `get` asked for, listing the accepted ones.
    pub fn finish(&self) -> Result<(), SpanError> {
        for ((key, _), used) in self.entries.iter().zip(&self.used) {
            if !used {
                return Err(SpanError::new(
                    key.span.clone(),
                    format!(
                        "{}: unknown field `{}`; expected one of: {}",
                        self.what,
                        key.name,
                        self.known.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn wrong_type(node: &Node, expected: &str) -> SpanError {
    SpanError::new(
        node.span.clone(),
        format!("expected {expected}, found {}", node.value.kind()),
    )
}

pub fn as_str(node: &Node) -> Result<&str, SpanError> {
    match &node.value {
        Value::String(s) => Ok(s),
        _ => Err(wrong_type(node, "a string")),
    }
}

pub fn as_string(node: &Node) -> Result<String, SpanError> {
    as_str(node).map(str::to_string)
}

pub fn as_bool(node: &Node) -> Result<bool, SpanError> {
    match &node.value {
        Value::Boolean(b) => Ok(*b),
        _ => Err(wrong_type(node, "`true` or `false`")),
    }
}

/// An integer in `min..=max`.
pub fn as_int(node: &Node, min: i64, max: i64) -> Result<i64, SpanError> {
    match &node.value {
        Value::Integer(i) if (min..=max).contains(i) => Ok(*i),
        Value::Integer(i) => Err(SpanError::new(
            node.span.clone(),
            format!("{i} is out of range; expected an integer from {min} to {max}"),
        )),
        _ => Err(wrong_type(node, "an integer")),
    }
}

pub fn as_u64(node: &Node) -> Result<u64, SpanError> {
    as_int(node, 0, i64::MAX).map(|i| i as u64)
}

pub fn as_u32(node: &Node) -> Result<u32, SpanError> {
    as_int(node, 0, u32::MAX as i64).map(|i| i as u32)
}

pub fn as_u16(node: &Node) -> Result<u16, SpanError> {
    as_int(node, 0, u16::MAX as i64).map(|i| i as u16)
}

/// A rate from 0 to 1 (integers 0 and 1 accepted).
pub fn as_rate(node: &Node) -> Result<f64, SpanError> {
    let v = match &node.value {
        Value::Float(f) => *f,
        Value::Integer(i) => *i as f64,
        _ => return Err(wrong_type(node, "a rate from 0.0 to 1.0")),
    };
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(SpanError::new(
            node.span.clone(),
            format!("{v} is out of range; expected a rate from 0.0 to 1.0"),
        ))
    }
}

pub fn as_array(node: &Node) -> Result<&[Node], SpanError> {
    match &node.value {
        Value::Array(items) => Ok(items),
        _ => Err(wrong_type(node, "an array")),
    }
}

/// One of a fixed set of words.
pub fn as_word<T: Copy>(node: &Node, words: &[(&str, T)]) -> Result<T, SpanError> {
    let s = as_str(node)?;
    words
        .iter()
        .find(|(w, _)| *w == s)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let list: Vec<String> = words.iter().map(|(w, _)| format!("\"{w}\"")).collect();
            SpanError::new(
                node.span.clone(),
                format!(
                    "unknown value \"{s}\"; expected one of: {}",
                    list.join(", ")
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_keep_their_spans_in_arrays_of_tables() {
        let text = "board = \"boron\"\n[[step]]\ndo = \"power.on\"\n";
        let doc = parse_document(text).unwrap();
        let Value::Table(entries) = &doc.value else {
            panic!("not a table")
        };
        assert_eq!(&text[entries[0].0.span.clone()], "board");
        assert_eq!(&text[entries[0].1.span.clone()], "\"boron\"");
        let Value::Array(steps) = &entries[1].1.value else {
            panic!("not an array")
        };
        let Value::Table(step) = &steps[0].value else {
            panic!("not a table")
        };
        assert_eq!(&text[step[0].0.span.clone()], "do");
        assert_eq!(line_col(text, step[0].1.span.start), (3, 6));
    }

    #[test]
    fn a_date_is_refused_at_its_position() {
        let text = "board = \"boron\"\nwhen = 2024-05-13T11:03:42Z\n";
        let err = parse_document(text).unwrap_err();
        assert!(err.message.contains("dates and times"), "{}", err.message);
        assert_eq!(line_col(text, err.span.start).0, 2);
    }

    #[test]
    fn line_col_counts_characters_not_bytes() {
        assert_eq!(line_col("é = 1\nab", 7), (2, 1));
        assert_eq!(line_col("é = 1\nab", 8), (2, 2));
        assert_eq!(line_col("é", 99), (1, 2));
    }
}
