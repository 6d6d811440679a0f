//! [`DeviceId`]: the 12-byte id every Particle device has (reference 1.2), written as 24 hex
//! digits in events, the REST API and scenario files. One type for the whole harness: the
//! one of [`crate::keys`] (parsing, display, random ids), with the conversions the cloud uses.

pub use crate::keys::DeviceId;

impl DeviceId {
    pub fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

impl From<DeviceId> for [u8; 12] {
    fn from(id: DeviceId) -> Self {
        id.0
    }
}

impl AsRef<[u8]> for DeviceId {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq<[u8; 12]> for DeviceId {
    fn eq(&self, other: &[u8; 12]) -> bool {
        &self.0 == other
    }
}

impl PartialEq<DeviceId> for [u8; 12] {
    fn eq(&self, other: &DeviceId) -> bool {
        self == &other.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_as_hex() {
        let id: DeviceId = "E00FCE68ECE1D3D21A73DCC9".parse().unwrap();
        assert_eq!(id.to_string(), "e00fce68ece1d3d21a73dcc9");
        assert_eq!(id.to_hex().parse::<DeviceId>().ok(), Some(id));
        assert_eq!(<[u8; 12]>::from(id), *id.as_bytes());
    }

    #[test]
    fn bad_text_is_refused() {
        assert!("e00fce".parse::<DeviceId>().is_err());
        assert!("zz0fce68ece1d3d21a73dcc9".parse::<DeviceId>().is_err());
    }
}
