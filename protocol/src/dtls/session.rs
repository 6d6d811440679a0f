//! What a client keeps for handshake-less resumption (reference 1.4: Device OS's
//! `SessionPersistData` holds the randoms, the master secret, the epoch, the out counter, the
//! replay window and the 8-byte CID; the rest of that struct belongs to the protocol layer).
//!
//! Blob layout (all integers big-endian), version 1:
//! ```text
//! offset  size  field
//! 0       1     format version (1)
//! 1       48    master secret
//! 49      32    client random
//! 81      32    server random
//! 113     2     write epoch
//! 115     8     next write sequence number
//! 123     8     replay window top
//! 131     8     replay window bitmap
//! 139     1     CID length
//! 140     n     CID
//! ```

use super::conn::ReplayWindow;
use super::handshake::Reader;
use super::DtlsError;

const VERSION: u8 = 1;

/// The exported state of a connected client.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionState {
    pub master_secret: [u8; 48],
    pub client_random: [u8; 32],
    pub server_random: [u8; 32],
    /// The server-assigned CID (empty: none).
    pub cid: Vec<u8>,
    pub epoch: u16,
    /// Next sequence number the client writes under `epoch`.
    pub write_seq: u64,
    pub replay: ReplayWindow,
}

impl core::fmt::Debug for SessionState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SessionState")
            .field("cid", &self.cid)
            .field("epoch", &self.epoch)
            .field("write_seq", &self.write_seq)
            .finish_non_exhaustive()
    }
}

impl SessionState {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        out.extend_from_slice(&self.master_secret);
        out.extend_from_slice(&self.client_random);
        out.extend_from_slice(&self.server_random);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.write_seq.to_be_bytes());
        out.extend_from_slice(&self.replay.top.to_be_bytes());
        out.extend_from_slice(&self.replay.bitmap.to_be_bytes());
        out.push(self.cid.len() as u8);
        out.extend_from_slice(&self.cid);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DtlsError> {
        let mut r = Reader::new(bytes, "session blob");
        if r.u8()? != VERSION {
            return Err(DtlsError::BadSessionBlob("unknown format version"));
        }
        let mut master_secret = [0u8; 48];
        master_secret.copy_from_slice(r.take(48)?);
        let client_random = r.array32()?;
        let server_random = r.array32()?;
        let epoch = r.u16()?;
        let u64_ = |r: &mut Reader<'_>| -> Result<u64, DtlsError> {
            let mut b = [0u8; 8];
            b.copy_from_slice(r.take(8)?);
            Ok(u64::from_be_bytes(b))
        };
        let write_seq = u64_(&mut r)?;
        let top = u64_(&mut r)?;
        let bitmap = u64_(&mut r)?;
        let cid = r.vec8()?.to_vec();
        r.finish()?;
        if epoch != 1 {
            return Err(DtlsError::BadSessionBlob("epoch must be 1"));
        }
        if write_seq >= 1 << 48 {
            return Err(DtlsError::BadSessionBlob("sequence number beyond 48 bits"));
        }
        Ok(Self {
            master_secret,
            client_random,
            server_random,
            cid,
            epoch,
            write_seq,
            replay: ReplayWindow { top, bitmap },
        })
    }
}
