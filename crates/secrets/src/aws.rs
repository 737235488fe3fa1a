//! `kind = "aws-secretsmanager"`: the AWS Secrets Manager JSON API
//! (`GetSecretValue`, `PutSecretValue`, `CreateSecret`), signed with AWS
//! Signature Version 4 (`pgdr-sigv4`). Each store has its own endpoint,
//! region and credentials, so a region's store can live in another account.
//! Secret names are `<prefix><cluster>/<role>`; Secrets Manager keeps the
//! previous value as the `AWSPREVIOUS` stage.

use std::time::Duration;

use async_trait::async_trait;
use pgdr_config::{Config, SecretStoreConfig, SecretStoreKind};
use serde_json::{Value, json};

use crate::store::{SecretStore, StoreError};
use crate::{SecretKey, SecretValue};

pub struct SecretsManager {
    /// The config key, for messages.
    name: String,
    endpoint: String,
    host: String,
    region: String,
    prefix: String,
    access_key: String,
    secret_key: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl std::fmt::Debug for SecretsManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl SecretsManager {
    /// Credentials: the store's `access_key_id`/`secret_access_key`, else
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`).
    pub fn from_config(cfg: &Config, store: &SecretStoreConfig) -> Result<SecretsManager, StoreError> {
        let SecretStoreKind::AwsSecretsManager { endpoint, aws_region, access_key_id, secret_access_key, prefix } =
            &store.kind
        else {
            return Err(StoreError::Config {
                store: store.key.clone(),
                detail: "not an aws-secretsmanager store".into(),
            });
        };
        let cfg_err = |detail: String| StoreError::Config { store: store.key.clone(), detail };
        let read = |s: &Option<pgdr_config::Secret>, field: &str, env: &str| -> Result<Option<String>, StoreError> {
            match s {
                Some(s) => cfg
                    .secret(&format!("{}.{field}", store.key), s)
                    .map(|r| Some(r.expose().to_owned()))
                    .map_err(|e| cfg_err(e.to_string())),
                None => Ok(std::env::var(env).ok().filter(|v| !v.is_empty())),
            }
        };
        let access_key = read(access_key_id, "access_key_id", "AWS_ACCESS_KEY_ID")?;
        let secret_key = read(secret_access_key, "secret_access_key", "AWS_SECRET_ACCESS_KEY")?;
        let (Some(access_key), Some(secret_key)) = (access_key, secret_key) else {
            return Err(cfg_err(
                "no credentials: set access_key_id and secret_access_key (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                    .into(),
            ));
        };
        let token = if access_key_id.is_none() {
            std::env::var("AWS_SESSION_TOKEN").ok().filter(|t| !t.is_empty())
        } else {
            None
        };
        let host =
            endpoint.split_once("://").map_or(endpoint.as_str(), |(_, h)| h).split('/').next().unwrap_or("").to_owned();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| cfg_err(format!("cannot build an HTTP client: {e}")))?;
        Ok(SecretsManager {
            name: store.key.clone(),
            endpoint: endpoint.clone(),
            host,
            region: aws_region.clone(),
            prefix: prefix.clone(),
            access_key,
            secret_key,
            token,
            client,
        })
    }

    /// The secret's name in Secrets Manager.
    pub fn secret_name(&self, key: &SecretKey) -> String {
        format!("{}{}/{}", self.prefix, key.cluster, key.role)
    }

    /// One API call: `Ok(Ok(body))` on 200, `Ok(Err((type, message)))` for
    /// an error the service answered with.
    async fn call(&self, action: &str, body: &Value) -> Result<Result<Value, (String, String)>, StoreError> {
        let body = serde_json::to_vec(body).map_err(|e| self.refused(e.to_string()))?;
        let now = chrono::Utc::now();
        let mut headers = vec![
            ("content-type".to_owned(), "application/x-amz-json-1.1".to_owned()),
            ("x-amz-target".to_owned(), format!("secretsmanager.{action}")),
        ];
        if let Some(t) = &self.token {
            headers.push(("x-amz-security-token".into(), t.clone()));
        }
        let auth = pgdr_sigv4::sign(
            &pgdr_sigv4::Signing {
                method: "POST",
                host: &self.host,
                uri: "/",
                query: "",
                region: &self.region,
                service: "secretsmanager",
                access_key: &self.access_key,
                secret_key: &self.secret_key,
                amz_date: &now.format("%Y%m%dT%H%M%SZ").to_string(),
            },
            &mut headers,
            &body,
        );
        let mut req = self.client.post(format!("{}/", self.endpoint)).header("authorization", auth).body(body);
        for (k, v) in &headers {
            if k != "host" {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        let res = req.send().await.map_err(|e| self.unreachable(format!("{action}: {e}")))?;
        let status = res.status();
        let text = res.text().await.map_err(|e| self.unreachable(format!("{action}: {e}")))?;
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(Ok(json));
        }
        if status.is_server_error() {
            return Err(self.unreachable(format!("{action}: HTTP {status}: {}", text.trim())));
        }
        let kind = json["__type"].as_str().unwrap_or_default();
        let kind = kind.rsplit('#').next().unwrap_or(kind).to_owned();
        let message = json["message"].as_str().or(json["Message"].as_str()).unwrap_or(text.trim()).to_owned();
        Ok(Err((if kind.is_empty() { format!("HTTP {status}") } else { kind }, message)))
    }

    fn unreachable(&self, detail: String) -> StoreError {
        StoreError::Unreachable { store: self.describe(), detail }
    }

    fn refused(&self, detail: String) -> StoreError {
        StoreError::Refused { store: self.describe(), detail }
    }
}

#[async_trait]
impl SecretStore for SecretsManager {
    fn describe(&self) -> String {
        format!("aws-secretsmanager store {} ({} {})", self.name, self.region, self.endpoint)
    }

    async fn get(&self, key: &SecretKey) -> Result<Option<SecretValue>, StoreError> {
        match self.call("GetSecretValue", &json!({ "SecretId": self.secret_name(key) })).await? {
            Ok(v) => {
                let s = v["SecretString"].as_str().unwrap_or_default();
                serde_json::from_str(s).map(Some).map_err(|e| StoreError::Corrupt {
                    store: self.describe(),
                    key: key.to_string(),
                    detail: e.to_string(),
                })
            }
            Err((kind, _)) if kind == "ResourceNotFoundException" => Ok(None),
            Err((kind, message)) => Err(self.refused(format!("GetSecretValue: {kind}: {message}"))),
        }
    }

    async fn put(&self, key: &SecretKey, value: &SecretValue) -> Result<(), StoreError> {
        let name = self.secret_name(key);
        let string = serde_json::to_string(value).map_err(|e| self.refused(e.to_string()))?;
        // The request token (32-64 characters) makes a retried put of the same
        // version idempotent.
        let token = format!("pgdr-version-{:024}", value.version);
        let put = json!({ "SecretId": name, "SecretString": string, "ClientRequestToken": token });
        match self.call("PutSecretValue", &put).await? {
            Ok(_) => Ok(()),
            Err((kind, _)) if kind == "ResourceNotFoundException" => {
                let create = json!({
                    "Name": name,
                    "SecretString": string,
                    "ClientRequestToken": token,
                    "Description": format!("pgdr: login for role {} of cluster {}", key.role, key.cluster),
                });
                match self.call("CreateSecret", &create).await? {
                    Ok(_) => Ok(()),
                    Err((kind, message)) => Err(self.refused(format!("CreateSecret: {kind}: {message}"))),
                }
            }
            Err((kind, message)) => Err(self.refused(format!("PutSecretValue: {kind}: {message}"))),
        }
    }
}
