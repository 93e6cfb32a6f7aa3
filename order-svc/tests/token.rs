//! `order-svc token --sub alice` prints a token the service itself accepts.
use order_svc::auth::{Authenticator, JwtConfig};

#[test]
fn the_token_command_mints_a_token_signed_with_the_dev_secret() {
    let dir = testkit::temp_dir("order-token-");
    let data = dir.path().join("data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_order-svc"))
        .args(["token", "--sub", "alice", "--ttl-secs", "120"])
        .env("ORDER_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut common = host::CommonConfig::local("order", 1, 2);
    common.data_dir = data;
    let auth = Authenticator::from_config(&JwtConfig::default(), &common).unwrap();
    assert_eq!(
        auth.verify(Some(&format!("Bearer {token}")))
            .unwrap()
            .user_id,
        "alice"
    );

    // A subject that is not an id is refused, and production mode refuses the dev secret.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_order-svc"))
        .args(["token", "--sub", "a b"])
        .env("ORDER_DATA_DIR", dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let prod = std::process::Command::new(env!("CARGO_BIN_EXE_order-svc"))
        .args(["token", "--sub", "alice"])
        .env("ORDER_DATA_DIR", dir.path().join("data"))
        .env("ORDER_PRODUCTION", "true")
        .output()
        .unwrap();
    assert!(!prod.status.success());
    assert!(String::from_utf8_lossy(&prod.stderr).contains("production"));

    // A token that would outlive what the service accepts is not minted.
    let long = std::process::Command::new(env!("CARGO_BIN_EXE_order-svc"))
        .args(["token", "--sub", "alice", "--ttl-secs", "172800"])
        .env("ORDER_DATA_DIR", dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!long.status.success());
    assert!(
        String::from_utf8_lossy(&long.stderr).contains("at most 24 h"),
        "{long:?}"
    );
}
