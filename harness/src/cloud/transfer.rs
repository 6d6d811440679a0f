//! The OTA v3 sender of one transfer (reference `particle-protocol.md` 2.2, 2.4 and section 8
//! "Cloud simulator must"): which chunks go out when, given the device's window, its resume
//! offset and its UpdateAcks. Pure bookkeeping, no messages and no clock: the [`super::Cloud`]
//! turns the indices this returns into UpdateChunk messages.
//!
//! ```text
//! indices      1-based, relative to the resume offset: chunk k covers file bytes
//!              [resume_offset + (k-1)*chunk_size, ..), the last one ends the file
//! window       never send k > cumulative + window
//! UpdateAck    cumulative N (chunks 1..=N held) + bitmap (bit b of word w <=> chunk N+32w+b+1 held)
//! holes        a chunk below the highest one the ack reports held, not held itself: resent at
//!              once the first time, then at most every `hole_holdoff`
//! silence      no new ack information for `silence_timeout` while chunks are outstanding:
//!              the first `silence_resend` unacknowledged chunks go out again
//! ```
//!
//! Paced ([`SenderTiming::paced`], the default), like any reliable transport over UDP
//! (quinn's `congestion/` and RFC 6298 are the models), within what Device OS accepts:
//!
//! ```text
//! congestion window  cwnd chunks may be outstanding (sent, not reported held), never more
//!              than the device's window; it starts at the device's window (so an
//!              unconstrained link sees the old sender), grows by one chunk per chunk
//!              acknowledged below ssthresh and by 1/cwnd above, and halves on a loss (once
//!              per window of data: a loss of a chunk sent before the last cut does not cut
//!              again); on a silence timeout it falls to 2 chunks
//! loss         a chunk is lost when three chunks sent after it are reported held (reordering
//!              of one or two is not a loss); a chunk already sent again is lost again only
//!              after srtt + 4 rttvar (never before `hole_holdoff`) since its last send
//! RTT          sampled from chunks acknowledged that were sent once (Karn), smoothed as
//!              RFC 6298 (srtt, rttvar); the retransmission timeout is srtt + 4 rttvar,
//!              at least `silence_timeout`, doubled at each silence timeout in a row (backoff)
//!              and at most 60 s, so a chunk goes out well within the device's 300 s
//! ```

use std::collections::BTreeSet;
use std::ops::Range;
use std::time::Duration;

use protocol::message::UpdateAck;

/// Timing of the sender (values in [`super::CloudConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderTiming {
    pub hole_holdoff: Duration,
    pub silence_timeout: Duration,
    pub silence_resend: u32,
    /// No UpdateAck at all for this long: the transfer is dead (the device cancels its own
    /// after 300 s without a chunk, reference 2.3).
    pub stall_limit: Duration,
    /// Congestion window, loss detection by three later chunks and RTT-based timeouts (see
    /// the module documentation); `false`: the sender as it was before (whole window,
    /// holes at once, fixed timeouts), kept for `hil bench pacing`.
    pub paced: bool,
}

/// Most a retransmission timeout grows to by backoff (well within the device's 300 s).
pub const MAX_RTO: Duration = Duration::from_secs(60);
/// Chunks reported held after a missing one that make it lost.
const LOSS_THRESHOLD: u32 = 3;

/// The paced sender's state (RFC 6298 estimator and an AIMD window).
#[derive(Debug, Clone)]
struct Pacing {
    cwnd: f64,
    ssthresh: f64,
    srtt: Option<Duration>,
    rttvar: Duration,
    /// Silence timeouts in a row.
    backoff: u32,
    /// Chunks below this index were sent before the last cut of the window.
    recovery: u32,
}

/// Why an UpdateAck or an UpdateStart response cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("the device returned resume offset {offset} beyond the file size {file_size}")]
    ResumeBeyondFile { offset: u32, file_size: u32 },
    #[error("UpdateAck reports {cumulative} chunks received, the transfer has only {chunks}")]
    AckBeyondFile { cumulative: u32, chunks: u32 },
}

/// One transfer in progress.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub file_size: u32,
    pub chunk_size: u32,
    pub resume_offset: u32,
    /// Chunks after the resume offset.
    pub chunks: u32,
    /// The device's receive window, in chunks (at least 1).
    pub window: u32,
    /// Chunks 1..=cumulative are held by the device.
    cumulative: u32,
    /// Chunks beyond `cumulative` the device reported held.
    beyond: BTreeSet<u32>,
    /// The lowest index never sent.
    next_new: u32,
    /// When each chunk (index - 1) was last sent.
    last_sent: Vec<Option<Duration>>,
    /// How often each chunk (index - 1) was sent again.
    resends: Vec<u32>,
    /// Last time an ack told us something new (or the silence timer fired).
    last_progress: Duration,
    /// Last UpdateAck of any kind (or the start).
    last_ack: Duration,
    /// Chunk transmissions, first sends and retransmissions.
    pub transmissions: u32,
    /// Of those, retransmissions.
    pub retransmissions: u32,
    timing: SenderTiming,
    pacing: Pacing,
}

impl Transfer {
    /// A transfer of `file_size` bytes starting at the device's `resume_offset`.
    pub fn new(
        now: Duration,
        file_size: u32,
        chunk_size: u32,
        resume_offset: u32,
        window: u32,
        timing: SenderTiming,
    ) -> Result<Transfer, TransferError> {
        if resume_offset > file_size {
            return Err(TransferError::ResumeBeyondFile {
                offset: resume_offset,
                file_size,
            });
        }
        let chunk_size = chunk_size.max(1);
        let chunks = (file_size - resume_offset).div_ceil(chunk_size);
        Ok(Transfer {
            file_size,
            chunk_size,
            resume_offset,
            chunks,
            window: window.max(1),
            cumulative: 0,
            beyond: BTreeSet::new(),
            next_new: 1,
            last_sent: vec![None; chunks as usize],
            resends: vec![0; chunks as usize],
            last_progress: now,
            last_ack: now,
            transmissions: 0,
            retransmissions: 0,
            timing,
            pacing: Pacing {
                cwnd: f64::from(window.max(1)),
                ssthresh: f64::from(window.max(1)),
                srtt: None,
                rttvar: Duration::ZERO,
                backoff: 0,
                recovery: 1,
            },
        })
    }

    /// Bytes of the per-chunk state this transfer holds (send times, resend counts, chunks
    /// held beyond the cumulative ack).
    pub fn state_bytes(&self) -> usize {
        self.last_sent.len() * std::mem::size_of::<Option<Duration>>()
            + self.resends.len() * std::mem::size_of::<u32>()
            + self.beyond.len() * std::mem::size_of::<u32>()
    }

    /// The congestion window now, in chunks (the device's window when not paced).
    pub fn congestion_window(&self) -> u32 {
        if self.timing.paced {
            self.pacing.cwnd as u32
        } else {
            self.window
        }
    }

    /// The smoothed round-trip time, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.pacing.srtt
    }

    /// The retransmission timeout now (with backoff).
    pub fn rto(&self) -> Duration {
        if !self.timing.paced {
            return self.timing.silence_timeout;
        }
        let base = match self.pacing.srtt {
            Some(srtt) => srtt.saturating_add(self.pacing.rttvar.saturating_mul(4)),
            None => self.timing.silence_timeout,
        }
        .max(self.timing.silence_timeout);
        base.saturating_mul(1 << self.pacing.backoff.min(16))
            .min(MAX_RTO)
    }

    /// How long a chunk sent again waits before it may be sent once more.
    fn resend_holdoff(&self) -> Duration {
        match (self.timing.paced, self.pacing.srtt) {
            (true, Some(srtt)) => srtt
                .saturating_add(self.pacing.rttvar.saturating_mul(4))
                .max(self.timing.hole_holdoff),
            (true, None) => self.timing.silence_timeout.max(self.timing.hole_holdoff),
            (false, _) => self.timing.hole_holdoff,
        }
    }

    fn outstanding_count(&self) -> u32 {
        let span = self.next_new.saturating_sub(self.cumulative + 1);
        let held_beyond = self.beyond.range(..self.next_new).count() as u32;
        span.saturating_sub(held_beyond)
    }

    fn rtt_sample(&mut self, sample: Duration) {
        let p = &mut self.pacing;
        match p.srtt {
            None => {
                p.srtt = Some(sample);
                p.rttvar = sample / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(sample);
                p.rttvar = (p.rttvar * 3 + diff) / 4;
                p.srtt = Some((srtt * 7 + sample) / 8);
            }
        }
    }

    /// A loss of a chunk sent after the last cut: the window halves.
    fn on_loss(&mut self, index: u32) {
        if index < self.pacing.recovery {
            return;
        }
        let p = &mut self.pacing;
        p.ssthresh = (p.cwnd / 2.0).max(2.0);
        p.cwnd = p.ssthresh;
        p.recovery = self.next_new;
    }

    fn on_acked(&mut self, now: Duration, newly: &[u32]) {
        let mut sample = None;
        for &index in newly {
            let slot = (index - 1) as usize;
            if self.resends[slot] == 0 {
                if let Some(at) = self.last_sent[slot] {
                    sample = Some(now.saturating_sub(at));
                }
            }
        }
        if let Some(sample) = sample {
            self.rtt_sample(sample);
        }
        if !newly.is_empty() {
            self.pacing.backoff = 0;
        }
        let max = f64::from(self.window);
        for _ in newly {
            let p = &mut self.pacing;
            if p.cwnd < p.ssthresh {
                p.cwnd += 1.0;
            } else {
                p.cwnd += 1.0 / p.cwnd;
            }
            p.cwnd = p.cwnd.min(max);
        }
    }

    /// Chunks the device holds without a gap.
    pub fn cumulative(&self) -> u32 {
        self.cumulative
    }

    /// Chunks the device reported held (cumulative plus the bitmap).
    pub fn acked(&self) -> u32 {
        self.cumulative + self.beyond.len() as u32
    }

    /// Distinct chunks sent at least once.
    pub fn sent(&self) -> u32 {
        self.next_new - 1
    }

    /// Every chunk is held: UpdateFinish may go.
    pub fn is_complete(&self) -> bool {
        self.cumulative >= self.chunks
    }

    /// The file bytes of chunk `index` (1-based, relative to the resume offset).
    pub fn chunk_range(&self, index: u32) -> Range<usize> {
        let start = u64::from(self.resume_offset)
            + u64::from(index.saturating_sub(1)) * u64::from(self.chunk_size);
        let end = (start + u64::from(self.chunk_size)).min(u64::from(self.file_size));
        start as usize..end as usize
    }

    fn held(&self, index: u32) -> bool {
        index <= self.cumulative || self.beyond.contains(&index)
    }

    fn mark_sent(&mut self, now: Duration, index: u32) {
        let slot = (index - 1) as usize;
        if self.last_sent[slot].is_some() {
            self.resends[slot] += 1;
            self.retransmissions += 1;
        }
        self.last_sent[slot] = Some(now);
        self.transmissions += 1;
    }

    /// New chunks the window allows now, in order; they count as sent.
    pub fn next_chunks(&mut self, now: Duration) -> Vec<u32> {
        let limit = self.cumulative.saturating_add(self.window).min(self.chunks);
        let mut out = Vec::new();
        let mut room = if self.timing.paced {
            (self.pacing.cwnd as u32).saturating_sub(self.outstanding_count())
        } else {
            u32::MAX
        };
        while self.next_new <= limit && room > 0 {
            let index = self.next_new;
            self.next_new += 1;
            if !self.held(index) {
                self.mark_sent(now, index);
                out.push(index);
                room -= 1;
            }
        }
        out
    }

    /// Takes an UpdateAck; returns the holes to send again (they count as sent).
    pub fn on_ack(&mut self, now: Duration, ack: &UpdateAck) -> Result<Vec<u32>, TransferError> {
        if ack.cumulative > self.chunks {
            return Err(TransferError::AckBeyondFile {
                cumulative: ack.cumulative,
                chunks: self.chunks,
            });
        }
        self.last_ack = now;
        let stale = ack.cumulative < self.cumulative;
        let mut progress = false;
        let mut newly: Vec<u32> = Vec::new();
        if ack.cumulative > self.cumulative {
            newly.extend(
                (self.cumulative + 1..=ack.cumulative).filter(|i| !self.beyond.contains(i)),
            );
            self.cumulative = ack.cumulative;
            progress = true;
        }
        let mut highest = ack.cumulative;
        for (w, word) in ack.bitmap.iter().enumerate() {
            for b in 0..32u32 {
                if word & (1 << b) == 0 {
                    continue;
                }
                let Some(index) = u32::try_from(w)
                    .ok()
                    .and_then(|w| w.checked_mul(32))
                    .and_then(|x| x.checked_add(ack.cumulative))
                    .and_then(|x| x.checked_add(b + 1))
                else {
                    continue;
                };
                if index > self.chunks {
                    continue;
                }
                highest = highest.max(index);
                if index > self.cumulative && self.beyond.insert(index) {
                    progress = true;
                    newly.push(index);
                }
            }
        }
        while self.beyond.remove(&(self.cumulative + 1)) {
            self.cumulative += 1;
        }
        self.beyond.retain(|&i| i > self.cumulative);
        if progress {
            self.last_progress = now;
        }
        if self.timing.paced {
            self.on_acked(now, &newly);
        }
        if stale {
            // An old ack overtaken by a newer one: its holes may already be filled.
            return Ok(Vec::new());
        }
        let limit = self.cumulative.saturating_add(self.window);
        let holdoff = self.resend_holdoff();
        let mut resend = Vec::new();
        for index in self.cumulative + 1..highest.min(limit) {
            if self.held(index) {
                continue;
            }
            // Paced: missing with three later chunks held (one or two may be reordering).
            if self.timing.paced && highest - index < LOSS_THRESHOLD {
                continue;
            }
            let slot = (index - 1) as usize;
            let due = match self.last_sent[slot] {
                None => false, // never sent: next_chunks sends it
                Some(at) => self.resends[slot] == 0 || now.saturating_sub(at) >= holdoff,
            };
            if due {
                if self.timing.paced && self.resends[slot] == 0 {
                    self.on_loss(index);
                }
                self.mark_sent(now, index);
                resend.push(index);
            }
        }
        Ok(resend)
    }

    fn outstanding(&self) -> bool {
        (self.cumulative + 1..self.next_new).any(|i| !self.beyond.contains(&i))
    }

    /// When [`Transfer::on_timeout`] has something to do, or the transfer stalls.
    pub fn deadline(&self) -> Option<Duration> {
        self.outstanding().then(|| {
            self.last_progress
                .saturating_add(self.rto())
                .min(self.last_ack.saturating_add(self.timing.stall_limit))
        })
    }

    /// No UpdateAck for the stall limit while chunks are outstanding.
    pub fn is_stalled(&self, now: Duration) -> bool {
        self.outstanding() && now >= self.last_ack.saturating_add(self.timing.stall_limit)
    }

    /// On silence, the first unacknowledged chunks again (they count as sent).
    pub fn on_timeout(&mut self, now: Duration) -> Vec<u32> {
        if !self.outstanding() || now < self.last_progress.saturating_add(self.rto()) {
            return Vec::new();
        }
        self.last_progress = now;
        if self.timing.paced {
            let p = &mut self.pacing;
            p.ssthresh = (p.cwnd / 2.0).max(2.0);
            p.cwnd = 2.0;
            p.backoff = p.backoff.saturating_add(1);
            p.recovery = self.next_new;
        }
        let candidates: Vec<u32> = (self.cumulative + 1..self.next_new)
            .filter(|i| !self.beyond.contains(i))
            .take(self.timing.silence_resend.max(1) as usize)
            .collect();
        for &index in &candidates {
            self.mark_sent(now, index);
        }
        candidates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: SenderTiming = SenderTiming {
        hole_holdoff: Duration::from_millis(250),
        silence_timeout: Duration::from_secs(1),
        silence_resend: 2,
        stall_limit: Duration::from_secs(300),
        paced: false,
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ack(cumulative: u32, held: &[u32]) -> UpdateAck {
        UpdateAck::from_received(cumulative, held.iter().copied())
    }

    #[test]
    fn chunk_ranges_are_relative_to_the_resume_offset() {
        let t = Transfer::new(ms(0), 2000, 512, 1024, 8, TIMING).unwrap();
        assert_eq!(t.chunks, 2);
        assert_eq!(t.chunk_range(1), 1024..1536);
        assert_eq!(t.chunk_range(2), 1536..2000);
    }

    #[test]
    fn resume_offset_beyond_the_file_is_refused() {
        assert_eq!(
            Transfer::new(ms(0), 100, 512, 101, 8, TIMING).unwrap_err(),
            TransferError::ResumeBeyondFile {
                offset: 101,
                file_size: 100
            }
        );
        let t = Transfer::new(ms(0), 100, 512, 100, 8, TIMING).unwrap();
        assert_eq!(t.chunks, 0);
        assert!(t.is_complete());
    }

    #[test]
    fn window_limits_the_chunks_beyond_the_cumulative_ack() {
        let mut t = Transfer::new(ms(0), 512 * 10, 512, 0, 4, TIMING).unwrap();
        assert_eq!(t.next_chunks(ms(0)), vec![1, 2, 3, 4]);
        assert_eq!(t.next_chunks(ms(0)), Vec::<u32>::new());
        // Holding 1, 3 and 4 moves the window by one only.
        assert_eq!(t.on_ack(ms(10), &ack(1, &[3, 4])).unwrap(), vec![2]);
        assert_eq!(t.next_chunks(ms(10)), vec![5]);
        assert_eq!(t.on_ack(ms(20), &ack(4, &[])).unwrap(), Vec::<u32>::new());
        assert_eq!(t.next_chunks(ms(20)), vec![6, 7, 8]);
    }

    #[test]
    fn a_hole_is_resent_once_then_after_the_holdoff() {
        let mut t = Transfer::new(ms(0), 512 * 8, 512, 0, 8, TIMING).unwrap();
        t.next_chunks(ms(0));
        assert_eq!(t.on_ack(ms(5), &ack(2, &[4])).unwrap(), vec![3]);
        assert_eq!(
            t.on_ack(ms(6), &ack(2, &[4, 5, 6])).unwrap(),
            Vec::<u32>::new()
        );
        assert_eq!(t.on_ack(ms(300), &ack(2, &[4, 5, 6])).unwrap(), vec![3]);
        assert_eq!(t.retransmissions, 2);
        assert_eq!(t.on_ack(ms(301), &ack(8, &[])).unwrap(), Vec::<u32>::new());
        assert!(t.is_complete());
    }

    #[test]
    fn a_stale_ack_changes_nothing_and_resends_nothing() {
        let mut t = Transfer::new(ms(0), 512 * 8, 512, 0, 8, TIMING).unwrap();
        t.next_chunks(ms(0));
        t.on_ack(ms(5), &ack(6, &[])).unwrap();
        assert_eq!(t.on_ack(ms(6), &ack(2, &[4])).unwrap(), Vec::<u32>::new());
        assert_eq!(t.cumulative(), 6);
    }

    #[test]
    fn silence_resends_the_first_unacknowledged_chunks() {
        let mut t = Transfer::new(ms(0), 512 * 8, 512, 0, 8, TIMING).unwrap();
        t.next_chunks(ms(0));
        t.on_ack(ms(100), &ack(2, &[4])).unwrap(); // resends 3
        assert_eq!(t.deadline(), Some(ms(1100)));
        assert_eq!(t.on_timeout(ms(1099)), Vec::<u32>::new());
        assert_eq!(t.on_timeout(ms(1100)), vec![3, 5]);
        assert_eq!(t.deadline(), Some(ms(2100)));
        assert!(!t.is_stalled(ms(300_099)));
        assert!(t.is_stalled(ms(300_100)));
    }

    const PACED: SenderTiming = SenderTiming {
        paced: true,
        ..TIMING
    };

    #[test]
    fn paced_one_or_two_reordered_chunks_are_not_resent_three_later_ones_make_a_loss() {
        let mut t = Transfer::new(ms(0), 512 * 16, 512, 0, 16, PACED).unwrap();
        assert_eq!(t.next_chunks(ms(0)).len(), 16);
        assert_eq!(
            t.on_ack(ms(100), &ack(2, &[4, 5])).unwrap(),
            Vec::<u32>::new()
        );
        assert_eq!(t.congestion_window(), 16);
        assert_eq!(t.on_ack(ms(110), &ack(2, &[4, 5, 6])).unwrap(), vec![3]);
        // The loss halved the window; later losses of chunks sent before the cut do not.
        assert_eq!(t.congestion_window(), 8);
        assert_eq!(
            t.on_ack(ms(120), &ack(2, &[4, 5, 6, 8, 9, 10])).unwrap(),
            vec![7]
        );
        assert_eq!(t.congestion_window(), 8);
    }

    #[test]
    fn paced_the_window_limits_chunks_in_flight_and_grows_with_acks() {
        let mut t = Transfer::new(ms(0), 512 * 64, 512, 0, 64, PACED).unwrap();
        t.next_chunks(ms(0));
        t.on_ack(ms(100), &ack(2, &[4, 5, 6])).unwrap(); // 3 lost: window 32
        assert_eq!(t.congestion_window(), 32);
        // 63 outstanding (3 resent counts), more than the window: nothing new.
        assert!(t.next_chunks(ms(100)).is_empty());
        t.on_ack(ms(200), &ack(40, &[])).unwrap();
        // 24 outstanding (41..=64), window just above 32: room for a few new ones, no more.
        let cwnd = t.congestion_window();
        assert!(cwnd >= 32, "{cwnd}");
        assert!(t.next_chunks(ms(200)).is_empty(), "all 64 are sent already");
    }

    #[test]
    fn paced_a_resent_chunk_waits_a_round_trip_before_it_goes_again() {
        let mut t = Transfer::new(ms(0), 512 * 16, 512, 0, 16, PACED).unwrap();
        t.next_chunks(ms(0));
        // An RTT of about 2 s (a full queue).
        assert_eq!(t.on_ack(ms(2000), &ack(2, &[4, 5, 6])).unwrap(), vec![3]);
        assert!(t.srtt().is_some_and(|s| s >= ms(1900)));
        // The old sender would send 3 again 250 ms later; the paced one waits srtt + 4 rttvar.
        assert!(t
            .on_ack(ms(2300), &ack(2, &[4, 5, 6, 7]))
            .unwrap()
            .is_empty());
        // srtt about 2 s, rttvar about 0.8 s: over 5 s after its last send.
        assert!(t
            .on_ack(ms(5000), &ack(2, &[4, 5, 6, 7, 8]))
            .unwrap()
            .is_empty());
        // The same ack much later (no new sample): now it goes again.
        assert_eq!(
            t.on_ack(ms(20000), &ack(2, &[4, 5, 6, 7, 8])).unwrap(),
            vec![3]
        );
    }

    #[test]
    fn paced_silence_backs_off_and_never_waits_beyond_a_minute() {
        let mut t = Transfer::new(ms(0), 512 * 16, 512, 0, 16, PACED).unwrap();
        t.next_chunks(ms(0));
        let mut now = ms(0);
        let mut gaps = Vec::new();
        // 1 + 2 + 4 + ... + 32 + 60 + 60 s: within the 300 s stall limit.
        for _ in 0..8 {
            let at = t.deadline().unwrap();
            assert!(!t.on_timeout(at).is_empty());
            gaps.push(at - now);
            now = at;
        }
        assert_eq!(gaps[0], ms(1000));
        assert_eq!(gaps[1], ms(2000));
        assert!(gaps.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*gaps.last().unwrap(), MAX_RTO);
        assert_eq!(t.congestion_window(), 2);
    }

    #[test]
    fn an_ack_beyond_the_file_is_an_error() {
        let mut t = Transfer::new(ms(0), 512 * 2, 512, 0, 8, TIMING).unwrap();
        assert!(t.on_ack(ms(0), &ack(3, &[])).is_err());
    }
}
