//! Request bodies as Particle's API takes them (reference `particle-cloud-api.md` 2.0): JSON,
//! url-encoded forms and multipart forms, read into one set of named fields plus file parts, so
//! every handler reads `version`, `groups` or `desired_firmware_version` the same way whatever
//! the client sent: a JSON number or a numeric string, a JSON array, a comma list or repeated
//! `groups[]`, JSON `null` or the string `null`. Every error names the field and the body.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// How the body was encoded (named in errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Empty,
    Json,
    Form,
    Multipart,
}

impl BodyKind {
    fn name(self) -> &'static str {
        match self {
            BodyKind::Empty => "the request",
            BodyKind::Json => "the JSON body",
            BodyKind::Form => "the form body",
            BodyKind::Multipart => "the multipart body",
        }
    }
}

/// One file part of a multipart body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePart {
    /// The part's name (`file`, `file2`, `binary`...).
    pub field: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
}

/// A parsed request body.
#[derive(Debug, Clone)]
pub struct Body {
    pub kind: BodyKind,
    fields: BTreeMap<String, Vec<Value>>,
    pub files: Vec<FilePart>,
}

/// Field names of a form that stand for arrays (`groups[]`).
fn field_name(name: &str) -> String {
    name.strip_suffix("[]").unwrap_or(name).to_string()
}

impl Body {
    pub fn empty() -> Body {
        Body {
            kind: BodyKind::Empty,
            fields: BTreeMap::new(),
            files: Vec::new(),
        }
    }

    /// Parses `bytes` as `content_type` says.
    pub async fn parse(
        content_type: Option<&str>,
        bytes: axum::body::Bytes,
    ) -> Result<Body, String> {
        let mime = content_type
            .and_then(|c| c.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase());
        let mut body = Body::empty();
        match mime.as_deref() {
            _ if bytes.is_empty() && mime.as_deref() != Some("multipart/form-data") => {}
            Some("application/json") => {
                body.kind = BodyKind::Json;
                let value: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("the JSON body does not parse: {e}"))?;
                let Value::Object(map) = value else {
                    return Err("the JSON body is not an object ({...})".to_string());
                };
                for (k, v) in map {
                    body.fields.insert(k, vec![v]);
                }
            }
            Some("application/x-www-form-urlencoded") => {
                body.kind = BodyKind::Form;
                for (k, v) in form_urlencoded::parse(&bytes) {
                    body.fields
                        .entry(field_name(&k))
                        .or_default()
                        .push(Value::String(v.into_owned()));
                }
            }
            Some("multipart/form-data") => {
                body.kind = BodyKind::Multipart;
                let boundary = content_type
                    .and_then(|c| multer::parse_boundary(c).ok())
                    .ok_or("the multipart body has no boundary in its Content-Type")?;
                let stream =
                    futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
                let mut multipart = multer::Multipart::new(stream, boundary);
                let mut n = 0;
                loop {
                    let field = match multipart.next_field().await {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => {
                            return Err(format!(
                                "the multipart body is malformed after part {n}: {e}"
                            ))
                        }
                    };
                    n += 1;
                    let name = field.name().map(field_name).unwrap_or_default();
                    let filename = field.file_name().map(str::to_string);
                    let content_type = field.content_type().map(|m| m.to_string());
                    let data = field.bytes().await.map_err(|e| {
                        format!("the multipart body's part {n} (`{name}`) is cut short: {e}")
                    })?;
                    if filename.is_some() {
                        body.files.push(FilePart {
                            field: name,
                            filename,
                            content_type,
                            bytes: data.to_vec(),
                        });
                    } else {
                        let text = String::from_utf8(data.to_vec()).map_err(|_| {
                            format!(
                                "the multipart body's part {n} (`{name}`) is not text; a file \
                                 part needs a filename"
                            )
                        })?;
                        body.fields
                            .entry(name)
                            .or_default()
                            .push(Value::String(text));
                    }
                }
            }
            Some(other) => {
                return Err(format!(
                    "a body of type {other} is not understood: send application/json, \
                     application/x-www-form-urlencoded or multipart/form-data"
                ))
            }
            None => {
                return Err("the body has no Content-Type: send application/json, \
                     application/x-www-form-urlencoded or multipart/form-data"
                    .to_string())
            }
        }
        Ok(body)
    }

    /// A JSON body as the object it was (`None` for another kind of body).
    pub fn json_object(&self) -> Option<serde_json::Map<String, Value>> {
        (self.kind == BodyKind::Json).then(|| {
            self.fields
                .iter()
                .filter_map(|(k, v)| v.first().map(|v| (k.clone(), v.clone())))
                .collect()
        })
    }

    /// Adds the query string's parameters as fields where the body has none of that name.
    pub fn has(&self, name: &str) -> bool {
        self.fields.contains_key(name)
    }

    /// Field names present, for "nothing to change" errors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.keys().map(String::as_str)
    }

    fn one(&self, name: &str) -> Option<&Value> {
        self.fields.get(name).and_then(|v| v.last())
    }

    fn bad(&self, name: &str, value: &Value, what: &str) -> String {
        format!(
            "field `{name}` of {}: {} is not {what}",
            self.kind.name(),
            short(value)
        )
    }

    /// A text field (a JSON string or number).
    pub fn text(&self, name: &str) -> Result<Option<String>, String> {
        match self.one(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
            Some(v) => Err(self.bad(name, v, "text")),
        }
    }

    /// A boolean: JSON `true`/`false`, or the text `true`, `false`, `1`, `0`.
    pub fn flag(&self, name: &str) -> Result<Option<bool>, String> {
        match self.one(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v @ Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(Some(true)),
                "false" | "0" => Ok(Some(false)),
                _ => Err(self.bad(name, v, "true or false")),
            },
            Some(v @ Value::Number(n)) => match n.as_u64() {
                Some(1) => Ok(Some(true)),
                Some(0) => Ok(Some(false)),
                _ => Err(self.bad(name, v, "true or false")),
            },
            Some(v) => Err(self.bad(name, v, "true or false")),
        }
    }

    /// A product firmware version (1..=65535) as a JSON number or numeric text.
    pub fn version(&self, name: &str) -> Result<Option<u16>, String> {
        match self.one(name) {
            None => Ok(None),
            Some(v) => parse_version(v)
                .map(Some)
                .ok_or_else(|| self.bad(name, v, "a firmware version (a number 1 to 65535)")),
        }
    }

    /// A lock: a version, or JSON `null`, the text `null` or an empty value to unlock.
    pub fn lock(&self, name: &str) -> Result<Option<Option<u16>>, String> {
        match self.one(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(Value::String(s)) if s.trim().is_empty() || s.trim() == "null" => Ok(Some(None)),
            Some(v) => parse_version(v).map(|v| Some(Some(v))).ok_or_else(|| {
                self.bad(name, v, "a firmware version (a number 1 to 65535) or null")
            }),
        }
    }

    /// A list of group names: a JSON array of strings, a comma-separated text, or the form
    /// field repeated (`groups[]=a&groups[]=b`). An empty text is the empty list.
    pub fn groups(&self, name: &str) -> Result<Option<BTreeSet<String>>, String> {
        let Some(values) = self.fields.get(name) else {
            return Ok(None);
        };
        let mut out = BTreeSet::new();
        let mut add_text = |s: &str| {
            for g in s.split(',') {
                let g = g.trim();
                if !g.is_empty() {
                    out.insert(g.to_string());
                }
            }
        };
        for v in values {
            match v {
                Value::Null => {}
                Value::String(s) => add_text(s),
                Value::Array(items) => {
                    for item in items {
                        match item {
                            Value::String(s) => add_text(s),
                            other => return Err(self.bad(name, other, "a group name")),
                        }
                    }
                }
                other => return Err(self.bad(name, other, "a list of group names")),
            }
        }
        Ok(Some(out))
    }
}

fn parse_version(v: &Value) -> Option<u16> {
    let n = match v {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => s.trim().parse::<u64>().ok()?,
        _ => return None,
    };
    u16::try_from(n).ok().filter(|n| *n > 0)
}

/// A value as shown in an error: JSON, cut to 60 characters.
fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 60 {
        format!("{}...", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

/// The query string's parameters (later ones win).
pub fn query_params(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (field_name(&k), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn json(text: &str) -> Body {
        run(Body::parse(
            Some("application/json"),
            text.to_string().into(),
        ))
        .unwrap()
    }

    fn form(text: &str) -> Body {
        run(Body::parse(
            Some("application/x-www-form-urlencoded"),
            text.to_string().into(),
        ))
        .unwrap()
    }

    fn set(names: &[&str]) -> Option<BTreeSet<String>> {
        Some(names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn groups_come_as_arrays_comma_lists_or_repeated_fields() {
        assert_eq!(
            json(r#"{"groups":["a","b"]}"#).groups("groups"),
            Ok(set(&["a", "b"]))
        );
        assert_eq!(
            json(r#"{"groups":"a, b"}"#).groups("groups"),
            Ok(set(&["a", "b"]))
        );
        assert_eq!(
            form("groups[]=a&groups[]=b").groups("groups"),
            Ok(set(&["a", "b"]))
        );
        assert_eq!(form("groups=a,b").groups("groups"), Ok(set(&["a", "b"])));
        assert_eq!(form("groups=").groups("groups"), Ok(set(&[])));
        assert_eq!(form("x=1").groups("groups"), Ok(None));
        let e = json(r#"{"groups":[1]}"#).groups("groups").unwrap_err();
        assert!(e.contains("`groups` of the JSON body"), "{e}");
    }

    #[test]
    fn unlock_is_null_in_json_or_text() {
        let f = "desired_firmware_version";
        assert_eq!(
            json(r#"{"desired_firmware_version":null}"#).lock(f),
            Ok(Some(None))
        );
        assert_eq!(
            form("desired_firmware_version=null").lock(f),
            Ok(Some(None))
        );
        assert_eq!(
            json(r#"{"desired_firmware_version":"4"}"#).lock(f),
            Ok(Some(Some(4)))
        );
        assert_eq!(
            json(r#"{"desired_firmware_version":4}"#).lock(f),
            Ok(Some(Some(4)))
        );
        assert!(json(r#"{"desired_firmware_version":70000}"#)
            .lock(f)
            .is_err());
        assert_eq!(json("{}").lock(f), Ok(None));
    }

    #[test]
    fn flags_and_versions_accept_text() {
        assert_eq!(form("intelligent=true").flag("intelligent"), Ok(Some(true)));
        assert_eq!(json(r#"{"flash":false}"#).flag("flash"), Ok(Some(false)));
        assert!(form("flash=maybe").flag("flash").is_err());
        assert_eq!(form("version=12").version("version"), Ok(Some(12)));
        let e = form("version=abc").version("version").unwrap_err();
        assert!(
            e.contains("`version` of the form body") && e.contains("\"abc\""),
            "{e}"
        );
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        let e = run(Body::parse(Some("application/json"), "{\"a\":".into())).unwrap_err();
        assert!(e.contains("JSON body does not parse"), "{e}");
        assert!(run(Body::parse(Some("application/json"), "[1]".into())).is_err());
        let e = run(Body::parse(
            Some("multipart/form-data; boundary=XX"),
            "--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nabc"
                .into(),
        ))
        .unwrap_err();
        assert!(e.contains("multipart"), "{e}");
        assert!(run(Body::parse(Some("multipart/form-data"), "x".into())).is_err());
        assert!(run(Body::parse(Some("text/plain"), "x".into())).is_err());
    }

    #[test]
    fn every_cut_of_a_body_parses_or_is_an_error() {
        let multipart = "--XX\r\nContent-Disposition: form-data; name=\"version\"\r\n\r\n4\r\n\
                         --XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n\
                         \x01\x02\r\n--XX--\r\n";
        let json = r#"{"version":4,"groups":["a","b"],"desired_firmware_version":null}"#;
        let form = "version=4&groups%5B%5D=a&groups[]=b&x=%ZZ";
        for (ct, text) in [
            ("multipart/form-data; boundary=XX", multipart),
            ("application/json", json),
            ("application/x-www-form-urlencoded", form),
        ] {
            for cut in 0..=text.len() {
                let bytes = text.as_bytes()[..cut].to_vec();
                // Ok or a located error; never a panic.
                if let Ok(b) = run(Body::parse(Some(ct), bytes.into())) {
                    let _ = (b.version("version"), b.groups("groups"), b.lock("x"));
                }
            }
        }
    }

    #[test]
    fn multipart_gives_text_fields_and_files() {
        let text = "--XX\r\nContent-Disposition: form-data; name=\"version\"\r\n\r\n4\r\n\
                    --XX\r\nContent-Disposition: form-data; name=\"binary\"; filename=\"a.bin\"\r\n\
                    Content-Type: application/octet-stream\r\n\r\n\x01\x02\r\n--XX--\r\n";
        let b = run(Body::parse(
            Some("multipart/form-data; boundary=XX"),
            text.into(),
        ))
        .unwrap();
        assert_eq!(b.version("version"), Ok(Some(4)));
        assert_eq!(b.files.len(), 1);
        assert_eq!(b.files[0].field, "binary");
        assert_eq!(b.files[0].bytes, vec![1, 2]);
    }
}
