//! An org: where it logs in, its Pub/Sub endpoint, and its credentials (the login flow,
//! inferred from what is given).

use secrecy::SecretString;

use super::file::{OrgSection, Secret};
use super::{ConfigError, OrgConfig, check_url, missing};
use crate::cli::AuthFlow;
use crate::salesforce::auth::Credentials;

pub(super) fn org_config(
    name: &str,
    org: OrgSection,
    prefix: &str,
) -> Result<OrgConfig, ConfigError> {
    let key = |k: &str| format!("{prefix}{k}");
    let pubsub_endpoint = match (&org.pubsub_endpoint, &org.grpc_host, org.grpc_port) {
        (Some(endpoint), _, _) => endpoint.clone(),
        (None, Some(host), port) => format!("https://{host}:{}", port.unwrap_or(7443)),
        (None, None, Some(port)) => format!("https://api.pubsub.salesforce.com:{port}"),
        (None, None, None) => org.pubsub_endpoint(),
    };
    check_url(
        &key("pubsub-endpoint"),
        &pubsub_endpoint,
        "https://api.pubsub.salesforce.com:7443",
    )?;
    let login_url = org.instance_url.clone().ok_or_else(|| {
        missing(
            key("instance-url"),
            if prefix.is_empty() {
                "pass --instance-url, set SALESFORCE_INSTANCE_URL, or set instance-url under [salesforce] (https://login.salesforce.com, https://test.salesforce.com or your My Domain URL)"
            } else {
                "set instance-url for this org (https://login.salesforce.com, https://test.salesforce.com or your My Domain URL)"
            },
        )
    })?;
    check_url(
        &key("instance-url"),
        &login_url,
        "https://login.salesforce.com",
    )?;
    let login_url = login_url.trim_end_matches('/').to_string();
    Ok(OrgConfig {
        name: name.to_string(),
        pubsub_endpoint,
        api_version: org.api_version(),
        credentials: credentials(&org, prefix, &login_url)?,
        login_url,
    })
}

fn credentials(
    org: &OrgSection,
    prefix: &str,
    login_url: &str,
) -> Result<Credentials, ConfigError> {
    let flow = org
        .auth
        .unwrap_or(match (&org.jwt_key_file, &org.client_id, &org.username) {
            (Some(_), _, _) => AuthFlow::JwtBearer,
            (None, Some(_), Some(_)) => AuthFlow::Password,
            (None, Some(_), None) => AuthFlow::ClientCredentials,
            (None, None, _) => AuthFlow::Soap,
        });
    let flags = prefix.is_empty();
    let key = |k: &str| format!("{prefix}{k}");
    let where_ = |flag: &str, env: &str, what: &str| {
        if flags {
            format!("pass --{flag} or set {env}{what}")
        } else {
            format!("set {prefix}{flag}, e.g. {{ env = \"{env}\" }}{what}")
        }
    };
    let text = |value: &Option<String>, k: &str, fix: String| {
        value
            .clone()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| missing(key(k), fix))
    };
    let secret = |value: &Option<Secret>, k: &str, fix: String| match value {
        Some(s) => s.resolve(&key(k)).and_then(|v| {
            if v.is_empty() {
                Err(missing(key(k), fix.clone()))
            } else {
                Ok(SecretString::from(v))
            }
        }),
        None => Err(missing(key(k), fix)),
    };
    let username = || {
        text(
            &org.username,
            "username",
            where_("username", "SALESFORCE_USERNAME", ""),
        )
    };
    let password = || {
        secret(
            &org.password,
            "password",
            where_(
                "password",
                "SALESFORCE_PASSWORD",
                " (password with the security token appended)",
            ),
        )
    };
    let client_id = || {
        text(
            &org.client_id,
            "client-id",
            where_(
                "client-id",
                "SALESFORCE_CLIENT_ID",
                " (the connected app's consumer key)",
            ),
        )
    };
    let client_secret = || {
        secret(
            &org.client_secret,
            "client-secret",
            where_(
                "client-secret",
                "SALESFORCE_CLIENT_SECRET",
                " (the connected app's consumer secret)",
            ),
        )
    };
    Ok(match flow {
        AuthFlow::Soap => Credentials::Soap {
            username: username()?,
            password: password()?,
        },
        AuthFlow::ClientCredentials => Credentials::ClientCredentials {
            client_id: client_id()?,
            client_secret: client_secret()?,
        },
        AuthFlow::Password => Credentials::Password {
            client_id: client_id()?,
            client_secret: client_secret()?,
            username: username()?,
            password: password()?,
        },
        AuthFlow::JwtBearer => {
            let path = org.jwt_key_file.as_ref().ok_or_else(|| {
                missing(
                    key("jwt-key-file"),
                    where_(
                        "jwt-key-file",
                        "SALESFORCE_JWT_KEY_FILE",
                        " (PEM RSA private key)",
                    ),
                )
            })?;
            let pem = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
                key: key("jwt-key-file"),
                path: path.display().to_string(),
                source,
            })?;
            Credentials::JwtBearer {
                client_id: client_id()?,
                username: username()?,
                private_key_pem: SecretString::from(pem),
                audience: org
                    .jwt_audience
                    .clone()
                    .unwrap_or_else(|| login_url.to_string()),
            }
        }
    })
}
