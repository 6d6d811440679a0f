//! Particle module binaries (reference section 4).
