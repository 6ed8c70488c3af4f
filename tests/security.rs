//! TLS, mutual TLS, admin authorisation and signed models against a real server on port 0 with
//! the real default model. Certificates are made per test with rcgen (a CA, a server certificate
//! for localhost, client certificates from the CA and from an unrelated CA).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use quantd::config::Config;
use quantd::proto::model_admin_client::ModelAdminClient;
use quantd::proto::risk_admin_client::RiskAdminClient;
use quantd::proto::signal_service_client::SignalServiceClient;
use quantd::proto::{GetRiskRequest, ListModelsRequest};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const TOKEN: &str = "test-admin-token-0123456789abcdef";

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Ca { pem, issuer: Issuer::new(params, key) }
}

/// (certificate PEM, key PEM) signed by `ca`.
fn leaf(ca: &Ca, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.extended_key_usages.push(usage);
    let key = KeyPair::generate().unwrap();
    (params.signed_by(&key, &ca.issuer).unwrap().pem(), key.serialize_pem())
}

struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    fn new() -> Self {
        let p = Self { dir: tempfile::tempdir().unwrap(), ca: ca() };
        let (cert, key) = leaf(&p.ca, &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
        p.write("server.pem", &cert);
        p.write("server.key", &key);
        p.write("ca.pem", &p.ca.pem.clone());
        p
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self, mutual: bool, optional: bool) -> Config {
        let mut c = test_config();
        c.tls.cert = Some(self.path("server.pem"));
        c.tls.key = Some(self.path("server.key"));
        if mutual {
            c.tls.client_ca = Some(self.path("ca.pem"));
            c.tls.client_auth_optional = optional;
        }
        c.validate().expect("valid TLS config");
        c
    }

    /// A TLS channel to the service port that trusts the test CA, optionally presenting a
    /// client identity.
    async fn channel(
        &self,
        server: &quantd::server::Server,
        identity: Option<(String, String)>,
    ) -> Result<Channel, String> {
        self.channel_to(server.addr().port(), identity).await
    }

    /// The same to the admin listener (same TLS).
    async fn admin(&self, server: &quantd::server::Server, identity: Option<(String, String)>) -> Channel {
        self.channel_to(server.admin_addr().port(), identity).await.expect("admin TLS channel")
    }

    async fn channel_to(&self, port: u16, identity: Option<(String, String)>) -> Result<Channel, String> {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca.pem)).domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Channel::from_shared(format!("https://localhost:{port}"))
            .unwrap()
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))
    }
}

async fn predict_ok(channel: Channel) -> Result<(), tonic::Status> {
    let mut c = SignalServiceClient::new(channel);
    let tick = recorded(&[BTC_QUOTES], 1).remove(0);
    c.predict(tick).await.map(|_| ())
}

const BTC_QUOTES: &str = "binance_usdm_btcusdt_20240808_quotes.csv.gz";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_plaintext_and_serves_tls_clients() {
    let pki = Pki::new();
    let server = start(&pki.config(false, false)).await;
    // A plaintext HTTP/2 client gets no answer from a TLS port.
    let plain = async {
        let ch = Channel::from_shared(format!("http://{}", server.addr()))
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        predict_ok(ch).await.map_err(|e| e.to_string())
    };
    let plain = tokio::time::timeout(std::time::Duration::from_secs(5), plain).await;
    assert!(!matches!(plain, Ok(Ok(()))), "plaintext client was served by a TLS server");
    // A client that trusts the CA is served.
    predict_ok(pki.channel(&server, None).await.unwrap()).await.unwrap();
    // One that trusts another CA refuses the server.
    let other = ca();
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&other.pem)).domain_name("localhost");
    let wrong = Channel::from_shared(format!("https://localhost:{}", server.addr().port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await;
    assert!(wrong.is_err(), "a server certificate from an untrusted CA was accepted");
    server.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_missing_and_foreign_client_certificates() {
    let pki = Pki::new();
    let server = start(&pki.config(true, false)).await;
    let good = leaf(&pki.ca, &["trader-gateway"], ExtendedKeyUsagePurpose::ClientAuth);
    let foreign = leaf(&ca(), &["intruder"], ExtendedKeyUsagePurpose::ClientAuth);

    let ch = pki.channel(&server, Some(good.clone())).await.unwrap();
    predict_ok(ch).await.unwrap();
    // A verified client certificate also authorises the admin services (no token configured),
    // on the admin listener, which speaks the same TLS.
    let admin = pki.admin(&server, Some(good)).await;
    ModelAdminClient::new(admin.clone()).list_models(ListModelsRequest {}).await.unwrap();
    RiskAdminClient::new(admin).get_risk(GetRiskRequest::default()).await.unwrap();

    for (what, identity) in [("no client certificate", None), ("a certificate from another CA", Some(foreign))] {
        let served = match pki.channel(&server, identity).await {
            Ok(ch) => predict_ok(ch).await.is_ok(),
            Err(_) => false,
        };
        assert!(!served, "client with {what} was served");
    }
    server.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_needs_the_token_or_a_client_certificate() {
    let pki = Pki::new();
    let mut config = pki.config(true, true);
    config.admin.token = Some(TOKEN.into());
    config.validate().unwrap();
    let server = start(&config).await;
    // Optional client auth: ticks flow without a certificate ...
    predict_ok(pki.channel(&server, None).await.unwrap()).await.unwrap();
    // ... but admin calls need the token.
    let anonymous = pki.admin(&server, None).await;
    let err = ModelAdminClient::new(anonymous.clone()).list_models(ListModelsRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let err = RiskAdminClient::new(anonymous.clone()).get_risk(GetRiskRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let with = |token: &str| {
        let mut r = tonic::Request::new(ListModelsRequest {});
        r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    };
    let err = ModelAdminClient::new(anonymous.clone()).list_models(with("wrong-token-0123456789abcdef")).await;
    assert_eq!(err.unwrap_err().code(), tonic::Code::Unauthenticated);
    ModelAdminClient::new(anonymous).list_models(with(TOKEN)).await.unwrap();
    let cert = leaf(&pki.ca, &["ops"], ExtendedKeyUsagePurpose::ClientAuth);
    ModelAdminClient::new(pki.admin(&server, Some(cert)).await).list_models(ListModelsRequest {}).await.unwrap();
    server.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_admin_token() {
    let mut config = test_config();
    config.admin.token = Some(TOKEN.into());
    let server = start(&config).await;
    let mut admin = ModelAdminClient::connect(format!("http://{}", server.admin_addr())).await.unwrap();
    assert_eq!(admin.list_models(ListModelsRequest {}).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let mut r = tonic::Request::new(ListModelsRequest {});
    r.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    assert!(!admin.list_models(r).await.unwrap().into_inner().models.is_empty());
    // The tick path needs no token.
    let mut c = client(&server).await;
    c.predict(recorded(&[BTC_QUOTES], 1).remove(0)).await.unwrap();
    server.shutdown(std::time::Duration::from_secs(1)).await;
}

#[test]
fn bad_security_settings_are_start_up_errors_listing_every_problem() {
    let pki = Pki::new();
    let other = leaf(&ca(), &["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    let other_key = pki.write("other.key", &other.1);
    let garbage = pki.write("garbage.pem", "not a certificate\n");
    let mut c = test_config();
    c.listen = "0.0.0.0:0".parse().unwrap();
    c.tls.cert = Some(pki.path("server.pem"));
    c.tls.key = Some(other_key);
    c.tls.client_ca = Some(garbage);
    c.admin.token = Some("short".into());
    c.model_public_key = Some("/nonexistent/model.pub".into());
    let err = c.validate().unwrap_err().to_string();
    for needle in ["tls.key does not fit tls.cert", "tls.client_ca", "at least 24", "model_public_key"] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }

    let mut c = test_config();
    c.listen = "0.0.0.0:0".parse().unwrap();
    c.tls.key = Some(pki.path("server.key"));
    c.tls.client_ca = Some("/nonexistent/ca.pem".into());
    let err = c.validate().unwrap_err().to_string();
    for needle in ["without tls.cert", "/nonexistent/ca.pem"] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }

    // The admin services open to the network without authorisation: on a public admin listener,
    // or on a public service port that also serves them.
    let mut c = test_config();
    c.admin_listen = "0.0.0.0:0".parse().unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("open to the network on 0.0.0.0:0"), "{err}");
    let mut c = test_config();
    c.listen = "0.0.0.0:0".parse().unwrap();
    c.validate().expect("a public tick port with the admin services on loopback needs no token");
    c.admin.on_service_port = true;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("open to the network"), "{err}");

    let mut c = test_config();
    c.tls.cert = Some("/nonexistent/server.pem".into());
    c.tls.key = Some("/nonexistent/server.key".into());
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("/nonexistent/server.pem") && err.contains("/nonexistent/server.key"), "{err}");
}

fn copy_default_model(models: &Path) -> PathBuf {
    let dst = models.join("quantd-mlp/1");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["model.onnx", "manifest.toml", "verify.npy"] {
        std::fs::copy(repo().join("models/quantd-mlp/1").join(f), dst.join(f)).unwrap();
    }
    dst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_models_only_when_a_key_is_set() {
    use quantd::model::signing;
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = signing::generate(&keys.path().join("models")).unwrap();
    let key = signing::read_signing_key(&secret).unwrap();
    let models = tempfile::tempdir().unwrap();
    let v1 = copy_default_model(models.path());
    let mut config = test_config();
    config.models_dir = models.path().to_owned();
    config.model_public_key = Some(public);
    config.registry.watch = false;

    // Unsigned: refused at start-up.
    let err = quantd::server::Server::start(&config.server_config().unwrap())
        .await
        .err()
        .expect("unsigned model refused")
        .to_string();
    assert!(err.contains("unsigned"), "{err}");
    // Signed, then the manifest tampered with (a looser golden tolerance): refused.
    signing::sign(&v1, &key).unwrap();
    let manifest = std::fs::read_to_string(v1.join("manifest.toml")).unwrap();
    std::fs::write(v1.join("manifest.toml"), manifest.replacen("golden_tolerance = ", "golden_tolerance = 1", 1))
        .unwrap();
    let err = quantd::server::Server::start(&config.server_config().unwrap())
        .await
        .err()
        .expect("tampered manifest refused")
        .to_string();
    assert!(err.contains("not a valid signature"), "{err}");
    // The original, signed: served.
    std::fs::write(v1.join("manifest.toml"), &manifest).unwrap();
    let server = start(&config).await;
    let mut c = client(&server).await;
    c.predict(recorded(&[BTC_QUOTES], 1).remove(0)).await.unwrap();

    // A new version with a validly signed manifest but a swapped model file: the sha256 check
    // refuses it and version 1 keeps serving.
    let v2 = models.path().join("quantd-mlp/2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(v2.join("manifest.toml"), manifest.replacen("version = \"1\"", "version = \"2\"", 1)).unwrap();
    std::fs::write(
        v2.join("model.onnx"),
        std::fs::read(repo().join("tests/fixtures/nan_on_wide_spread.onnx")).unwrap(),
    )
    .unwrap();
    signing::sign(&v2, &key).unwrap();
    let mut admin = ModelAdminClient::connect(format!("http://{}", server.admin_addr())).await.unwrap();
    let err = admin
        .load_model(quantd::proto::LoadModelRequest {
            name: "quantd-mlp".into(),
            version: "2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("sha256"), "{err}");
    assert_eq!(server.registry().active("").await.unwrap().active.unwrap().version, "1");
    c.predict(recorded(&[BTC_QUOTES], 1).remove(0)).await.unwrap();
    server.shutdown(std::time::Duration::from_secs(1)).await;
}
