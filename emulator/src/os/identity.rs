//! Who a device is to the cloud (reference 1.2): a 12-byte device id, its P-256 key pair, and
//! the server public key it pins.

use p256::ecdsa::{SigningKey, VerifyingKey};

/// The identity provisioned into a device's DCT.
#[derive(Clone)]
pub struct Identity {
    /// Raw 12-byte device id (printed as 24 hex digits).
    pub device_id: [u8; 12],
    /// The device private key; its public key is what the cloud registers.
    pub key: SigningKey,
    /// The server public key the DTLS client pins.
    pub server_key: VerifyingKey,
}

impl Identity {
    /// The device id as Device OS prints it: 24 lowercase hex digits.
    pub fn device_id_hex(&self) -> String {
        self.device_id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The device public key.
    pub fn public_key(&self) -> VerifyingKey {
        *self.key.verifying_key()
    }
}

impl core::fmt::Debug for Identity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Identity")
            .field("device_id", &self.device_id_hex())
            .finish_non_exhaustive()
    }
}
