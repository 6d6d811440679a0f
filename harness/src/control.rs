//! The local control protocol of `hil cloud` (what `hil flash` speaks): JSON lines over TCP.
//!
//! A client connects, sends one line:
//!
//! ```text
//! {"flash": {"device": "<24 hex digits>", "file_hex": "<the file, hex>"}}
//! {"flash": {"device": "<24 hex digits>", "path": "/absolute/path/on/the/cloud/host"}}
//! ```
//!
//! and the cloud answers with JSON lines, one per change of the job's status, until the job
//! finished, then closes the connection:
//!
//! ```text
//! {"job": 1, "status": "queued"}
//! {"job": 1, "status": "transferring", "acked": 12, "chunks": 48}
//! {"job": 1, "status": "succeeded"}
//! {"job": 1, "status": "failed", "code": -1360, "message": "..."}
//! ```
//!
//! A request that cannot be served (bad JSON, unknown device, unreadable file) gets one line
//! `{"error": "<sentence>", "kind": "<kind>"}` and the connection is closed; `kind` is
//! `unknown_device` when the device has no key registered, `bad_request` otherwise.
//!
//! Device keys while the cloud runs (each answered by one line, `{"ok": "<sentence>"}` or an
//! error line):
//!
//! ```text
//! {"add_key": {"device": "<24 hex digits>", "public_key": "<PEM, or DER as hex>"}}
//! {"remove_key": {"device": "<24 hex digits>"}}
//! ```
//!
//! An added key is accepted in the next handshake; a removed key closes the device's session
//! and refuses its handshakes from then on.

use serde_json::{json, Value};

use crate::cloud::{JobId, JobInfo, JobStatus};

/// Longest request line accepted (a hex-encoded file of up to 32 MiB).
pub const MAX_REQUEST: u64 = 64 * 1024 * 1024 + 4096;

/// A flash request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashRequest {
    pub device: [u8; 12],
    pub file: FileSource,
}

/// Where the file of a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    Bytes(Vec<u8>),
    Path(String),
}

impl FlashRequest {
    pub fn new(device: [u8; 12], file: &[u8]) -> Self {
        FlashRequest {
            device,
            file: FileSource::Bytes(file.to_vec()),
        }
    }

    /// The request line, newline-terminated.
    pub fn to_line(&self) -> String {
        let mut req = serde_json::Map::new();
        req.insert("device".into(), json!(hex::encode(self.device)));
        match &self.file {
            FileSource::Bytes(b) => req.insert("file_hex".into(), json!(hex::encode(b))),
            FileSource::Path(p) => req.insert("path".into(), json!(p)),
        };
        format!("{}\n", json!({ "flash": req }))
    }

    /// Parses a request line; the error is a sentence for the client.
    pub fn parse(line: &str) -> Result<FlashRequest, String> {
        let value: Value =
            serde_json::from_str(line.trim()).map_err(|e| format!("not JSON: {e}"))?;
        let flash = value.get("flash").ok_or("expected {\"flash\": {...}}")?;
        let device = flash
            .get("device")
            .and_then(Value::as_str)
            .ok_or("flash.device (24 hex digits) is missing")?;
        let bytes = hex::decode(device).map_err(|e| format!("flash.device: {e}"))?;
        let device: [u8; 12] = bytes
            .try_into()
            .map_err(|_| "flash.device must be 24 hex digits (12 bytes)".to_string())?;
        let file = if let Some(h) = flash.get("file_hex").and_then(Value::as_str) {
            FileSource::Bytes(hex::decode(h).map_err(|e| format!("flash.file_hex: {e}"))?)
        } else if let Some(p) = flash.get("path").and_then(Value::as_str) {
            FileSource::Path(p.to_string())
        } else {
            return Err("flash.file_hex or flash.path is needed".into());
        };
        Ok(FlashRequest { device, file })
    }
}

/// Any request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Flash(FlashRequest),
    AddKey {
        device: [u8; 12],
        key: p256::ecdsa::VerifyingKey,
    },
    RemoveKey {
        device: [u8; 12],
    },
}

fn device_field(v: &Value, what: &str) -> Result<[u8; 12], String> {
    let device = v
        .get("device")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{what}.device (24 hex digits) is missing"))?;
    let bytes = hex::decode(device).map_err(|e| format!("{what}.device: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| format!("{what}.device must be 24 hex digits (12 bytes)"))
}

impl Request {
    /// Parses a request line; the error is a sentence for the client.
    pub fn parse(line: &str) -> Result<Request, String> {
        let value: Value =
            serde_json::from_str(line.trim()).map_err(|e| format!("not JSON: {e}"))?;
        if let Some(add) = value.get("add_key") {
            let device = device_field(add, "add_key")?;
            let text = add
                .get("public_key")
                .and_then(Value::as_str)
                .ok_or("add_key.public_key (PEM, or DER as hex) is missing")?;
            let bytes = if text.contains("-----BEGIN") {
                text.as_bytes().to_vec()
            } else {
                hex::decode(text.trim()).map_err(|e| format!("add_key.public_key: {e}"))?
            };
            let key = crate::keys::verifying_key_from_bytes(&bytes)
                .map_err(|e| format!("add_key.public_key: {e}"))?;
            return Ok(Request::AddKey { device, key });
        }
        if let Some(remove) = value.get("remove_key") {
            let device = device_field(remove, "remove_key")?;
            return Ok(Request::RemoveKey { device });
        }
        if value.get("flash").is_some() {
            return FlashRequest::parse(line).map(Request::Flash);
        }
        Err("expected {\"flash\": ...}, {\"add_key\": ...} or {\"remove_key\": ...}".into())
    }
}

/// The error line for a request that cannot be served.
pub fn error_line(message: &str) -> String {
    format!("{}\n", json!({ "error": message, "kind": "bad_request" }))
}

/// The error line for a request naming a device with no key registered.
pub fn unknown_device_line(message: &str) -> String {
    format!(
        "{}\n",
        json!({ "error": message, "kind": "unknown_device" })
    )
}

/// The answer to a request that was done.
pub fn ok_line(message: &str) -> String {
    format!("{}\n", json!({ "ok": message }))
}

/// The status line of a job.
pub fn status_line(job: JobId, status: &JobStatus) -> String {
    let v = match status {
        JobStatus::Queued => json!({"job": job.0, "status": "queued"}),
        JobStatus::Held => json!({"job": job.0, "status": "held",
                    "message": "updates are disabled on the device; it was told an update is pending"}),
        JobStatus::Starting => json!({"job": job.0, "status": "starting"}),
        JobStatus::Transferring {
            resume_offset,
            chunks,
            acked,
            retransmissions,
            ..
        } => json!({"job": job.0, "status": "transferring", "resume_offset": resume_offset,
                    "acked": acked, "chunks": chunks, "retransmissions": retransmissions}),
        JobStatus::Finishing => json!({"job": job.0, "status": "finishing"}),
        JobStatus::Committed { .. } => json!({"job": job.0, "status": "committed"}),
        JobStatus::Succeeded => json!({"job": job.0, "status": "succeeded"}),
        JobStatus::Failed { code, message } => {
            json!({"job": job.0, "status": "failed", "code": code, "message": message})
        }
    };
    format!("{v}\n")
}

/// The status line of a job with what an operator needs beyond its status: which attempt it
/// is on (`attempt`, once an UpdateStart went out) and why the last attempt did not end it
/// (`reason`: interrupted, back without the update...), until it finished.
pub fn info_line(job: JobId, info: &JobInfo) -> String {
    let line = status_line(job, &info.status);
    let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(&line) else {
        return line;
    };
    if info.attempts > 0 {
        map.insert("attempt".into(), json!(info.attempts));
    }
    if let (Some(reason), false) = (&info.last_reason, info.status.is_finished()) {
        map.insert("reason".into(), json!(reason));
    }
    format!("{}\n", Value::Object(map))
}

/// A reply line as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Error(String),
    /// The device has no key registered with the cloud.
    UnknownDevice(String),
    Ok(String),
    /// `line`: a short human rendering (status and its details).
    Status {
        job: u64,
        status: String,
        line: String,
    },
}

impl Reply {
    /// `None` for a line that is not a reply.
    pub fn parse(line: &str) -> Option<Reply> {
        let v: Value = serde_json::from_str(line.trim()).ok()?;
        if let Some(e) = v.get("error") {
            let text = e.as_str().map_or_else(|| e.to_string(), str::to_string);
            return Some(match v.get("kind").and_then(Value::as_str) {
                Some("unknown_device") => Reply::UnknownDevice(text),
                _ => Reply::Error(text),
            });
        }
        if let Some(ok) = v.get("ok") {
            return Some(Reply::Ok(
                ok.as_str().map_or_else(|| ok.to_string(), str::to_string),
            ));
        }
        let job = v.get("job")?.as_u64()?;
        let status = v.get("status")?.as_str()?.to_string();
        let mut text = status.clone();
        match status.as_str() {
            "transferring" => {
                let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
                text = format!("transferring {}/{} chunks", n("acked"), n("chunks"));
            }
            "failed" => {
                let message = v.get("message").and_then(Value::as_str).unwrap_or("");
                text = match v.get("code").and_then(Value::as_i64) {
                    Some(code) => format!("failed: the device reported {code}: {message}"),
                    None => format!("failed: {message}"),
                };
            }
            _ => {}
        }
        if let Some(reason) = v.get("reason").and_then(Value::as_str) {
            let attempt = v.get("attempt").and_then(Value::as_u64).unwrap_or(0);
            text = format!("{text} (after attempt {attempt}: {reason})");
        }
        Some(Reply::Status {
            job,
            status,
            line: text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_sentences() {
        let r = FlashRequest::new([7; 12], b"abc");
        assert_eq!(FlashRequest::parse(&r.to_line()), Ok(r));
        for bad in [
            "",
            "{",
            "[]",
            "{\"flash\":1}",
            "{\"flash\":{\"device\":\"zz\"}}",
        ] {
            assert!(FlashRequest::parse(bad).is_err(), "{bad}");
        }
        let failed = status_line(
            JobId(3),
            &JobStatus::Failed {
                code: Some(-1360),
                message: "no".into(),
            },
        );
        assert!(matches!(
            Reply::parse(&failed),
            Some(Reply::Status { job: 3, .. })
        ));
    }

    #[test]
    fn a_retried_job_says_which_attempt_and_why() {
        let info = JobInfo {
            kind: crate::cloud::JobKind::Flash,
            device_id: crate::cloud::DeviceId([1; 12]),
            status: JobStatus::Queued,
            attempts: 2,
            last_reason: Some("the device came back without it".into()),
        };
        let line = info_line(JobId(4), &info);
        let Some(Reply::Status { status, line, .. }) = Reply::parse(&line) else {
            panic!("{line}")
        };
        assert_eq!(status, "queued");
        assert_eq!(
            line,
            "queued (after attempt 2: the device came back without it)"
        );
        let done = JobInfo {
            status: JobStatus::Succeeded,
            ..info
        };
        assert!(!info_line(JobId(4), &done).contains("reason"));
    }
}
