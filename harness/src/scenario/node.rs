//! A TOML document as a tree whose every key and value keeps its byte span, so that the
//! scenario parser can say "file:line:column" for any problem, not only for TOML syntax errors.
//!
//! The tree is read from toml_edit's parsed document (`ImDocument`), whose keys, values and
//! tables know their spans; [`Fields`] then walks a table the way a schema does: take the fields
//! it knows, report the first missing or unknown one with the expected form.

use std::ops::Range;

use toml_edit::{ImDocument, Item, TableLike};

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

/// Parses `text` into a spanned tree. Syntax errors keep toml_edit's message and span.
pub fn parse_document(text: &str) -> Result<Node, SpanError> {
    let doc = ImDocument::parse(text).map_err(|e| {
        SpanError::new(e.span().unwrap_or(0..0), e.message().trim_end().to_string())
    })?;
    item_node(doc.as_item(), 0..0)
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

const DATETIME_MESSAGE: &str =
    "dates and times are not part of the scenario format; write a quoted string";

/// The node of one item. `fallback` is used when toml_edit knows no span: tables made
/// implicitly by a dotted key or header (`a.b = 1`, `[cloud.product]` makes `a` and `cloud`)
/// take the span of their key.
fn item_node(item: &Item, fallback: Range<usize>) -> Result<Node, SpanError> {
    let span = item.span().unwrap_or(fallback);
    let value = match item {
        Item::Value(v) => return value_node(v, span),
        Item::Table(t) => table_value(t)?,
        Item::ArrayOfTables(tables) => Value::Array(
            tables
                .iter()
                .map(|t| {
                    Ok(Node {
                        span: t.span().unwrap_or(0..0),
                        value: table_value(t)?,
                    })
                })
                .collect::<Result<_, SpanError>>()?,
        ),
        // Only a document built by hand holds an empty item; a parsed one never does.
        Item::None => return Err(SpanError::new(span, "a key without a value")),
    };
    Ok(Node { span, value })
}

/// The node of one value; `span` is its own or its fallback.
fn value_node(value: &toml_edit::Value, span: Range<usize>) -> Result<Node, SpanError> {
    use toml_edit::Value as V;
    let value = match value {
        V::String(s) => Value::String(s.value().clone()),
        V::Integer(i) => Value::Integer(*i.value()),
        V::Float(f) => Value::Float(*f.value()),
        V::Boolean(b) => Value::Boolean(*b.value()),
        V::Datetime(_) => return Err(SpanError::new(span, DATETIME_MESSAGE)),
        V::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| value_node(item, item.span().unwrap_or(0..0)))
                .collect::<Result<_, SpanError>>()?,
        ),
        V::InlineTable(t) => table_value(t)?,
    };
    Ok(Node { span, value })
}

/// The entries of a table or inline table, in document order, each key with its span.
fn table_value(table: &dyn TableLike) -> Result<Value, SpanError> {
    let mut out = Vec::new();
    for (name, _) in table.iter() {
        let Some((key, item)) = table.get_key_value(name) else {
            continue;
        };
        let key_span = key.span().unwrap_or(0..0);
        let node = item_node(item, key_span.clone())?;
        out.push((
            Key {
                span: key_span,
                name: name.to_string(),
            },
            node,
        ));
    }
    Ok(Value::Table(out))
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
    /// Every key nobody asked for, as errors (see [`Fields::finish`]).
    pub fn finish_all(&self) -> Vec<SpanError> {
        self.entries
            .iter()
            .zip(&self.used)
            .filter(|(_, used)| !**used)
            .map(|((key, _), _)| {
                SpanError::new(
                    key.span.clone(),
                    format!(
                        "{}: unknown field `{}`; expected one of: {}",
                        self.what,
                        key.name,
                        self.known.join(", ")
                    ),
                )
            })
            .collect()
    }

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

    /// The entries of a table node.
    fn entries(node: &Node) -> &[(Key, Node)] {
        match &node.value {
            Value::Table(entries) => entries,
            other => panic!("expected a table, found {}", other.kind()),
        }
    }

    fn items(node: &Node) -> &[Node] {
        match &node.value {
            Value::Array(items) => items,
            other => panic!("expected an array, found {}", other.kind()),
        }
    }

    /// The source text of a span.
    fn src(text: &str, span: &Range<usize>) -> String {
        text[span.clone()].to_string()
    }

    #[test]
    fn keys_and_values_keep_their_spans_in_arrays_of_tables() {
        let text =
            "board = \"boron\"\n[[step]]\ndo = \"power.on\"\n\n[[step]]\n  do = \"power.cut\"\n";
        let doc = parse_document(text).unwrap();
        let top = entries(&doc);
        assert_eq!(src(text, &top[0].0.span), "board");
        assert_eq!(src(text, &top[0].1.span), "\"boron\"");
        // The key of the array of tables is the name in its first header.
        let (step_key, steps) = &top[1];
        assert_eq!(step_key.name, "step");
        assert_eq!(line_col(text, step_key.span.start), (2, 3));
        assert_eq!(src(text, &step_key.span), "step");
        // Each table starts at its own header.
        let steps = items(steps);
        assert_eq!(steps.len(), 2);
        assert_eq!(line_col(text, steps[0].span.start), (2, 1));
        assert_eq!(line_col(text, steps[1].span.start), (5, 1));
        let first = entries(&steps[0]);
        assert_eq!(src(text, &first[0].0.span), "do");
        assert_eq!(line_col(text, first[0].1.span.start), (3, 6));
        let second = entries(&steps[1]);
        assert_eq!(line_col(text, second[0].0.span.start), (6, 3));
        assert_eq!(src(text, &second[0].1.span), "\"power.cut\"");
    }

    #[test]
    fn values_inside_an_inline_table_keep_their_spans() {
        let text = "running = { app = 4, os = \"6.2.0\" }\n";
        let doc = parse_document(text).unwrap();
        let (key, table) = &entries(&doc)[0];
        assert_eq!(src(text, &key.span), "running");
        assert_eq!(src(text, &table.span), "{ app = 4, os = \"6.2.0\" }");
        let inner = entries(table);
        assert_eq!(inner[0].0.name, "app");
        assert_eq!(src(text, &inner[0].1.span), "4");
        assert_eq!(inner[1].0.name, "os");
        assert_eq!(line_col(text, inner[1].0.span.start), (1, 22));
        assert_eq!(src(text, &inner[1].1.span), "\"6.2.0\"");
        assert_eq!(inner[1].1.value, Value::String("6.2.0".into()));
    }

    #[test]
    fn each_key_of_a_dotted_key_keeps_its_span() {
        let text = "x = 0\na.b = 1\na.c = \"two\"\n[cloud.product]\nid = 3\n";
        let doc = parse_document(text).unwrap();
        let top = entries(&doc);
        let names: Vec<&str> = top.iter().map(|(k, _)| k.name.as_str()).collect();
        assert_eq!(names, ["x", "a", "cloud"]);
        // `a` is a table made by the dotted keys: it has no text of its own, so it is placed at
        // its first key.
        let (a, a_table) = &top[1];
        assert_eq!(line_col(text, a.span.start), (2, 1));
        assert_eq!(src(text, &a.span), "a");
        assert_eq!(a_table.span, a.span);
        let inner = entries(a_table);
        assert_eq!(inner[0].0.name, "b");
        assert_eq!(line_col(text, inner[0].0.span.start), (2, 3));
        assert_eq!(src(text, &inner[0].0.span), "b");
        assert_eq!(line_col(text, inner[0].1.span.start), (2, 7));
        assert_eq!(line_col(text, inner[1].0.span.start), (3, 3));
        assert_eq!(src(text, &inner[1].1.span), "\"two\"");
        // The same for a dotted table header: `cloud` is at its name, `product` at its own.
        let (cloud, cloud_table) = &top[2];
        assert_eq!(line_col(text, cloud.span.start), (4, 2));
        assert_eq!(cloud_table.span, cloud.span);
        let (product, _) = &entries(cloud_table)[0];
        assert_eq!(line_col(text, product.span.start), (4, 8));
        assert_eq!(src(text, &product.span), "product");
    }

    #[test]
    fn array_elements_keep_their_spans() {
        let text = "list = [\n  1,\n  \"two\", { k = 3 },\n  [4.5],\n]\n";
        let doc = parse_document(text).unwrap();
        let (_, list) = &entries(&doc)[0];
        assert_eq!(line_col(text, list.span.start), (1, 8));
        let list = items(list);
        assert_eq!(list.len(), 4);
        assert_eq!(line_col(text, list[0].span.start), (2, 3));
        assert_eq!(src(text, &list[0].span), "1");
        assert_eq!(line_col(text, list[1].span.start), (3, 3));
        assert_eq!(src(text, &list[1].span), "\"two\"");
        assert_eq!(src(text, &list[2].span), "{ k = 3 }");
        let (k, three) = &entries(&list[2])[0];
        assert_eq!(line_col(text, k.span.start), (3, 12));
        assert_eq!(src(text, &three.span), "3");
        assert_eq!(line_col(text, list[3].span.start), (4, 3));
        assert_eq!(src(text, &items(&list[3])[0].span), "4.5");
    }

    #[test]
    fn keys_are_in_document_order_with_tables_at_their_headers() {
        let text = "z = 1\n[b.c]\nq = 1\n[a]\nr = 2\n[b]\ns = 3\n";
        let doc = parse_document(text).unwrap();
        let names: Vec<&str> = entries(&doc).iter().map(|(k, _)| k.name.as_str()).collect();
        // A table named first by `[b.c]` and defined later by its own `[b]` header takes the
        // place of that header.
        assert_eq!(names, ["z", "a", "b"]);
        let (_, b) = &entries(&doc)[2];
        let names: Vec<&str> = entries(b).iter().map(|(k, _)| k.name.as_str()).collect();
        assert_eq!(names, ["c", "s"]);
        // `[b]` comes after `[b.c]`: the table is at its own header, not at the implicit name.
        assert_eq!(line_col(text, b.span.start), (6, 1));
    }

    #[test]
    fn a_syntax_error_keeps_its_message_and_position() {
        let text = "board = \"boron\"\n[[step]\ndo = \"power.on\"\n";
        let err = parse_document(text).unwrap_err();
        assert_eq!(line_col(text, err.span.start), (2, 7));
        assert_eq!(err.message, "invalid table header\nexpected `.`, `]]`");

        let text = "list = [1, 2\nx = 3\n";
        let err = parse_document(text).unwrap_err();
        assert!(err.message.contains("invalid array"), "{}", err.message);
        assert_eq!(line_col(text, err.span.start).0, 2);

        let text = "a = 1\n[t]\nb = 2\nb = 3\n";
        let err = parse_document(text).unwrap_err();
        assert!(err.message.contains("duplicate key `b`"), "{}", err.message);
        assert_eq!(line_col(text, err.span.start), (4, 1));
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
