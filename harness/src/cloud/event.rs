//! What the cloud reports ([`CloudEvent`]): the event stream an operator subscribes to (every
//! event devices publish plus the cloud's own, reference `particle-cloud-api.md` sections 3 and
//! 4.8), session changes, typed OTA progress, and input the cloud could not use.
//!
//! [`StreamEvent::to_sse`] writes one event the way the Server-Sent Events stream carries it
//! (`event: <name>` / `data: <compact JSON>` / empty line, section 3.2).

use std::net::SocketAddr;
use std::time::Duration;

use protocol::message::FinishStats;
use serde::Serialize;

use super::job::JobId;
use super::DeviceId;

/// A 12-byte device id as 24 lowercase hex characters (the `coreid` of the stream).
pub fn device_id_hex(id: &DeviceId) -> String {
    id.to_string()
}

/// Everything the cloud reports, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudEvent {
    /// One event of the stream (device-published or the cloud's own).
    Stream(StreamEvent),
    Session(SessionChange),
    Ota(OtaEvent),
    /// Input the cloud could not use (counted in [`super::CloudStats`]): a malformed CoAP or
    /// Particle message, an UpdateAck that makes no sense, a refused identity...
    Dropped {
        device_id: Option<DeviceId>,
        reason: String,
    },
}

/// Who published a stream event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Publisher {
    /// The device published it.
    Device,
    /// The cloud published it about the device (`spark/status`, `spark/flash/status`, ...).
    Cloud,
}

/// One event on the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEvent {
    /// When the cloud received (or made) it, in the caller's time.
    pub at: Duration,
    pub device_id: DeviceId,
    pub publisher: Publisher,
    pub name: String,
    /// The data as text (a binary payload is shown with U+FFFD for invalid UTF-8).
    pub data: String,
    pub ttl: u32,
    /// Published with path `e` (public) rather than `E`.
    pub public: bool,
    /// Product id and firmware version from the device's last Hello (0xFFFF = none).
    pub product_id: u16,
    pub product_version: u16,
}

#[derive(Serialize)]
struct SseData<'a> {
    data: &'a str,
    ttl: u32,
    published_at: String,
    coreid: String,
    userid: &'a str,
    version: u16,
    public: bool,
    #[serde(rename = "productID")]
    product_id: u16,
}

impl StreamEvent {
    /// The `data:` JSON of the stream (product-stream key set, section 3.2); `published_at` is
    /// `at` plus `unix_time_at_epoch`, ISO-8601 UTC with milliseconds. A product version of
    /// 0xFFFF (no `PRODUCT_VERSION`) shows as 0, as the stream shows devices without one.
    pub fn data_json(&self, unix_time_at_epoch: u64) -> String {
        let unix_ms = unix_time_at_epoch
            .saturating_mul(1000)
            .saturating_add(self.at.as_millis() as u64);
        let sse = SseData {
            data: &self.data,
            ttl: self.ttl,
            published_at: iso8601_millis(unix_ms),
            coreid: device_id_hex(&self.device_id),
            userid: "",
            version: if self.product_version == 0xFFFF {
                0
            } else {
                self.product_version
            },
            public: self.public,
            product_id: if self.product_id == 0xFFFF {
                0
            } else {
                self.product_id
            },
        };
        serde_json::to_string(&sse).unwrap_or_default()
    }

    /// The event as the SSE stream carries it: `event: NAME\ndata: JSON\n\n`.
    pub fn to_sse(&self, unix_time_at_epoch: u64) -> String {
        format!(
            "event: {}\ndata: {}\n\n",
            self.name,
            self.data_json(unix_time_at_epoch)
        )
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the Unix epoch.
pub fn iso8601_millis(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

/// Why a device went offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The device said Goodbye (reference 1.12); the values are its varints.
    Goodbye {
        cloud_reason: Option<u32>,
        reset_reason: Option<u32>,
    },
    /// Nothing heard from the device for the idle timeout.
    Silent,
    /// A CON the cloud sent was never acknowledged.
    MessageTimeout,
    /// The device made a new DTLS handshake; the old session is forgotten.
    Replaced,
    /// The device resumed its session again (type 253) while the cloud still had it online.
    ResumedAgain,
    /// The DTLS association ended (close_notify, fatal alert, error).
    Closed(String),
    /// The cloud refused the session (identity mismatch).
    Refused(String),
}

/// A change of a device's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// A full DTLS handshake completed with the device's registered key.
    Connected {
        at: Duration,
        device_id: DeviceId,
        address: SocketAddr,
    },
    /// The device resumed its session without a handshake (reference 1.4: type 253 records,
    /// or records on a session the cloud had taken offline).
    Resumed {
        at: Duration,
        device_id: DeviceId,
        address: SocketAddr,
    },
    /// The session's records now come from another address (CID, reference 1.4).
    Moved {
        at: Duration,
        device_id: DeviceId,
        from: SocketAddr,
        to: SocketAddr,
    },
    Disconnected {
        at: Duration,
        device_id: DeviceId,
        reason: DisconnectReason,
    },
    /// A handshake (or the first message of one) the cloud refused; no session of any device
    /// changed because of it.
    Refused {
        at: Duration,
        address: SocketAddr,
        /// The device id its Hello claimed, when it got that far.
        claimed_device_id: Option<DeviceId>,
        /// The registered device whose key it used, if any.
        key_of: Option<DeviceId>,
        /// Fingerprint of a key offered that is not registered (`connection::key_fingerprint`).
        key_fingerprint: Option<String>,
        reason: String,
    },
}

/// Typed OTA progress of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtaEvent {
    pub at: Duration,
    pub job: JobId,
    pub device_id: DeviceId,
    pub kind: OtaEventKind,
}

/// What happened to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtaEventKind {
    /// The job waits for the device (offline, busy, or after a disconnect).
    Queued,
    /// UpdateStart sent (attempt 1, 2, ... of this job).
    Started {
        attempt: u32,
        file_size: u32,
        chunk_size: u32,
    },
    /// The device accepted: its window and where it resumes.
    Accepted {
        window: u32,
        resume_offset: u32,
        chunks: u32,
    },
    /// The device acknowledged more chunks.
    Progress {
        sent: u32,
        acked: u32,
        chunks: u32,
    },
    /// Chunks sent again (holes reported by an UpdateAck, or silence).
    Retransmitted {
        indices: Vec<u32>,
    },
    /// All chunks acknowledged; UpdateFinish sent.
    Finishing,
    /// The device's 2.04 was acknowledged: the device commits.
    Committed {
        stats: Option<FinishStats>,
    },
    /// The device's describe after its reset shows the file's firmware running (or it ran it
    /// already).
    Succeeded,
    /// The device went away mid-transfer (or refused for a reason another attempt may cure);
    /// the job waits for its next chance.
    Requeued {
        resume_hint: u32,
    },
    /// Held: the device has updates disabled and they are not forced.
    Held,
    /// The device came back without the committed update: another attempt follows.
    Retrying {
        reason: String,
    },
    /// The cloud created this job itself (product firmware of the device's target, or a
    /// Device OS module for healing).
    Created {
        what: String,
    },
    Failed {
        code: Option<i32>,
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_matches_known_instants() {
        assert_eq!(iso8601_millis(0), "1970-01-01T00:00:00.000Z");
        // 2024-05-13T11:03:42.413Z, from the reference capture.
        assert_eq!(
            iso8601_millis(1_715_598_222_413),
            "2024-05-13T11:03:42.413Z"
        );
        assert_eq!(iso8601_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn sse_event_has_the_product_stream_keys_in_order() {
        let event = StreamEvent {
            at: Duration::from_millis(413),
            device_id: [
                0xe0, 0x0f, 0xce, 0x68, 0xec, 0xe1, 0xd3, 0xd2, 0x1a, 0x73, 0xdc, 0xc9,
            ]
            .into(),
            publisher: Publisher::Cloud,
            name: "spark/flash/status".into(),
            data: "started ".into(),
            ttl: 60,
            public: false,
            product_id: 30301,
            product_version: 1,
        };
        assert_eq!(
            event.to_sse(1_715_598_222),
            "event: spark/flash/status\ndata: {\"data\":\"started \",\"ttl\":60,\
             \"published_at\":\"2024-05-13T11:03:42.413Z\",\"coreid\":\"e00fce68ece1d3d21a73dcc9\",\
             \"userid\":\"\",\"version\":1,\"public\":false,\"productID\":30301}\n\n"
        );
    }
}
