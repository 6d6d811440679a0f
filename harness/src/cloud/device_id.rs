//! [`DeviceId`]: the 12-byte id every Particle device has (reference 1.2), written as 24 hex
//! digits in events, the REST API and scenario files.

use std::fmt;
use std::str::FromStr;

/// A device id. Displays as 24 lowercase hex digits; parses from 24 hex digits of either case.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DeviceId(pub [u8; 12]);

impl DeviceId {
    pub fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

impl From<[u8; 12]> for DeviceId {
    fn from(bytes: [u8; 12]) -> Self {
        DeviceId(bytes)
    }
}

impl From<DeviceId> for [u8; 12] {
    fn from(id: DeviceId) -> Self {
        id.0
    }
}

/// Why a string is not a device id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a device id: {why} (a device id is 24 hex digits)")]
pub struct DeviceIdError {
    pub text: String,
    pub why: &'static str,
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = |why| DeviceIdError {
            text: s.to_string(),
            why,
        };
        if s.len() != 24 {
            return Err(error("it has the wrong length"));
        }
        let bytes = hex::decode(s).map_err(|_| error("it has a character that is not hex"))?;
        let bytes: [u8; 12] = bytes
            .try_into()
            .map_err(|_| error("it has the wrong length"))?;
        Ok(DeviceId(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_as_hex() {
        let id: DeviceId = "E00FCE68ECE1D3D21A73DCC9".parse().unwrap();
        assert_eq!(id.to_string(), "e00fce68ece1d3d21a73dcc9");
        assert_eq!(id.to_string().parse::<DeviceId>(), Ok(id));
    }

    #[test]
    fn bad_text_is_named() {
        let e = "e00fce".parse::<DeviceId>().unwrap_err();
        assert!(e.to_string().contains("`e00fce`"), "{e}");
        assert!("zz0fce68ece1d3d21a73dcc9".parse::<DeviceId>().is_err());
    }
}
