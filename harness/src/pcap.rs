//! Captures of what a node sends and receives, as classic pcap files Wireshark and tshark read,
//! and their decryption with a key log, so that every CoAP message of a session can be
//! dissected in both directions.
//!
//! # File layout (classic pcap, little-endian, microsecond timestamps)
//!
//! ```text
//! file header (24 bytes)
//!   0..4   magic 0xa1b2c3d4        4..6  version major 2   6..8  version minor 4
//!   8..12  thiszone 0              12..16 sigfigs 0        16..20 snaplen 65535
//!   20..24 link type 1 (Ethernet)
//! record header (16 bytes), then the frame
//!   0..4   seconds   4..8 microseconds   8..12 captured length   12..16 original length
//! frame: Ethernet (14, type 0x0800) | IPv4 (20, protocol 17) | UDP (8, no checksum) | payload
//! ```
//!
//! [`read_udp`] also reads big-endian and nanosecond files and the raw-IPv4 link types, so a
//! capture taken by tcpdump on a real interface can be decrypted as well.
//!
//! # Decryption
//!
//! [`decrypt`] follows each DTLS association in the capture: the ClientHello gives the client
//! random, the ServerHello the server random and the connection ID the client's records carry
//! (draft-05 extension 254); the key log (`CLIENT_RANDOM <client random> <master secret>`, as
//! `hil cloud --keylog` writes it) gives the master secret. Every application-data record is
//! then opened (draft-05 additional data for CID records, which tshark does not apply) and
//! written as one plain UDP datagram with the same addresses and time; handshake, alert and
//! change-cipher-spec records are left out. A resumed session (record type 253 or 25 without a
//! handshake in the capture) is found by its connection ID.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use protocol::dtls::crypto::{KeyBlock, RecordCipher};
use protocol::dtls::handshake::{
    ext, find_extension, msg_type, ClientHello, FragmentRepr, ServerHello,
};
use protocol::dtls::record::{parse_datagram, ContentType};

/// Ethernet + IPv4 + UDP header bytes before the payload.
const FRAME_HEADERS: usize = 14 + 20 + 8;

/// One UDP datagram of a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Time since the Unix epoch, or since any start the writer chose.
    pub time: Duration,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

/// Writes datagrams as a classic pcap stream.
pub struct PcapWriter<W: Write> {
    out: W,
    ip_id: u16,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header.
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut header = Vec::with_capacity(24);
        header.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        header.extend_from_slice(&2u16.to_le_bytes());
        header.extend_from_slice(&4u16.to_le_bytes());
        header.extend_from_slice(&0i32.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&65535u32.to_le_bytes());
        header.extend_from_slice(&1u32.to_le_bytes());
        out.write_all(&header)?;
        Ok(PcapWriter { out, ip_id: 0 })
    }

    /// Appends one datagram. IPv6 addresses are written as 0.0.0.0 (the format here is IPv4).
    pub fn push(
        &mut self,
        time: Duration,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
    ) -> io::Result<()> {
        let v4 = |a: SocketAddr| match a {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(a) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, a.port()),
        };
        let (src, dst) = (v4(src), v4(dst));
        // A datagram never exceeds 65507 bytes; cut anything longer rather than wrap lengths.
        let payload = &payload[..payload.len().min(65535 - FRAME_HEADERS)];
        let udp_len = 8 + payload.len();
        let ip_len = 20 + udp_len;
        let mut frame = Vec::with_capacity(16 + FRAME_HEADERS + payload.len());
        frame.extend_from_slice(&(time.as_secs() as u32).to_le_bytes());
        frame.extend_from_slice(&time.subsec_micros().to_le_bytes());
        let captured = (14 + ip_len) as u32;
        frame.extend_from_slice(&captured.to_le_bytes());
        frame.extend_from_slice(&captured.to_le_bytes());
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
        self.ip_id = self.ip_id.wrapping_add(1);
        ip[6] = 0x40; // don't fragment
        ip[8] = 64; // TTL
        ip[9] = 17; // UDP
        ip[12..16].copy_from_slice(&src.ip().octets());
        ip[16..20].copy_from_slice(&dst.ip().octets());
        let checksum = internet_checksum(&ip);
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&src.port().to_be_bytes());
        frame.extend_from_slice(&dst.port().to_be_bytes());
        frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
        frame.extend_from_slice(payload);
        self.out.write_all(&frame)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Why a capture could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PcapError {
    #[error("not a pcap file (magic {0:#010x}); pcapng is not read, save as pcap")]
    BadMagic(u32),
    #[error("the capture ends inside {what} at byte {offset}")]
    Truncated { what: &'static str, offset: usize },
    #[error("link type {0} is not read (Ethernet, raw IPv4 and Linux cooked captures are)")]
    LinkType(u32),
}

/// Every IPv4 UDP datagram of a pcap file, in file order. Frames that are not IPv4 UDP
/// (ARP, TCP, IPv6, fragments) are skipped.
pub fn read_udp(bytes: &[u8]) -> Result<Vec<Packet>, PcapError> {
    let header = bytes.get(..24).ok_or(PcapError::Truncated {
        what: "the file header",
        offset: bytes.len(),
    })?;
    let magic_le = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let (big_endian, nanos) = match magic_le {
        0xa1b2_c3d4 => (false, false),
        0xa1b2_3c4d => (false, true),
        0xd4c3_b2a1 => (true, false),
        0x4d3c_b2a1 => (true, true),
        other => return Err(PcapError::BadMagic(other)),
    };
    let u32_at = |b: &[u8], at: usize| {
        let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if big_endian {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        }
    };
    let link = u32_at(header, 20) & 0x0fff_ffff;
    let ip_offset = match link {
        1 => 14,        // Ethernet (no VLAN tags)
        101 | 228 => 0, // raw IP, raw IPv4
        113 => 16,      // Linux cooked capture
        other => return Err(PcapError::LinkType(other)),
    };
    let mut out = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let rec = bytes.get(at..at + 16).ok_or(PcapError::Truncated {
            what: "a record header",
            offset: at,
        })?;
        let (secs, frac, captured) = (u32_at(rec, 0), u32_at(rec, 4), u32_at(rec, 8) as usize);
        let frame = bytes
            .get(at + 16..at + 16 + captured)
            .ok_or(PcapError::Truncated {
                what: "a frame",
                offset: at + 16,
            })?;
        at += 16 + captured;
        let time = Duration::new(
            u64::from(secs),
            if nanos {
                frac.min(999_999_999)
            } else {
                frac.min(999_999) * 1000
            },
        );
        if link == 1 && frame.get(12..14) != Some(&[0x08, 0x00]) {
            continue;
        }
        if link == 113 && frame.get(14..16) != Some(&[0x08, 0x00]) {
            continue;
        }
        if let Some(p) = udp_in_ipv4(frame.get(ip_offset..).unwrap_or_default(), time) {
            out.push(p);
        }
    }
    Ok(out)
}

fn udp_in_ipv4(ip: &[u8], time: Duration) -> Option<Packet> {
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let fragmented = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if fragmented || ihl < 20 || total < ihl + 8 {
        return None;
    }
    let udp = &ip[ihl..total];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    let payload = udp.get(8..udp_len.max(8).min(udp.len()))?;
    let addr = |a: &[u8], port: &[u8]| {
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(a[0], a[1], a[2], a[3]),
            u16::from_be_bytes([port[0], port[1]]),
        ))
    };
    Some(Packet {
        time,
        src: addr(&ip[12..16], &udp[0..2]),
        dst: addr(&ip[16..20], &udp[2..4]),
        payload: payload.to_vec(),
    })
}

/// Master secrets by client random, from an NSS key log (`CLIENT_RANDOM <hex> <hex>` lines;
/// other lines are ignored).
pub fn parse_key_log(text: &str) -> HashMap<[u8; 32], [u8; 48]> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("CLIENT_RANDOM") {
            continue;
        }
        let (Some(random), Some(master)) = (words.next(), words.next()) else {
            continue;
        };
        let (Ok(random), Ok(master)) = (hex::decode(random), hex::decode(master)) else {
            continue;
        };
        if let (Ok(random), Ok(master)) =
            (<[u8; 32]>::try_from(random), <[u8; 48]>::try_from(master))
        {
            out.insert(random, master);
        }
    }
    out
}

/// What [`decrypt`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecryptReport {
    /// Datagrams read.
    pub datagrams: usize,
    /// Application-data records opened (one output datagram each).
    pub decrypted: usize,
    /// Protected records left out: no key in the key log, unknown association, bad MAC.
    pub undecryptable: usize,
    /// Handshakes seen (ClientHello + ServerHello pairs).
    pub handshakes: usize,
}

/// One DTLS association: its randoms, the connection ID the client's records carry, and the
/// record ciphers once the key log had its master secret.
#[derive(Default)]
struct Association {
    client: Option<SocketAddr>,
    client_random: Option<[u8; 32]>,
    server_random: Option<[u8; 32]>,
    cid: Vec<u8>,
    /// (client write, server write).
    ciphers: Option<(RecordCipher, RecordCipher)>,
}

/// The same session with every DTLS application-data record replaced by its plaintext (the
/// CoAP message) in a plain UDP datagram; see the module docs.
pub fn decrypt(packets: &[Packet], key_log: &str) -> (Vec<Packet>, DecryptReport) {
    let keys = parse_key_log(key_log);
    let mut report = DecryptReport {
        datagrams: packets.len(),
        ..DecryptReport::default()
    };
    let mut associations: Vec<Association> = Vec::new();
    // The association a pair of addresses talks in (both orders), and the one a CID names.
    let mut by_pair: HashMap<(SocketAddr, SocketAddr), usize> = HashMap::new();
    let mut by_cid: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut out = Vec::new();

    for p in packets {
        let pair = (p.src, p.dst);
        let known = by_pair.get(&pair).copied();
        // Records from a client carry the CID its server assigned; 8 bytes in the Particle
        // profile. Try the association's length, then 8, then none.
        let cid_lens: Vec<usize> = match known {
            Some(i) if associations[i].client == Some(p.src) => vec![associations[i].cid.len()],
            Some(_) => vec![0],
            None => vec![8, 0],
        };
        let Some(records) = cid_lens
            .iter()
            .find_map(|&n| parse_datagram(&p.payload, n).ok())
        else {
            continue;
        };
        for r in records {
            if r.epoch == 0 && r.content_type == ContentType::Handshake {
                let Ok(fragments) = FragmentRepr::parse_all(r.fragment) else {
                    continue;
                };
                for f in fragments {
                    if f.fragment_offset != 0 || f.fragment.len() != f.length {
                        continue;
                    }
                    match f.msg_type {
                        msg_type::CLIENT_HELLO => {
                            let Ok(hello) = ClientHello::parse(f.fragment) else {
                                continue;
                            };
                            // A ClientHello again after HelloVerifyRequest keeps its random.
                            let i = match by_pair.get(&pair).copied() {
                                Some(i)
                                    if associations[i].client_random == Some(hello.random)
                                        && associations[i].ciphers.is_none() =>
                                {
                                    i
                                }
                                _ => {
                                    associations.push(Association::default());
                                    associations.len() - 1
                                }
                            };
                            let a = &mut associations[i];
                            a.client = Some(p.src);
                            a.client_random = Some(hello.random);
                            by_pair.insert(pair, i);
                            by_pair.insert((p.dst, p.src), i);
                        }
                        msg_type::SERVER_HELLO => {
                            let Ok(hello) = ServerHello::parse(f.fragment) else {
                                continue;
                            };
                            let Some(&i) = by_pair.get(&pair) else {
                                continue;
                            };
                            report.handshakes += 1;
                            let a = &mut associations[i];
                            a.server_random = Some(hello.random);
                            a.cid = find_extension(&hello.extensions, ext::CONNECTION_ID)
                                .and_then(|d| d.get(1..1 + usize::from(*d.first()?)))
                                .map(<[u8]>::to_vec)
                                .unwrap_or_default();
                            if let (Some(cr), Some(sr)) = (a.client_random, a.server_random) {
                                if let Some(master) = keys.get(&cr) {
                                    a.ciphers =
                                        Some(KeyBlock::derive(master, &cr, &sr).ciphers(true));
                                }
                            }
                            if !a.cid.is_empty() {
                                by_cid.insert(a.cid.clone(), i);
                            }
                        }
                        _ => {}
                    }
                }
                continue;
            }
            if r.epoch == 0 {
                continue;
            }
            // A protected record: find its association (by CID for a resumed session).
            let index = match (by_pair.get(&pair).copied(), r.cid) {
                (Some(i), _) if associations[i].ciphers.is_some() => Some(i),
                (_, Some(cid)) => by_cid.get(cid).copied().inspect(|&i| {
                    by_pair.insert(pair, i);
                    by_pair.insert((p.dst, p.src), i);
                    associations[i].client = Some(p.src);
                }),
                (found, None) => found,
            };
            let Some(a) = index.map(|i| &associations[i]) else {
                report.undecryptable += 1;
                continue;
            };
            let Some((client_write, server_write)) = &a.ciphers else {
                report.undecryptable += 1;
                continue;
            };
            let cipher = if a.client == Some(p.src) {
                client_write
            } else {
                server_write
            };
            match cipher.open(r.content_type, r.epoch, r.seq, r.cid, r.fragment) {
                Ok((ContentType::ApplicationData, plaintext)) => {
                    report.decrypted += 1;
                    out.push(Packet {
                        time: p.time,
                        src: p.src,
                        dst: p.dst,
                        payload: plaintext,
                    });
                }
                Ok(_) => {}
                Err(_) => report.undecryptable += 1,
            }
        }
    }
    (out, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn written_datagrams_read_back() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        let a = Packet {
            time: Duration::new(5, 123_000),
            src: addr("127.0.0.1:4000"),
            dst: addr("10.0.0.2:5684"),
            payload: b"hello".to_vec(),
        };
        let b = Packet {
            time: Duration::new(6, 0),
            src: addr("10.0.0.2:5684"),
            dst: addr("127.0.0.1:4000"),
            payload: Vec::new(),
        };
        for p in [&a, &b] {
            w.push(p.time, p.src, p.dst, &p.payload).unwrap();
        }
        let bytes = w.into_inner();
        assert_eq!(read_udp(&bytes).unwrap(), vec![a, b]);
    }

    #[test]
    fn a_truncated_or_foreign_file_is_an_error_not_a_panic() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.push(
            Duration::ZERO,
            addr("1.2.3.4:1"),
            addr("5.6.7.8:2"),
            &[1, 2, 3],
        )
        .unwrap();
        let bytes = w.into_inner();
        for cut in 0..bytes.len() {
            let _ = read_udp(&bytes[..cut]);
        }
        assert!(matches!(
            read_udp(&[
                0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]),
            Err(PcapError::BadMagic(_))
        ));
    }

    #[test]
    fn key_log_lines_are_read_and_others_ignored() {
        let log = format!(
            "# comment\nCLIENT_RANDOM {} {}\nCLIENT_RANDOM zz 00\n",
            "11".repeat(32),
            "22".repeat(48)
        );
        let keys = parse_key_log(&log);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[&[0x11; 32]], [0x22; 48]);
    }
}
