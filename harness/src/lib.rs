//! Drives devices through OTA scenarios. For now: the power-cut sweep over the emulator.
