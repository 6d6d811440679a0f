//! Diagnostic payloads and the system-error -> CoAP code map (reference §2.2,
//! `formatDiagnosticPayload`, `coapCodeForSystemError`).

use serde::{Deserialize, Serialize};

use super::CatalogueError;
use crate::coap::Code;

/// Device OS system error codes that matter on the wire (`services/inc/system_error.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemError;

impl SystemError {
    pub const UNKNOWN: i32 = -100;
    pub const BUSY: i32 = -110;
    pub const NOT_SUPPORTED: i32 = -120;
    pub const NOT_ALLOWED: i32 = -130;
    pub const CANCELLED: i32 = -140;
    pub const ABORTED: i32 = -150;
    pub const TIMEOUT: i32 = -160;
    pub const NOT_FOUND: i32 = -170;
    pub const ALREADY_EXISTS: i32 = -180;
    pub const TOO_LARGE: i32 = -190;
    pub const NOT_ENOUGH_DATA: i32 = -191;
    pub const LIMIT_EXCEEDED: i32 = -200;
    pub const INVALID_STATE: i32 = -210;
    pub const FLASH_IO: i32 = -219;
    pub const IO: i32 = -220;
    pub const PROTOCOL: i32 = -240;
    pub const INTERNAL: i32 = -250;
    pub const NO_MEMORY: i32 = -260;
    pub const INVALID_ARGUMENT: i32 = -270;
    pub const BAD_DATA: i32 = -280;
    pub const OUT_OF_RANGE: i32 = -290;
    pub const DEPRECATED: i32 = -300;
    pub const COAP: i32 = -1000;
    pub const OTA_MODULE_NOT_FOUND: i32 = -1300;
    pub const OTA_UNSUPPORTED_MODULE: i32 = -1310;
    pub const OTA_VALIDATION_FAILED: i32 = -1320;
    pub const OTA_INTEGRITY_CHECK_FAILED: i32 = -1330;
    pub const OTA_RESUMED_UPDATE_FAILED: i32 = -1331;
    pub const OTA_DEPENDENCY_CHECK_FAILED: i32 = -1340;
    pub const OTA_INVALID_ADDRESS: i32 = -1350;
    pub const OTA_INVALID_SIZE: i32 = -1351;
    pub const OTA_INVALID_PLATFORM: i32 = -1360;
    pub const OTA_INVALID_FORMAT: i32 = -1370;
    pub const OTA_UPDATES_DISABLED: i32 = -1380;
    pub const PROTECTED: i32 = -1801;
}

/// The CoAP response code the device uses for a system error.
pub fn coap_code_for_system_error(error: i32) -> Code {
    match error {
        -270 | -280 | -290 | -190 | -191 | -1000 => Code::BAD_REQUEST,
        -170 => Code::NOT_FOUND,
        -130 => Code::FORBIDDEN,
        -160 => Code::GATEWAY_TIMEOUT,
        -120 | -300 => Code::NOT_IMPLEMENTED,
        -250 => Code::INTERNAL_SERVER_ERROR,
        // -110, -140, -150, -210, -260, -100, -240, every OTA error and anything else.
        _ => Code::SERVICE_UNAVAILABLE,
    }
}

/// `{"code":<negative system error>,"message":"<text>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Diagnostic {
    pub code: i32,
    pub message: String,
}

impl Diagnostic {
    pub fn new(code: i32, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            message: message.into(),
        }
    }

    pub fn parse(payload: &[u8]) -> Result<Diagnostic, CatalogueError> {
        serde_json::from_slice(payload).map_err(|e| CatalogueError::InvalidField {
            message: "diagnostic payload",
            field: "JSON",
            reason: e.to_string(),
        })
    }

    /// The JSON, with the message shortened (at a character boundary) so that the whole payload
    /// fits in `max_len` bytes, as the device truncates it to fit its message.
    pub fn emit(&self, max_len: usize) -> Vec<u8> {
        let mut message = self.message.clone();
        loop {
            let json = serde_json::to_vec(&Diagnostic {
                code: self.code,
                message: message.clone(),
            })
            .unwrap_or_default();
            if json.len() <= max_len || message.is_empty() {
                return json;
            }
            message.pop();
        }
    }

    /// The CoAP code this error is answered with.
    pub fn coap_code(&self) -> Code {
        coap_code_for_system_error(self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_errors_map_to_the_reference_codes() {
        for (error, code) in [
            (-270, "4.00"),
            (-280, "4.00"),
            (-290, "4.00"),
            (-190, "4.00"),
            (-191, "4.00"),
            (-1000, "4.00"),
            (-110, "5.03"),
            (-140, "5.03"),
            (-150, "5.03"),
            (-210, "5.03"),
            (-260, "5.03"),
            (-100, "5.03"),
            (-170, "4.04"),
            (-130, "4.03"),
            (-160, "5.04"),
            (-120, "5.01"),
            (-300, "5.01"),
            (-250, "5.00"),
            (-240, "5.03"),
            (-1380, "5.03"),
            (-1331, "5.03"),
            (-1801, "5.03"),
        ] {
            assert_eq!(
                coap_code_for_system_error(error).to_string(),
                code,
                "{error}"
            );
        }
    }

    #[test]
    fn diagnostic_payload_is_truncated_to_fit() {
        let d = Diagnostic::new(SystemError::OTA_UPDATES_DISABLED, "Updates are disabled");
        let full = d.emit(1024);
        assert_eq!(
            full,
            br#"{"code":-1380,"message":"Updates are disabled"}"#.to_vec()
        );
        let short = d.emit(33);
        assert_eq!(short, br#"{"code":-1380,"message":"Update"}"#.to_vec());
        assert_eq!(Diagnostic::parse(&short).unwrap().message, "Update");
        assert_eq!(d.coap_code(), Code::SERVICE_UNAVAILABLE);
    }
}
