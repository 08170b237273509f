//! Every login flow against the simulator's HTTP login endpoints, and what a rejection says.

use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use sfzb_host::salesforce::auth::{AuthError, Authenticator, Credentials};
use sfzb_host::sim::login::Accounts;

use crate::support::*;

async fn sim_with(accounts: Accounts) -> sfzb_host::sim::Simulator {
    let mut config = sim_config(&["Account"], 5);
    config.accounts = accounts;
    start(config).await
}

fn accounts() -> Accounts {
    Accounts {
        users: vec![("ada@example.com".into(), "s3cret&TOKEN".into())],
        clients: vec![("app-id".into(), "app-secret".into())],
        jwt_public_key_pem: None,
    }
}

#[tokio::test]
async fn soap_login_yields_a_session_and_a_rejection_says_how_to_fix_it() {
    let sim = sim_with(accounts()).await;
    let ok = Authenticator::new(
        &sim.login_url(),
        "57.0",
        Credentials::Soap {
            username: "ada@example.com".into(),
            password: "s3cret&TOKEN".to_string().into(),
        },
    );
    let session = ok.login().await.unwrap();
    assert_eq!(session.org_id, sim.org().org_id);
    assert_eq!(session.instance_url, sim.login_url());
    let bad = Authenticator::new(
        &sim.login_url(),
        "57.0",
        Credentials::Soap {
            username: "ada@example.com".into(),
            password: "wrong".to_string().into(),
        },
    );
    let err = bad.login().await.unwrap_err();
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains("INVALID_LOGIN") && text.contains("security token"),
        "{text}"
    );
    assert!(
        !text.contains("wrong"),
        "the password never appears in errors"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn oauth_client_credentials_and_password_flows_read_the_org_from_userinfo() {
    let sim = sim_with(accounts()).await;
    let cc = Authenticator::new(
        &sim.login_url(),
        "57.0",
        Credentials::ClientCredentials {
            client_id: "app-id".into(),
            client_secret: "app-secret".to_string().into(),
        },
    );
    assert_eq!(cc.login().await.unwrap().org_id, sim.org().org_id);
    let password = Authenticator::new(
        &sim.login_url(),
        "57.0",
        Credentials::Password {
            client_id: "app-id".into(),
            client_secret: "app-secret".to_string().into(),
            username: "ada@example.com".into(),
            password: "s3cret&TOKEN".to_string().into(),
        },
    );
    assert_eq!(password.login().await.unwrap().org_id, sim.org().org_id);
    let bad = Authenticator::new(
        &sim.login_url(),
        "57.0",
        Credentials::ClientCredentials {
            client_id: "app-id".into(),
            client_secret: "nope".to_string().into(),
        },
    );
    assert!(matches!(
        bad.login().await.unwrap_err(),
        AuthError::Rejected { .. }
    ));
    sim.shutdown().await;
}

#[tokio::test]
async fn jwt_bearer_assertions_are_signed_with_the_key_file() {
    let mut rng = rand_core_rng();
    let key = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
    let private_pem = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let public_pem = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let other = rsa::RsaPrivateKey::new(&mut rng, 2048)
        .unwrap()
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap()
        .to_string();
    let sim = sim_with(Accounts {
        jwt_public_key_pem: Some(public_pem),
        ..accounts()
    })
    .await;
    let login = |pem: String| {
        Authenticator::new(
            &sim.login_url(),
            "57.0",
            Credentials::JwtBearer {
                client_id: "app-id".into(),
                username: "ada@example.com".into(),
                private_key_pem: pem.into(),
                audience: "https://login.salesforce.com".into(),
            },
        )
    };
    assert_eq!(
        login(private_pem).login().await.unwrap().org_id,
        sim.org().org_id
    );
    let err = login(other).login().await.unwrap_err().to_string();
    assert!(err.contains("invalid_grant"), "{err}");
    sim.shutdown().await;
}

fn rand_core_rng() -> rsa::rand_core::OsRng {
    rsa::rand_core::OsRng
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_rejected_credentials_stops_with_the_reason() {
    let sim = sim_with(accounts()).await;
    let dir = tempfile::tempdir().unwrap();
    let err = run(plan(
        &sim,
        dir.path(),
        "/data/AccountChangeEvent",
        &["--username", "ada@example.com", "--password", "bad"],
    ))
    .await
    .unwrap_err();
    assert_eq!(err.exit_code(), 1);
    assert!(err.to_string().contains("INVALID_LOGIN"), "{err}");
    sim.shutdown().await;
}
