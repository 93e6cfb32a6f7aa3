//! Hosting for a service process (filled in with the participant services).
