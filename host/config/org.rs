//! An org: where it logs in, its Pub/Sub endpoint, its credentials (the login flow,
//! inferred from what is given), and the settings of its transforms.

use secrecy::SecretString;

use super::file::{OrgSection, Secret, setting_text};
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
    let mut transform_config = Vec::new();
    for (transform, settings) in org.transform_config.iter().flatten() {
        for (setting, value) in settings {
            let value = setting_text(
                &key(&format!("transform-config.{transform}.{setting}")),
                value,
            )?;
            transform_config.push((transform.clone(), setting.clone(), value));
        }
    }
    Ok(OrgConfig {
        name: name.to_string(),
        pubsub_endpoint,
        api_version: org.api_version(),
        credentials: credentials(&org, prefix, &login_url)?,
        login_url,
        transform_config,
    })
}

/// The org's credentials for its login flow: `auth`, else inferred from what is given.
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
    let given = Given { org, prefix };
    Ok(match flow {
        AuthFlow::Soap => Credentials::Soap {
            username: given.username()?,
            password: given.password()?,
        },
        AuthFlow::ClientCredentials => Credentials::ClientCredentials {
            client_id: given.client_id()?,
            client_secret: given.client_secret()?,
        },
        AuthFlow::Password => Credentials::Password {
            client_id: given.client_id()?,
            client_secret: given.client_secret()?,
            username: given.username()?,
            password: given.password()?,
        },
        AuthFlow::JwtBearer => Credentials::JwtBearer {
            client_id: given.client_id()?,
            username: given.username()?,
            private_key_pem: given.jwt_key()?,
            audience: org
                .jwt_audience
                .clone()
                .unwrap_or_else(|| login_url.to_string()),
        },
    })
}

/// The credentials an org's section gives; a missing one is an error saying where to put
/// it: a flag or its environment variable for the default org, a key for `[orgs.NAME]`.
struct Given<'a> {
    org: &'a OrgSection,
    /// `orgs.NAME.`, or empty for the flags and `[salesforce]`.
    prefix: &'a str,
}

impl Given<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    fn missing(&self, k: &str, env: &str, what: &str) -> ConfigError {
        let fix = if self.prefix.is_empty() {
            format!("pass --{k} or set {env}{what}")
        } else {
            format!("set {}{k}, e.g. {{ env = \"{env}\" }}{what}", self.prefix)
        };
        missing(self.key(k), fix)
    }

    fn text(
        &self,
        value: &Option<String>,
        k: &str,
        env: &str,
        what: &str,
    ) -> Result<String, ConfigError> {
        value
            .clone()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| self.missing(k, env, what))
    }

    fn secret(
        &self,
        value: &Option<Secret>,
        k: &str,
        env: &str,
        what: &str,
    ) -> Result<SecretString, ConfigError> {
        let value = value.as_ref().ok_or_else(|| self.missing(k, env, what))?;
        match value.resolve(&self.key(k))? {
            v if v.is_empty() => Err(self.missing(k, env, what)),
            v => Ok(SecretString::from(v)),
        }
    }

    fn username(&self) -> Result<String, ConfigError> {
        self.text(&self.org.username, "username", "SALESFORCE_USERNAME", "")
    }

    fn password(&self) -> Result<SecretString, ConfigError> {
        let what = " (password with the security token appended)";
        self.secret(&self.org.password, "password", "SALESFORCE_PASSWORD", what)
    }

    fn client_id(&self) -> Result<String, ConfigError> {
        let what = " (the connected app's consumer key)";
        self.text(
            &self.org.client_id,
            "client-id",
            "SALESFORCE_CLIENT_ID",
            what,
        )
    }

    fn client_secret(&self) -> Result<SecretString, ConfigError> {
        let what = " (the connected app's consumer secret)";
        self.secret(
            &self.org.client_secret,
            "client-secret",
            "SALESFORCE_CLIENT_SECRET",
            what,
        )
    }

    fn jwt_key(&self) -> Result<SecretString, ConfigError> {
        let k = "jwt-key-file";
        let path =
            self.org.jwt_key_file.as_ref().ok_or_else(|| {
                self.missing(k, "SALESFORCE_JWT_KEY_FILE", " (PEM RSA private key)")
            })?;
        let pem = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
            key: self.key(k),
            path: path.display().to_string(),
            source,
        })?;
        Ok(SecretString::from(pem))
    }
}
