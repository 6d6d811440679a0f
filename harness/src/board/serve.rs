//! The emulator's side of the test-control protocol ([`super::protocol`]): what the test
//! application of `boards/firmware/` does, played on an emulated [`DeviceOs`], sans-IO. Bytes
//! from the host go in with the device; reply lines come out. The device's trace
//! ([`DeviceEvent`]) becomes the unsolicited lines the firmware prints (`boot`, system events,
//! logs).
//!
//! Like the USB port of a real board, the port answers only while the application runs: bytes
//! that arrive while the device is off, asleep or in safe mode are lost (reference
//! particle-cloud-api.md 5.8: the port disappears at reset and in sleep; the application does
//! not run in safe mode).

use std::time::Duration;

use emulator::os::{
    DeviceEvent, DeviceOs, FirmwareUpdateEvent, SleepConfig, SleepMode as OsSleepMode,
    SleepNetwork as OsSleepNetwork, SystemEvent,
};

use super::protocol::{
    BoardEvent, BoardLine, BoardStatus, Boot, Command, LineReader, LogLine, ModuleInfo, Reply,
    ReplyBody, Request, SleepMode, SleepNetwork, PROTOCOL_VERSION,
};

/// The test application's serial side on an emulated device.
#[derive(Debug, Default)]
pub struct BoardServer {
    reader: LineReader,
    /// When the running application started, and the reset reason of that boot.
    boot: Option<(Duration, u32)>,
}

/// Whether the application runs (and so serves the port).
fn app_runs(os: &DeviceOs) -> bool {
    let s = os.status();
    s.powered && !s.sleeping && !s.safe_mode && s.versions.product_version.is_some()
}

impl BoardServer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes from the host: every complete request is carried out on `os` and answered.
    /// Returns the lines to write (without newlines).
    pub fn receive(&mut self, now: Duration, bytes: &[u8], os: &mut DeviceOs) -> Vec<String> {
        if !app_runs(os) {
            // The port is gone: what the host sent is lost, a partial line with it.
            self.reader = LineReader::new();
            return Vec::new();
        }
        self.reader.push(bytes);
        let mut out = Vec::new();
        while let Some(line) = self.reader.next_line() {
            let parsed = line.and_then(|(n, text)| {
                if text.trim().is_empty() {
                    Ok(None)
                } else {
                    Request::parse(n, &text).map(Some)
                }
            });
            match parsed {
                Ok(None) => {}
                Ok(Some(request)) => {
                    // The reply is written before the command runs: a reset or a sleep takes
                    // the port away.
                    let result = self.check(now, &request.command, os);
                    out.push(
                        BoardLine::Reply(Reply {
                            id: request.id,
                            result: result.clone(),
                        })
                        .to_line(),
                    );
                    if result.is_ok() {
                        self.carry_out(now, &request.command, os);
                    }
                }
                Err(e) => out.push(
                    BoardLine::Log(LogLine {
                        level: "error".into(),
                        category: "app.test".into(),
                        message: e.to_string(),
                    })
                    .to_line(),
                ),
            }
            if !app_runs(os) {
                self.reader = LineReader::new();
                break;
            }
        }
        out
    }

    /// The reply to `command` (computed before it runs).
    fn check(&self, now: Duration, command: &Command, os: &DeviceOs) -> Result<ReplyBody, String> {
        let s = os.status();
        let board = os.device().board();
        Ok(match command {
            Command::Hello => ReplyBody::Hello {
                version: PROTOCOL_VERSION,
                device_id: hex::encode(os.identity().device_id),
                platform_id: board.platform_id,
            },
            Command::Status => ReplyBody::Status(BoardStatus {
                online: s.connected,
                safe_mode: s.safe_mode,
                updates_enabled: s.flags.updates_enabled,
                updates_pending: s.flags.updates_pending,
                updates_forced: s.flags.updates_forced,
                reset_enabled: s.flags.reset_enabled,
                reset_pending: s.flags.reset_pending,
                update_status: s.update_status.code(),
                system_version: s.versions.system_part.unwrap_or(0),
                app: s.versions.product_version.unwrap_or(0),
                reset_reason: self.boot.map_or(0, |(_, r)| r),
                uptime_ms: self
                    .boot
                    .map_or(0, |(at, _)| now.saturating_sub(at).as_millis() as u64),
            }),
            Command::Modules => {
                let v = s.versions;
                let mut list = Vec::new();
                for (function, index, version) in [
                    ("bootloader", 0, v.bootloader),
                    ("system", 1, v.system_part),
                    ("user", 1, v.user_part),
                ] {
                    if let Some(version) = version {
                        list.push(ModuleInfo {
                            function: function.into(),
                            index,
                            version,
                            valid: true,
                        });
                    }
                }
                ReplyBody::Modules(list)
            }
            // The emulator installs no assets.
            Command::Assets => ReplyBody::Assets(Vec::new()),
            Command::Sleep {
                mode,
                duration_ms,
                network,
            } => {
                let config = sleep_config(*mode, *duration_ms, *network);
                if let Some(why) = config.refusal(board) {
                    return Err(format!("sleep refused: {why}"));
                }
                ReplyBody::Done
            }
            _ => ReplyBody::Done,
        })
    }

    fn carry_out(&mut self, now: Duration, command: &Command, os: &mut DeviceOs) {
        match command {
            Command::Updates { enabled: true } => os.enable_updates(now),
            Command::Updates { enabled: false } => os.disable_updates(now),
            Command::Resets { enabled: true } => os.enable_reset(now),
            Command::Resets { enabled: false } => os.disable_reset(now),
            // The emulated reset does not wait for the cloud either way.
            Command::Reset { .. } => os.system_reset(now),
            Command::Sleep {
                mode,
                duration_ms,
                network,
            } => {
                // Checked in `check`; a refusal here only logs on the device.
                let _ = os.sleep(now, sleep_config(*mode, *duration_ms, *network));
            }
            Command::Setup {
                updates_enabled,
                reset_enabled,
            } => {
                let mut app = os.app_behaviour();
                app.updates_enabled_at_boot = *updates_enabled;
                app.reset_enabled_at_boot = *reset_enabled;
                os.set_app_behaviour(app);
            }
            Command::Connect => os.particle_connect(now),
            Command::Disconnect => os.particle_disconnect(now),
            Command::Hello | Command::Status | Command::Modules | Command::Assets => {}
        }
    }

    /// The line the firmware prints for a device event, if any. Call it for every event, in
    /// order, while the device runs.
    pub fn device_event(
        &mut self,
        at: Duration,
        event: &DeviceEvent,
        os: &DeviceOs,
    ) -> Option<String> {
        let line = match event {
            DeviceEvent::Booted {
                reset_reason,
                versions,
                ..
            } => {
                let (Some(system), Some(app)) = (versions.system_part, versions.product_version)
                else {
                    self.boot = None;
                    return None;
                };
                self.boot = Some((at, *reset_reason));
                BoardLine::Boot(Boot {
                    version: PROTOCOL_VERSION,
                    reset_reason: *reset_reason,
                    device_id: hex::encode(os.identity().device_id),
                    platform_id: os.device().board().platform_id,
                    system_version: system,
                    app,
                })
            }
            DeviceEvent::SafeMode { .. } | DeviceEvent::PoweredOff => {
                self.boot = None;
                return None;
            }
            DeviceEvent::SystemEvent(e) => BoardLine::Event(match e {
                SystemEvent::FirmwareUpdate(p) => BoardEvent::FirmwareUpdate(match p {
                    FirmwareUpdateEvent::Begin => 0,
                    FirmwareUpdateEvent::Complete => 1,
                    FirmwareUpdateEvent::Progress => 2,
                    FirmwareUpdateEvent::Failed => -1,
                }),
                SystemEvent::FirmwareUpdatePending => BoardEvent::FirmwareUpdatePending,
                SystemEvent::FirmwareUpdateStatus(s) => BoardEvent::FirmwareUpdateStatus(s.code()),
                SystemEvent::ResetPending => BoardEvent::ResetPending,
                SystemEvent::Reset => BoardEvent::Reset,
            }),
            DeviceEvent::Connecting { .. } => BoardLine::Event(BoardEvent::CloudStatus(1)),
            DeviceEvent::Connected { .. } => BoardLine::Event(BoardEvent::CloudStatus(8)),
            DeviceEvent::Disconnected { .. } => BoardLine::Event(BoardEvent::CloudStatus(0)),
            DeviceEvent::OtaStarted { file_size, .. } => BoardLine::Log(LogLine {
                level: "info".into(),
                category: "comm.ota".into(),
                message: format!("Received UpdateStart request, file size {file_size}"),
            }),
            DeviceEvent::Log(text) => BoardLine::Log(LogLine {
                level: "info".into(),
                category: "system".into(),
                message: text.clone(),
            }),
            _ => return None,
        };
        if self.boot.is_none() || !app_runs(os) {
            return None;
        }
        Some(line.to_line())
    }
}

fn sleep_config(mode: SleepMode, duration_ms: Option<u64>, network: SleepNetwork) -> SleepConfig {
    SleepConfig {
        mode: match mode {
            SleepMode::Stop => OsSleepMode::Stop,
            SleepMode::UltraLowPower => OsSleepMode::UltraLowPower,
            SleepMode::Hibernate => OsSleepMode::Hibernate,
        },
        duration: duration_ms.map(Duration::from_millis),
        network: match network {
            SleepNetwork::Off => OsSleepNetwork::Off,
            SleepNetwork::Standby => OsSleepNetwork::Standby,
            SleepNetwork::InactiveStandby => OsSleepNetwork::InactiveStandby,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emulator::board::Board;
    use emulator::firmware::{FirmwareSet, ModuleSizes, Versions};
    use emulator::os::{AppBehaviour, Identity};
    use p256::ecdsa::SigningKey;
    use rand_chacha::rand_core::SeedableRng;

    fn os() -> DeviceOs {
        let board = Board::builtin("boron").unwrap();
        let (device, _) = FirmwareSet::new(&board, ModuleSizes::default(), 1)
            .provision(&Versions::BASELINE)
            .unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let identity = Identity {
            device_id: [7; 12],
            server_key: *SigningKey::random(&mut rng).verifying_key(),
            key: SigningKey::random(&mut rng),
        };
        let mut os = DeviceOs::new(identity, device, AppBehaviour::default(), 1);
        os.power_on(Duration::ZERO);
        os
    }

    fn boot(server: &mut BoardServer, os: &mut DeviceOs) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(e) = os.poll_event() {
            lines.extend(server.device_event(Duration::ZERO, &e, os));
        }
        lines
    }

    #[test]
    fn the_boot_line_names_the_reset_reason_and_versions() {
        let (mut server, mut os) = (BoardServer::new(), os());
        let lines = boot(&mut server, &mut os);
        let boot = lines
            .iter()
            .find_map(|l| match BoardLine::parse(1, l) {
                Ok(BoardLine::Boot(b)) => Some(b),
                _ => None,
            })
            .expect("a boot line");
        assert_eq!(
            (boot.reset_reason, boot.system_version, boot.app),
            (40, 6200, 3)
        );
    }

    #[test]
    fn a_bad_request_gets_a_located_error_and_the_next_one_is_served() {
        let (mut server, mut os) = (BoardServer::new(), os());
        boot(&mut server, &mut os);
        let out = server.receive(
            Duration::ZERO,
            b"{\"id\":1,\"cmd\":\"fly\"}\n{\"id\":2,\"cmd\":\"updates.disable\"}\n",
            &mut os,
        );
        assert_eq!(out.len(), 2, "{out:?}");
        match BoardLine::parse(1, &out[0]) {
            Ok(BoardLine::Log(l)) => {
                assert_eq!(l.level, "error");
                assert!(
                    l.message.contains("serial line 1, column 9"),
                    "{}",
                    l.message
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(!os.status().flags.updates_enabled);
    }

    #[test]
    fn a_request_split_across_reads_is_answered_once_whole() {
        let (mut server, mut os) = (BoardServer::new(), os());
        boot(&mut server, &mut os);
        assert!(server
            .receive(Duration::ZERO, b"{\"id\":3,\"cm", &mut os)
            .is_empty());
        let out = server.receive(Duration::ZERO, b"d\":\"status\"}\n", &mut os);
        match BoardLine::parse(1, &out[0]) {
            Ok(BoardLine::Reply(Reply {
                id: 3,
                result: Ok(ReplyBody::Status(s)),
            })) => assert_eq!((s.app, s.reset_reason), (3, 40)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nothing_is_served_while_the_device_is_off() {
        let (mut server, mut os) = (BoardServer::new(), os());
        boot(&mut server, &mut os);
        os.power_cut(Duration::ZERO);
        let out = server.receive(Duration::ZERO, b"{\"id\":4,\"cmd\":\"hello\"}\n", &mut os);
        assert!(out.is_empty());
    }
}
