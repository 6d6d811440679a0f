//! Behaviours broken on purpose, so the test suite can prove that the fixtures covering a
//! behaviour fail without it (`harness/tests/mutations.rs`). Nothing sets one outside tests;
//! a device without one behaves as Device OS does.

/// One Device OS behaviour, deliberately broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mutation {
    /// UpdateStart is accepted while updates are disabled and not forced (Device OS answers
    /// -1380).
    IgnoreUpdatesDisabled,
    /// The OTA resume state never reaches flash (Device OS syncs it every 30 s and at a
    /// cancel), so a transfer cut by power loss restarts from zero.
    NoResumeStateSync,
    /// A committed update resets the device although the application disabled resets
    /// (Device OS waits for `System.enableReset()` or a reset of any kind).
    ResetIgnoresDisabled,
    /// `setup()` runs at boot in every system mode and thread setting, as if it were
    /// `STARTUP()` code (Device OS runs it after the cloud connection in non-threaded
    /// AUTOMATIC mode, so an update delivered at boot cannot be stopped there).
    SetupAtBoot,
}

impl Mutation {
    pub const ALL: [Mutation; 4] = [
        Mutation::IgnoreUpdatesDisabled,
        Mutation::NoResumeStateSync,
        Mutation::ResetIgnoresDisabled,
        Mutation::SetupAtBoot,
    ];
}
