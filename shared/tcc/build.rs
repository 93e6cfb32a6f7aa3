//! `sqlx::migrate!` embeds ./migrations at compile time but cannot tell cargo to watch the
//! folder: without this, a new migration file is silently left out of the binary.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
