//! Transport security and admin authorisation at the gRPC edge: the TLS (optionally mutual TLS)
//! settings of the gRPC port, their start-up checks, and the interceptor that guards the admin
//! services (`ModelAdmin`, `RiskAdmin`) with a bearer token or a verified client certificate.
//!
//! The checks and the TLS acceptor are built on the control path at start-up; the interceptor
//! runs on the tokio I/O threads, once per admin call (never on the tick path).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use crate::problem::{Kind, Problems};

/// Shortest admin token accepted (characters).
pub const MIN_TOKEN_LEN: usize = 24;

/// `[tls]`: TLS on the gRPC port (rustls). Unset `cert`/`key`: plaintext HTTP/2.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain of the server (leaf first).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// PEM CA certificates that client certificates must chain to (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: clients without a certificate may still connect (their admin calls
    /// then need the token). False: every client must present a valid certificate.
    pub client_auth_optional: bool,
}

impl TlsSection {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        self.cert.is_some() || self.key.is_some()
    }
}

/// `[admin]`: who may call the admin services.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSection {
    /// Bearer token admin calls must send (`authorization: Bearer <token>`); also
    /// `QUANTD_ADMIN_TOKEN` / `--admin-token`. At least 24 characters.
    pub token: Option<String>,
    /// File holding the token (a mounted secret), instead of `token`.
    pub token_file: Option<PathBuf>,
    /// A client certificate verified against `tls.client_ca` also authorises admin calls.
    pub allow_client_cert: bool,
    /// Also serve ModelAdmin and RiskAdmin on the service port (`listen`), on the data plane's
    /// runtime, where a saturated tick path delays them. Off: only on `admin_listen`.
    pub on_service_port: bool,
    /// Nice value of the `quantd-admin` thread (-20..=19; 0: unchanged). Negative values let a
    /// kill switch preempt busy threads on a saturated machine; they need CAP_SYS_NICE, and
    /// without it the thread keeps the default priority (logged).
    pub nice: i32,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self { token: None, token_file: None, allow_client_cert: true, on_service_port: false, nice: 0 }
    }
}

fn read(path: &Path, what: &str, problems: &mut Problems) -> Option<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| problems.push(what, Kind::Unreadable, format!("{what} {}: {e}", path.display())))
        .ok()
}

fn certs(pem: &[u8], path: &Path, what: &str, problems: &mut Problems) -> Vec<CertificateDer<'static>> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    match certs {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => {
            problems.push(what, Kind::Unreadable, format!("{what} {}: no PEM certificate in the file", path.display()));
            Vec::new()
        }
        Err(e) => {
            problems.push(
                what,
                Kind::Unreadable,
                format!("{what} {}: not a PEM certificate file ({e})", path.display()),
            );
            Vec::new()
        }
    }
}

/// Every problem with the TLS files: missing halves, unreadable or unparsable files, a key that
/// does not belong to the certificate, a client CA without server TLS.
pub fn tls_problems(t: &TlsSection) -> Problems {
    let mut p = Problems::new();
    match (&t.cert, &t.key) {
        (None, None) => {
            p.check(t.client_ca.is_some(), "tls.client_ca", Kind::Conflict, || {
                "tls.client_ca is set but TLS is off: set tls.cert and tls.key too".into()
            });
            return p;
        }
        (Some(_), None) => p.push("tls.key", Kind::Missing, "tls.cert is set without tls.key"),
        (None, Some(_)) => {
            p.push("tls.cert", Kind::Missing, "tls.key is set without tls.cert: TLS needs a certificate")
        }
        (Some(_), Some(_)) => {}
    }
    let chain = t.cert.as_deref().and_then(|c| Some((c, read(c, "tls.cert", &mut p)?)));
    let chain = chain.map(|(path, pem)| certs(&pem, path, "tls.cert", &mut p));
    let key = t.key.as_deref().and_then(|k| Some((k, read(k, "tls.key", &mut p)?))).and_then(|(path, pem)| {
        PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| {
                p.push("tls.key", Kind::Unreadable, format!("tls.key {}: not a PEM private key ({e})", path.display()))
            })
            .ok()
    });
    if let (Some(chain), Some(key)) = (chain.filter(|c| !c.is_empty()), key) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let check = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key).map_err(|e| e.to_string()));
        if let Err(e) = check {
            p.push("tls.key", Kind::Conflict, format!("tls.key does not fit tls.cert: {e}"));
        }
    }
    if let Some(ca) = &t.client_ca
        && let Some(pem) = read(ca, "tls.client_ca", &mut p)
    {
        certs(&pem, ca, "tls.client_ca", &mut p);
    }
    p
}

/// Every problem with the admin settings, given the addresses the admin services listen on and
/// the TLS.
pub fn admin_problems(a: &AdminSection, tls: &TlsSection, listen: impl IntoIterator<Item = SocketAddr>) -> Problems {
    let mut p = Problems::new();
    p.check(a.token.is_some() && a.token_file.is_some(), "admin.token_file", Kind::Conflict, || {
        "admin.token and admin.token_file are both set; choose one".into()
    });
    match resolve_token(a) {
        Ok(Some(t)) if t.chars().count() < MIN_TOKEN_LEN => p.push(
            "admin.token",
            Kind::OutOfRange,
            format!("admin token is {} characters; at least {MIN_TOKEN_LEN} are required", t.chars().count()),
        ),
        Ok(_) => {}
        Err(e) => p.push("admin.token_file", Kind::Unreadable, e),
    }
    p.check(!(-20..=19).contains(&a.nice), "admin.nice", Kind::OutOfRange, || {
        format!("admin.nice {} must be in -20..=19", a.nice)
    });
    let cert_auth = a.allow_client_cert && tls.client_ca.is_some();
    let token = a.token.is_some() || a.token_file.is_some();
    if let Some(listen) = listen.into_iter().find(|l| !l.ip().is_loopback())
        && !token
        && !cert_auth
    {
        p.push(
            "admin.token",
            Kind::Exposed,
            format!(
                "the admin services would be open to the network on {listen}: set admin.token, admin.token_file or \
                 QUANTD_ADMIN_TOKEN, or tls.client_ca with admin.allow_client_cert"
            ),
        );
    }
    p
}

/// The admin token from `token` or `token_file`, trimmed either way (a token of spaces is
/// then too short, and refused).
pub fn resolve_token(a: &AdminSection) -> Result<Option<String>, String> {
    if let Some(t) = &a.token {
        return Ok(Some(t.trim().to_owned()));
    }
    let Some(path) = &a.token_file else { return Ok(None) };
    std::fs::read_to_string(path)
        .map(|s| Some(s.trim().to_owned()))
        .map_err(|e| format!("admin.token_file {}: {e}", path.display()))
}

/// tonic's TLS settings for a validated section (`None`: plaintext).
pub fn server_tls(t: &TlsSection) -> Result<Option<ServerTlsConfig>, String> {
    let (Some(cert), Some(key)) = (&t.cert, &t.key) else { return Ok(None) };
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &t.client_ca {
        cfg = cfg.client_ca_root(Certificate::from_pem(read(ca)?)).client_auth_optional(t.client_auth_optional);
    }
    Ok(Some(cfg))
}

/// Guards the admin services: a call passes with the bearer token, or with a client
/// certificate the TLS layer verified against the client CA (when allowed). With neither
/// configured (only accepted for a loopback listener) every call passes.
#[derive(Clone)]
pub struct AdminAuth {
    token: Option<Arc<[u8]>>,
    allow_client_cert: bool,
}

impl AdminAuth {
    /// From a validated config.
    pub fn new(a: &AdminSection, tls: &TlsSection) -> Result<Self, String> {
        let token = resolve_token(a)?.map(|t| Arc::from(t.into_bytes().into_boxed_slice()));
        Ok(Self { token, allow_client_cert: a.allow_client_cert && tls.client_ca.is_some() })
    }

    /// Whether any authorisation is enforced.
    pub fn enforced(&self) -> bool {
        self.token.is_some() || self.allow_client_cert
    }

    fn authorised<T>(&self, req: &Request<T>) -> bool {
        if !self.enforced() {
            return true;
        }
        if self.allow_client_cert && req.peer_certs().is_some_and(|c| !c.is_empty()) {
            return true;
        }
        let Some(token) = &self.token else { return false };
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::as_bytes);
        presented.is_some_and(|p| bool::from(p.ct_eq(token)))
    }
}

impl tonic::service::Interceptor for AdminAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if self.authorised(&req) {
            return Ok(req);
        }
        tracing::warn!(peer = ?req.remote_addr(), "admin call refused: no valid token or client certificate");
        Err(Status::unauthenticated(
            "admin calls need `authorization: Bearer <token>` or a client certificate signed by the configured CA",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    }

    #[test]
    fn token_must_match_exactly() {
        let token = "x".repeat(MIN_TOKEN_LEN);
        let admin = AdminSection { token: Some(token.clone()), ..Default::default() };
        let auth = AdminAuth::new(&admin, &TlsSection::default()).unwrap();
        assert!(auth.authorised(&req(Some(&format!("Bearer {token}")))));
        for bad in [None, Some("Bearer"), Some("Bearer xxx"), Some(token.as_str()), Some("Basic abc")] {
            assert!(!auth.authorised(&req(bad)), "{bad:?}");
        }
        let open = AdminAuth::new(&AdminSection::default(), &TlsSection::default()).unwrap();
        assert!(!open.enforced() && open.authorised(&req(None)));
    }

    #[test]
    fn every_admin_problem_is_listed() {
        let public: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let none = AdminSection::default();
        assert!(admin_problems(&none, &TlsSection::default(), [loopback]).is_empty());
        let open = admin_problems(&none, &TlsSection::default(), [loopback, public]);
        assert!(open.has("admin.token", Kind::Exposed), "{open:?}");
        let short =
            AdminSection { token: Some("short".into()), token_file: Some("/nonexistent".into()), nice: 40, ..none };
        let p = admin_problems(&short, &TlsSection::default(), [public]);
        assert!(p.has("admin.token_file", Kind::Conflict), "{p:?}");
        assert!(p.has("admin.token", Kind::OutOfRange), "{p:?}");
        assert!(p.has("admin.nice", Kind::OutOfRange), "{p:?}");
        assert!(!p.has("admin.token", Kind::Exposed), "a token is set: {p:?}");
        // A token of spaces is trimmed like the token file, and then too short.
        let blank = AdminSection { token: Some(" ".repeat(30)), ..AdminSection::default() };
        assert!(admin_problems(&blank, &TlsSection::default(), [loopback]).has("admin.token", Kind::OutOfRange));
        let padded =
            AdminSection { token: Some(format!("  {}\n", "t".repeat(MIN_TOKEN_LEN))), ..AdminSection::default() };
        let auth = AdminAuth::new(&padded, &TlsSection::default()).unwrap();
        assert!(auth.authorised(&req(Some(&format!("Bearer {}", "t".repeat(MIN_TOKEN_LEN))))));
    }

    #[test]
    fn tls_halves_and_missing_files_are_reported() {
        let missing = TlsSection { cert: Some("/nonexistent/cert.pem".into()), ..Default::default() };
        let p = tls_problems(&missing);
        assert!(p.has("tls.key", Kind::Missing) && p.has("tls.cert", Kind::Unreadable), "{p:?}");
        assert!(p.iter().any(|m| m.detail.contains("/nonexistent/cert.pem")), "{p:?}");
        let ca_only = TlsSection { client_ca: Some("/x".into()), ..Default::default() };
        assert!(tls_problems(&ca_only).has("tls.client_ca", Kind::Conflict));
    }
}
