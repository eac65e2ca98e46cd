//! TLS to PostgreSQL, as libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey` ask for it.
//!
//! tokio-postgres knows only `sslmode=disable|prefer|require` and refuses libpq's other TLS
//! parameters, so [`TlsSettings::take_from`] takes them out of the database URL, and
//! [`TlsSettings::connector`] builds the rustls configuration they describe. What each mode
//! does is libpq's:
//!
//! | `sslmode` | encrypted | the server's certificate |
//! |---|---|---|
//! | `disable` | never | not asked for |
//! | `prefer` (the default) | when the server offers it | not checked, unless `sslrootcert` is given: then it must chain to it |
//! | `require` | always | the same |
//! | `verify-ca` | always | must chain to `sslrootcert` (by default the system's trust store) |
//! | `verify-full` | always | the same, and must name the host connected to |
//!
//! Unlike libpq, a `verify-*` mode without `sslrootcert` trusts the system's store rather than
//! `~/.postgresql/root.crt`: a service has no home directory worth reading.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode as DriverMode;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::conninfo::{
    decode, is_url, key_value_pairs, quoted, split_query, unread_environment, with_environment,
};

/// The URL parameters this module takes; tokio-postgres gets the rest.
const TLS_PARAMETERS: [&str; 9] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslsni",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "sslcompression",
    "gssencmode",
];

/// libpq's other TLS parameters Herald does not support, and what to do instead (refused by
/// name, where tokio-postgres would call them unknown).
const UNSUPPORTED: [(&str, &str); 5] = [
    (
        "sslpassword",
        "Herald reads only unencrypted keys: decrypt it once (openssl pkey -in key.pem -out \
         plain.pem) and let only Herald's user read the copy",
    ),
    ("sslcrl", "revocation lists are not checked"),
    ("sslcrldir", "revocation lists are not checked"),
    (
        "sslcertmode",
        "a client certificate is sent when sslcert and sslkey are given",
    ),
    ("sslkeylogfile", "TLS keys are never written out"),
];

/// The driver's configuration for `url`, completed by libpq's environment variables, and the
/// connector for its TLS settings.
pub(crate) fn connection(url: &str) -> Result<(tokio_postgres::Config, DatabaseTls), String> {
    connection_with(url, |name| std::env::var(name).ok())
}

/// [`connection`], with the environment read through `env`.
fn connection_with(
    url: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(tokio_postgres::Config, DatabaseTls), String> {
    // Another database's URL would fail deep in the driver's parser ("unexpected EOF").
    if let Some((scheme, _)) = url.split_once("://")
        && !matches!(
            scheme.to_ascii_lowercase().as_str(),
            "postgres" | "postgresql"
        )
    {
        return Err(format!(
            "'{scheme}://' is not a database Herald can use: give a PostgreSQL URL \
             (postgres://user@host:port/database), or leave the URL unset for the embedded \
             database"
        ));
    }
    for said in unread_environment(&env) {
        tracing::warn!("{said}");
    }
    let (url, from_environment) = with_environment(url, &env);
    // A value from the environment is not in the URL the reader will look at: say where.
    let blame = |said: String| {
        if from_environment.is_empty() {
            said
        } else {
            format!(
                "{said} (the URL as completed from the environment's {})",
                from_environment.join(", ")
            )
        }
    };
    let (rest, tls) = TlsSettings::take_from(&url).map_err(blame)?;
    let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| {
        blame(format!(
            "the database URL is not valid ({}); expected postgres://user@host:port/database",
            herald_core::error_chain(&e)
        ))
    })?;
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        return Err(
            "the database URL names no host: give postgres://user@host:port/database, or set \
             PGHOST (libpq's variables fill what the URL leaves out)"
                .into(),
        );
    }
    // The driver found an `sslmode` that was not taken out: the two read the string apart.
    // Going on would replace it with ours, the default, which may be weaker.
    if config.get_ssl_mode() != DriverMode::Prefer {
        return Err(
            "the database URL gives sslmode where Herald could not read it: check its \
             quoting, and percent-encode a ? or @ in the password (%3F, %40)"
                .into(),
        );
    }
    config.ssl_mode(tls.driver_mode());
    // With only an address, TLS has no name to give the server: the address serves, except
    // where the name is what is checked.
    if config.get_hosts().is_empty() && tls.mode != SslMode::Disable {
        if tls.mode == SslMode::VerifyFull && !config.get_hostaddrs().is_empty() {
            return Err(
                "sslmode=verify-full checks the server's name: give host=<the name on \
                 its certificate> beside hostaddr"
                    .into(),
            );
        }
        for address in config.get_hostaddrs().to_vec() {
            config.host(address.to_string());
        }
    }
    let mut connector = tls.connector()?;
    connector.direct =
        config.get_ssl_negotiation() == tokio_postgres::config::SslNegotiation::Direct;
    Ok((config, connector))
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    const ALL: [Self; 5] = [
        Self::Disable,
        Self::Prefer,
        Self::Require,
        Self::VerifyCa,
        Self::VerifyFull,
    ];

    /// Its name in a URL.
    fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<Self, String> {
        if let Some(mode) = Self::ALL.into_iter().find(|m| m.name() == value) {
            return Ok(mode);
        }
        match value {
            "allow" => Err(
                "sslmode=allow is not supported: use sslmode=prefer (TLS when the \
                 server offers it) or sslmode=disable"
                    .into(),
            ),
            other => Err(format!(
                "sslmode={other} is not a TLS mode: use disable, prefer, require, verify-ca or \
                 verify-full"
            )),
        }
    }

    /// What tokio-postgres is told: whether to ask for TLS, and whether to insist.
    fn for_driver(self) -> DriverMode {
        match self {
            Self::Disable => DriverMode::Disable,
            Self::Prefer => DriverMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => DriverMode::Require,
        }
    }
}

/// What the server's certificate is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Nothing but the handshake's own signature: encryption against a passive listener only.
    Nothing,
    /// That it chains to a trusted root.
    Chain,
    /// That, and that it names the host connected to.
    ChainAndName,
}

/// The TLS part of a database URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    pub(crate) mode: SslMode,
    /// A PEM file of trusted roots, or `system` for the system's store.
    root_cert: Option<String>,
    /// A PEM certificate (chain) and its key, for servers that ask for one.
    client_cert: Option<String>,
    client_key: Option<String>,
    /// Whether `sslmode` was given (`sslrootcert=system` alone means `verify-full`).
    mode_given: bool,
    /// `sslsni=0` turns off naming the host in the handshake.
    no_sni: bool,
    /// `ssl_min_protocol_version=TLSv1.3`: TLS 1.3 only.
    min_tls13: bool,
    /// `ssl_max_protocol_version=TLSv1.2`: TLS 1.2 only.
    max_tls12: bool,
}

impl TlsSettings {
    /// Splits `url` (a `postgres://` URL or libpq's `key=value` form) into the TLS settings and
    /// what is left for tokio-postgres. A `key=value` string this cannot read goes through
    /// unchanged, so that tokio-postgres says what is wrong with it.
    pub(crate) fn take_from(url: &str) -> Result<(String, Self), String> {
        let mut settings = Self::default();
        let rest = if is_url(url) {
            let (base, query) = split_query(url);
            let mut kept = Vec::new();
            for part in query
                .unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
            {
                let (key, value) = part.split_once('=').unwrap_or((part, ""));
                let key = decode(key)?;
                refuse_unsupported(&key)?;
                if TLS_PARAMETERS.contains(&key.as_str()) {
                    settings.set(&key, decode(value)?)?;
                } else {
                    kept.push(part);
                }
            }
            if kept.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", kept.join("&"))
            }
        } else {
            let Some(pairs) = key_value_pairs(url) else {
                return Ok((url.to_owned(), settings));
            };
            let mut kept = Vec::new();
            for (key, value) in pairs {
                refuse_unsupported(&key)?;
                if TLS_PARAMETERS.contains(&key.as_str()) {
                    settings.set(&key, value)?;
                } else {
                    kept.push(format!("{key}={}", quoted(&value)));
                }
            }
            kept.join(" ")
        };
        // As libpq 16: trusting the public roots implies checking the name.
        if settings.root_cert.as_deref() == Some("system") && !settings.mode_given {
            settings.mode = SslMode::VerifyFull;
        }
        settings.check_consistent()?;
        Ok((rest, settings))
    }

    fn set(&mut self, key: &str, value: String) -> Result<(), String> {
        match key {
            "sslmode" => {
                self.mode = SslMode::parse(&value)?;
                self.mode_given = true;
            }
            "sslrootcert" => self.root_cert = Some(value).filter(|v| !v.is_empty()),
            "sslcert" => self.client_cert = Some(value).filter(|v| !v.is_empty()),
            "sslkey" => self.client_key = Some(value).filter(|v| !v.is_empty()),
            "sslsni" => self.no_sni = value == "0",
            "ssl_min_protocol_version" => self.min_tls13 = names_tls13(key, &value)? == Some(true),
            "ssl_max_protocol_version" => self.max_tls12 = names_tls13(key, &value)? == Some(false),
            // libpq ignores it unless OpenSSL allows compression, which it no longer does.
            "sslcompression" => {}
            "gssencmode" if value == "require" => {
                return Err(
                    "gssencmode=require: Herald does not speak GSSAPI encryption; \
                     use TLS (sslmode=verify-full) instead"
                        .into(),
                );
            }
            // `disable`, or `prefer`, which libpq too falls back from without Kerberos.
            "gssencmode" => {}
            _ => unreachable!("only TLS_PARAMETERS are set"),
        }
        Ok(())
    }

    /// The TLS versions the settings allow.
    fn versions(&self) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
        let mut versions = Vec::new();
        if !self.min_tls13 {
            versions.push(&rustls::version::TLS12);
        }
        if !self.max_tls12 {
            versions.push(&rustls::version::TLS13);
        }
        if versions.is_empty() {
            return Err(
                "ssl_min_protocol_version=TLSv1.3 and ssl_max_protocol_version=TLSv1.2 \
                 leave no TLS version to speak"
                    .into(),
            );
        }
        Ok(versions)
    }

    fn check_consistent(&self) -> Result<(), String> {
        if self.root_cert.as_deref() == Some("system") && self.mode != SslMode::VerifyFull {
            // As libpq: the public roots trust anyone's certificate for some name.
            return Err(
                "sslrootcert=system needs sslmode=verify-full: any certificate a public \
                 authority signed would pass without its host name checked"
                    .into(),
            );
        }
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => Err("sslcert is given without sslkey: give both, the client \
                                    certificate and its private key (PEM files)"
                .into()),
            (None, Some(_)) => Err("sslkey is given without sslcert: give both, the client \
                                    certificate and its private key (PEM files)"
                .into()),
            _ => Ok(()),
        }
    }

    /// What tokio-postgres is told to do.
    pub(crate) fn driver_mode(&self) -> DriverMode {
        self.mode.for_driver()
    }

    fn check(&self) -> Check {
        match self.mode {
            SslMode::VerifyFull => Check::ChainAndName,
            SslMode::VerifyCa => Check::Chain,
            // As libpq: a root certificate given is used whatever the mode.
            _ if self.root_cert.is_some() => Check::Chain,
            _ => Check::Nothing,
        }
    }

    /// The connector for these settings, with its files read now: a missing or unreadable one
    /// stops the start, not the first connection. It reads them again when they change.
    pub(crate) fn connector(&self) -> Result<DatabaseTls, String> {
        let seen = self.stamps();
        let (connect, roots) = self.build()?;
        Ok(DatabaseTls {
            direct: false,
            shared: Arc::new(Reloading {
                settings: self.clone(),
                loaded: std::sync::Mutex::new(Loaded {
                    connect,
                    roots,
                    seen,
                }),
            }),
        })
    }

    /// The files these settings read (the system's store is not watched).
    fn files(&self) -> impl Iterator<Item = &str> {
        let roots = self.root_cert.as_deref().filter(|path| *path != "system");
        roots
            .into_iter()
            .chain(self.client_cert.as_deref())
            .chain(self.client_key.as_deref())
    }

    /// What the files look like now.
    fn stamps(&self) -> Vec<FileStamp> {
        self.files().map(FileStamp::of).collect()
    }

    /// The rustls connector for these settings, and where its trusted roots came from.
    fn build(&self) -> Result<(MakeRustlsConnect, Arc<str>), String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let check = self.check();
        let (roots, source) = match check {
            Check::Nothing => (None, None),
            Check::Chain | Check::ChainAndName => {
                let (roots, source) = self.roots()?;
                (Some(Arc::new(roots)), Some(source))
            }
        };
        let verifier = DatabaseCertVerifier {
            check,
            roots,
            provider: provider.clone(),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&self.versions()?)
            .map_err(|e| format!("TLS to the database cannot be set up: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let chain = read_certificates(cert, "sslcert")?;
                let private = read_private_key(key)?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| match e {
                        rustls::Error::InconsistentKeys(_) => {
                            format!("sslkey {key} is not the private key of sslcert {cert}")
                        }
                        e => format!("sslcert {cert} with sslkey {key}: {e}"),
                    })?
            }
            _ => builder.with_no_client_auth(),
        };
        config.enable_sni = !self.no_sni;
        // What libpq 17 offers, and what PostgreSQL 17 asks for when TLS comes first
        // (`sslnegotiation=direct`); older servers pass over it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok((
            MakeRustlsConnect::new(config),
            source.unwrap_or_default().into(),
        ))
    }

    /// The trusted roots, and how to name where they came from in an error.
    fn roots(&self) -> Result<(RootCertStore, String), String> {
        let mut roots = RootCertStore::empty();
        match self.root_cert.as_deref() {
            Some(path) if path != "system" => {
                let certs = read_certificates(path, "sslrootcert")?;
                let (_, unusable) = roots.add_parsable_certificates(certs);
                if roots.is_empty() {
                    return Err(format!(
                        "sslrootcert {path}: none of its {unusable} certificates can be a root"
                    ));
                }
                Ok((roots, format!("sslrootcert {path}")))
            }
            _ => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    let why: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                    return Err(format!(
                        "sslmode={} checks the database server's certificate, and this system's \
                         trust store has no certificates{}: give the CA that signed it with \
                         sslrootcert=/path/to/ca.pem",
                        self.mode.name(),
                        if why.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", why.join("; "))
                        }
                    ));
                }
                Ok((roots, "the system's trust store".into()))
            }
        }
    }
}

/// Says what to do instead of a libpq parameter Herald does not support.
fn refuse_unsupported(key: &str) -> Result<(), String> {
    match UNSUPPORTED.iter().find(|(name, _)| *name == key) {
        Some((name, instead)) => Err(format!("{name} is not supported: {instead}")),
        None => Ok(()),
    }
}

/// What a `ssl_{min,max}_protocol_version` value names: TLS 1.3 (`Some(true)`), TLS 1.2
/// (`Some(false)`), or no bound (`None`, empty, as in libpq). Herald speaks 1.2 and 1.3 only:
/// an older minimum is 1.2, an older maximum leaves nothing to speak.
fn names_tls13(key: &str, value: &str) -> Result<Option<bool>, String> {
    match value {
        "" => Ok(None),
        "TLSv1.3" => Ok(Some(true)),
        "TLSv1.2" => Ok(Some(false)),
        "TLSv1" | "TLSv1.1" if key == "ssl_min_protocol_version" => Ok(Some(false)),
        "TLSv1" | "TLSv1.1" => Err(format!(
            "{key}={value}: Herald speaks TLS 1.2 and 1.3 only; TLS 1.0 and 1.1 are not safe"
        )),
        _ => Err(format!(
            "{key}={value} is not a TLS version: use TLSv1.2 or TLSv1.3"
        )),
    }
}

fn read_private_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let text = std::fs::read(path).map_err(|e| format!("sslkey {path}: cannot read it ({e})"))?;
    let says = |marker: &[u8]| text.windows(marker.len()).any(|w| w == marker);
    // PKCS#8's encrypted form, and OpenSSL's older one (a header in the PEM block).
    if says(b"ENCRYPTED PRIVATE KEY") || says(b"Proc-Type: 4,ENCRYPTED") {
        return Err(format!(
            "sslkey {path} is encrypted, and Herald cannot ask for its passphrase: decrypt it \
             once (openssl pkey -in {path} -out plain.pem) and let only Herald's user read the copy"
        ));
    }
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| {
        format!(
            "sslkey {path}: cannot read a private key from it ({e}; expected PEM: PRIVATE KEY, \
             RSA PRIVATE KEY or EC PRIVATE KEY)"
        )
    })
}

fn read_certificates(path: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{what} {path}: cannot read PEM certificates from it ({e})"))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {path}: holds no certificate (expected PEM, -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certs)
}

/// The connector of the pool and the listener: tokio-postgres-rustls's, with a certificate
/// that did not pass explained in terms of the URL's parameters. Clones share one connector,
/// built again from the files when one of them has changed since it was read, so that a
/// renewed certificate (a short-lived client certificate, a rotated CA) serves from the next
/// connection on without a restart.
#[derive(Clone)]
pub(crate) struct DatabaseTls {
    shared: Arc<Reloading>,
    /// Whether TLS starts at once (`sslnegotiation=direct`), which servers before PostgreSQL
    /// 17 answer by closing the connection.
    direct: bool,
}

struct Reloading {
    settings: TlsSettings,
    loaded: std::sync::Mutex<Loaded>,
}

/// The connector last built, and the files as they were when it was (or as they were when
/// they last could not be used: a change half made is tried again once it changes again).
struct Loaded {
    connect: MakeRustlsConnect,
    /// Where the trusted roots came from (empty when none are checked against).
    roots: Arc<str>,
    seen: Vec<FileStamp>,
}

/// What tells a file apart from the one it replaced: its inode (certificate managers and
/// Kubernetes replace files by renaming), its length and when it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp(Option<(u64, u64, std::time::SystemTime)>);

impl FileStamp {
    fn of(path: &str) -> Self {
        use std::os::unix::fs::MetadataExt;
        // Following links, as reading the file does.
        Self(
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.ino(), m.len(), m.modified().ok()?))),
        )
    }
}

impl Reloading {
    /// The connector for the next connection: the one built before unless a file changed and
    /// can be read. A file that cannot be read (yet) is said once, and the connection is
    /// tried with what was read before, which may still be good.
    fn current(&self) -> (MakeRustlsConnect, Arc<str>) {
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = self.settings.stamps();
        if now != loaded.seen {
            match self.settings.build() {
                Ok((connect, roots)) => {
                    tracing::info!(
                        files = %self.settings.files().collect::<Vec<_>>().join(", "),
                        "read the database's TLS files again: they changed"
                    );
                    *loaded = Loaded {
                        connect,
                        roots,
                        seen: now,
                    };
                }
                Err(error) => {
                    tracing::warn!(%error, "the database's TLS files changed and cannot be used: connecting with what was read before, until they change again");
                    loaded.seen = now;
                }
            }
        }
        (loaded.connect.clone(), loaded.roots.clone())
    }
}

impl<S> MakeTlsConnect<S> for DatabaseTls
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = Explaining<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, host: &str) -> Result<Self::TlsConnect, Self::Error> {
        let (mut connect, roots) = self.shared.current();
        Ok(Explaining {
            inner: MakeTlsConnect::<S>::make_tls_connect(&mut connect, host)?,
            host: host.to_owned(),
            roots,
            direct: self.direct,
        })
    }
}

/// One handshake of [`DatabaseTls`].
pub(crate) struct Explaining<T> {
    inner: T,
    host: String,
    roots: Arc<str>,
    direct: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, T> TlsConnect<S> for Explaining<T>
where
    T: TlsConnect<S>,
    T::Future: Send + 'static,
    T::Stream: 'static,
{
    type Stream = T::Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<T::Stream, BoxError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let Self {
            inner,
            host,
            roots,
            direct,
        } = self;
        let handshake = inner.connect(stream);
        Box::pin(async move {
            handshake
                .await
                .map_err(|e| explain(e.into(), &host, &roots, direct))
        })
    }
}

/// A failed handshake, with what to change when the server's certificate did not pass or the
/// two sides share no TLS.
fn explain(error: BoxError, host: &str, roots: &str, direct: bool) -> BoxError {
    let closed = error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof);
    if direct && closed {
        let hint = "the database server closed the connection when TLS started at once: servers \
                    before PostgreSQL 17 do not take sslnegotiation=direct; remove it"
            .to_owned();
        return Box::new(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            Explained { hint, error },
        ));
    }
    let rejected = error
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let hint = match rejected {
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => format!(
            "sslmode=verify-full checks that the certificate is made out to the host connected \
             to, {host}: connect by a name the certificate carries (hostaddr= can give the \
             address beside it), or, if you trust everything its CA signs, use sslmode=verify-ca"
        ),
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => format!(
            "no root in {roots} signed it: give the CA that did with sslrootcert=/path/to/ca.pem"
        ),
        Some(rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => "renew the database server's certificate, or check this machine's clock".into(),
        // No TLS both sides speak. libpq's `prefer` would go on in the clear; Herald does not
        // lower what was asked for by itself.
        Some(
            rustls::Error::PeerIncompatible(_)
            | rustls::Error::AlertReceived(
                rustls::AlertDescription::HandshakeFailure
                | rustls::AlertDescription::ProtocolVersion
                | rustls::AlertDescription::InsufficientSecurity,
            ),
        ) => "the database server and Herald share no TLS version or cipher (Herald speaks TLS \
              1.2 and 1.3, with ECDHE and AES-GCM or ChaCha20): update the server's TLS \
              settings (ssl_min_protocol_version, ssl_ciphers), or, on a network you trust, \
              use sslmode=disable"
            .into(),
        _ => return error,
    };
    // Still an I/O error, as the handshake's was: the store counts the database unavailable.
    let kind = error
        .downcast_ref::<std::io::Error>()
        .map_or(std::io::ErrorKind::InvalidData, std::io::Error::kind);
    Box::new(std::io::Error::new(kind, Explained { hint, error }))
}

/// What to do when the server refused this side's part of TLS, found in `error`'s causes: an
/// alert about a client certificate, which arrives on the first read after the handshake
/// (TLS 1.3 checks it then), so only the connection's error carries it.
pub(crate) fn client_certificate_refused(
    error: &(dyn std::error::Error + 'static),
) -> Option<String> {
    use rustls::AlertDescription as Alert;
    let mut cause = Some(error);
    while let Some(e) = cause {
        let alert = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::AlertReceived(alert)) = alert {
            return matches!(
                alert,
                Alert::CertificateRequired
                    | Alert::UnknownCA
                    | Alert::BadCertificate
                    | Alert::CertificateUnknown
                    | Alert::CertificateExpired
                    | Alert::CertificateRevoked
                    | Alert::UnsupportedCertificate
                    | Alert::AccessDenied
            )
            .then(|| {
                "the database server did not take this connection's client certificate (or \
                 wants one): give one signed by a CA in its ssl_ca_file, with sslcert and sslkey"
                    .to_owned()
            });
        }
        cause = e.source();
    }
    None
}

/// What to do when the server offers no TLS to a mode that insists on it. tokio-postgres says
/// so in a message of its own, with nothing typed to recognize but its words.
pub(crate) fn server_without_tls(error: &tokio_postgres::Error) -> Option<String> {
    herald_core::error_chain(error)
        .contains("server does not support TLS")
        .then(|| {
            "the database server offers no TLS (ssl = off there, or something in between \
             answers for it): turn ssl on in postgresql.conf, or, on a network you trust, use \
             sslmode=prefer or disable"
                .to_owned()
        })
}

/// A handshake error and what to do about it, said in one line.
#[derive(Debug)]
struct Explained {
    hint: String,
    error: BoxError,
}

impl std::fmt::Display for Explained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; {}", self.error, self.hint)
    }
}

impl std::error::Error for Explained {}

/// Checks the database server's certificate as far as `check` asks.
#[derive(Debug)]
struct DatabaseCertVerifier {
    check: Check,
    /// The roots to check the chain against, unless nothing is checked.
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for DatabaseCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        // Each check by itself, so that verify-ca's leaving out the name does not rest on the
        // order of checks inside a verifier.
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if self.check == Check::ChainAndName {
            verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn taken(url: &str) -> (String, TlsSettings) {
        TlsSettings::take_from(url).unwrap()
    }

    #[test]
    fn the_tls_parameters_are_taken_out_of_a_url_and_the_rest_kept() {
        let (rest, tls) = taken(
            "postgres://herald:pw@db:5433/herald?sslmode=verify-full&application_name=a%20b\
             &sslrootcert=%2Fetc%2Fherald%2Fca.pem&sslcert=/c.pem&sslkey=/c.key",
        );
        assert_eq!(
            rest,
            "postgres://herald:pw@db:5433/herald?application_name=a%20b"
        );
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some("/etc/herald/ca.pem"));
        assert_eq!(tls.client_cert.as_deref(), Some("/c.pem"));
        assert_eq!(tls.client_key.as_deref(), Some("/c.key"));
        assert_eq!(tls.check(), Check::ChainAndName);
        let config = tokio_postgres::Config::from_str(&rest).unwrap();
        assert_eq!(config.get_application_name(), Some("a b"));

        // libpq's other parameters that make sense here are taken, the rest stays.
        let (rest, tls) = taken(
            "postgres://db/h?sslsni=0&sslcompression=0&gssencmode=disable\
             &ssl_min_protocol_version=TLSv1.3&connect_timeout=5",
        );
        assert_eq!(rest, "postgres://db/h?connect_timeout=5");
        assert!(tls.no_sni);
        assert_eq!(tls.versions().unwrap(), vec![&rustls::version::TLS13]);
        let (_, tls) = taken("postgres://db/h?ssl_max_protocol_version=TLSv1.2");
        assert_eq!(tls.versions().unwrap(), vec![&rustls::version::TLS12]);
        assert_eq!(TlsSettings::default().versions().unwrap().len(), 2);
        // An older minimum is what Herald speaks at least; an empty bound is none.
        let (_, tls) =
            taken("postgres://db/h?ssl_min_protocol_version=TLSv1&ssl_max_protocol_version=");
        assert_eq!(tls.versions().unwrap().len(), 2);

        let plain = "postgresql://herald@db/herald";
        let (rest, tls) = taken(plain);
        assert_eq!(rest, plain);
        assert_eq!(tls, TlsSettings::default());
        assert_eq!(tls.driver_mode(), DriverMode::Prefer);
        assert_eq!(tls.check(), Check::Nothing);
        assert_eq!(
            taken("postgres://db/h?sslmode=disable").0,
            "postgres://db/h"
        );
    }

    #[test]
    fn the_tls_parameters_are_taken_out_of_the_key_value_form() {
        let (rest, tls) = taken(
            "host=db dbname='my \\'db\\'' sslmode = require  sslrootcert='/a b/ca.pem' user=h\\ x",
        );
        assert_eq!(tls.mode, SslMode::Require);
        assert_eq!(tls.root_cert.as_deref(), Some("/a b/ca.pem"));
        // A root certificate given is checked whatever the mode, as libpq does.
        assert_eq!(tls.check(), Check::Chain);
        let config = tokio_postgres::Config::from_str(&rest).unwrap();
        assert_eq!(config.get_dbname(), Some("my 'db'"));
        assert_eq!(config.get_user(), Some("h x"));
        // What cannot be read goes through for tokio-postgres to say what is wrong.
        let (rest, tls) = taken("host=db dbname='unterminated");
        assert_eq!(rest, "host=db dbname='unterminated");
        assert_eq!(tls, TlsSettings::default());
    }

    #[test]
    fn a_connection_can_come_from_libpqs_variables_alone() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.to_string())
            }
        };
        let (config, _) = connection_with(
            "postgres://",
            env(&[
                ("PGHOST", "db.internal"),
                ("PGPORT", "5433"),
                ("PGUSER", "herald"),
                ("PGPASSWORD", "p@ss w/rd?"),
                ("PGDATABASE", "events"),
                ("PGSSLMODE", "require"),
            ]),
        )
        .unwrap();
        assert_eq!(
            config.get_hosts(),
            [tokio_postgres::config::Host::Tcp("db.internal".into())]
        );
        assert_eq!(config.get_ports(), [5433]);
        assert_eq!(config.get_user(), Some("herald"));
        assert_eq!(config.get_password(), Some(&b"p@ss w/rd?"[..]));
        assert_eq!(config.get_dbname(), Some("events"));
        assert_eq!(config.get_ssl_mode(), DriverMode::Require);
        let said = connection_with("postgres://u@/db", env(&[])).err().unwrap();
        assert!(
            said.contains("names no host") && said.contains("PGHOST"),
            "{said}"
        );
        // A value the environment gave that cannot serve is traced to it.
        let said = connection_with("postgres://db/h", env(&[("PGPORT", "five")]))
            .err()
            .unwrap();
        assert!(said.contains("`port`") && said.contains("PGPORT"), "{said}");
        let said = connection_with("postgres://db/h", env(&[("PGSSLMODE", "on")]))
            .err()
            .unwrap();
        assert!(
            said.contains("sslmode=on") && said.contains("PGSSLMODE"),
            "{said}"
        );
    }

    #[test]
    fn tls_parameters_that_cannot_work_are_refused_saying_what_to_do() {
        let refused = |url: &str| TlsSettings::take_from(url).unwrap_err();
        assert!(refused("postgres://db/h?sslmode=allow").contains("sslmode=prefer"));
        assert!(refused("postgres://db/h?sslmode=on").contains("verify-full"));
        assert!(
            refused("postgres://db/h?sslmode=verify-ca&sslrootcert=system")
                .contains("needs sslmode=verify-full")
        );
        assert!(refused("postgres://db/h?sslcert=/c.pem").contains("without sslkey"));
        assert!(refused("sslkey=/c.key host=db").contains("without sslcert"));
        let (_, tls) = taken("postgres://db/h?sslmode=verify-full&sslrootcert=system");
        assert!(tls.connector().is_ok());
        // As libpq 16: the system's roots alone mean verify-full.
        assert_eq!(
            taken("postgres://db/h?sslrootcert=system").1.mode,
            SslMode::VerifyFull
        );
        // A string the two read apart is refused rather than weakened: the driver finds
        // sslmode=require after a backslash that this reading cannot follow.
        let said = connection("host=db sslmode=require password=abc\\")
            .err()
            .unwrap();
        assert!(said.contains("could not read it"), "{said}");
        // A `?` in the password is the password's, as the driver reads it.
        let (config, _) = connection("postgres://u:p?x@db/h?sslmode=require").unwrap();
        assert_eq!(config.get_ssl_mode(), DriverMode::Require);
        assert_eq!(config.get_password(), Some(&b"p?x"[..]));
        assert!(refused("postgres://db/h?sslpassword=x").contains("openssl pkey"));
        assert!(refused("sslcrl=/crl.pem host=db").contains("sslcrl is not supported"));
        assert!(refused("postgres://db/h?gssencmode=require").contains("GSSAPI"));
        assert!(
            refused("postgres://db/h?ssl_max_protocol_version=TLSv1.1")
                .contains("1.2 and 1.3 only")
        );
        assert!(refused("postgres://db/h?ssl_min_protocol_version=1.3").contains("TLSv1.3"));
        let (_, tls) = taken(
            "postgres://db/h?ssl_min_protocol_version=TLSv1.3&ssl_max_protocol_version=TLSv1.2",
        );
        assert!(tls.connector().err().unwrap().contains("no TLS version"));

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let url = format!(
            "postgres://db/h?sslmode=verify-ca&sslrootcert={}",
            missing.display()
        );
        let said = taken(&url).1.connector().err().unwrap();
        assert!(
            said.contains("sslrootcert") && said.contains("missing.pem"),
            "{said}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let url = format!("postgres://db/h?sslrootcert={}", empty.display());
        let said = taken(&url).1.connector().err().unwrap();
        assert!(said.contains("holds no certificate"), "{said}");
    }

    /// The test server's host and port, and its user, from `HERALD_TEST_DATABASE_URL`.
    fn test_server() -> Option<(String, u16, String, String)> {
        let url = std::env::var("HERALD_TEST_DATABASE_URL").ok()?;
        let config = tokio_postgres::Config::from_str(&url).unwrap();
        let host = match &config.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(host) => host.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(_) => panic!("the TLS tests need a TCP host"),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres").to_owned();
        let dbname = config.get_dbname().unwrap_or("postgres").to_owned();
        Some((host, port, user, dbname))
    }

    /// Connects as `url` says and answers whether the connection is encrypted.
    async fn encrypted(url: &str) -> Result<bool, String> {
        Ok(negotiated(url).await?.is_some())
    }

    /// Connects as `url` says and answers the TLS version the server sees, if any.
    async fn negotiated(url: &str) -> Result<Option<String>, String> {
        let (config, tls) = connection(url)?;
        let (client, connection) = config
            .connect(tls)
            .await
            .map_err(|e| herald_core::error_chain(&e))?;
        tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(row.get(0))
    }

    /// Against the test server, which must have TLS on (Debian's default, with its snakeoil
    /// certificate for `localhost`). Skipped without `HERALD_TEST_DATABASE_URL`.
    #[tokio::test]
    async fn each_sslmode_connects_to_a_real_server_as_libpq_would() {
        let Some((host, port, user, db)) = test_server() else {
            return;
        };
        use std::net::ToSocketAddrs;
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .unwrap()
            .find(|a| a.is_ipv4())
            .expect("the test server has an IPv4 address")
            .ip();
        let by_addr = |query: &str| format!("postgres://{user}@{addr}:{port}/{db}?{query}");
        let (client, connection) = tokio_postgres::connect(&by_addr(""), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let shown = |name: &str| {
            let client = &client;
            let sql = format!("SHOW {name}");
            async move {
                client
                    .query_one(&sql, &[])
                    .await
                    .unwrap()
                    .get::<_, String>(0)
            }
        };
        assert_eq!(
            shown("ssl").await,
            "on",
            "these tests need the test server to offer TLS (ssl = on)"
        );
        // The server's own certificate, self-signed, serves as the root to trust; it is
        // reached by the name it is made out to, at the server's address.
        let cert = shown("ssl_cert_file").await;
        let root = format!("sslrootcert={cert}");
        let name = certificate_name(std::path::Path::new(&cert));
        let by_name =
            |query: &str| format!("postgres://{user}@{name}:{port}/{db}?hostaddr={addr}&{query}");
        // Roots that did not sign it.
        let dir = tempfile::tempdir().unwrap();
        openssl(
            dir.path(),
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout other.key \
             -out other.pem -subj /CN=Other-CA -days 2",
        );
        let others = format!("sslrootcert={}", dir.path().join("other.pem").display());

        assert_eq!(encrypted(&by_addr("")).await, Ok(true), "prefer");
        assert_eq!(encrypted(&by_addr("sslmode=disable")).await, Ok(false));
        assert_eq!(encrypted(&by_addr("sslmode=require")).await, Ok(true));
        let only = |version: &str| Ok(Some(version.to_owned()));
        assert_eq!(
            negotiated(&by_addr("ssl_min_protocol_version=TLSv1.3")).await,
            only("TLSv1.3")
        );
        assert_eq!(
            negotiated(&by_addr("ssl_max_protocol_version=TLSv1.2")).await,
            only("TLSv1.2")
        );
        assert_eq!(
            encrypted(&by_name(&format!("sslmode=verify-full&{root}"))).await,
            Ok(true)
        );
        assert_eq!(
            encrypted(&by_addr(&format!("sslmode=verify-ca&{root}"))).await,
            Ok(true)
        );
        // Only an address: it serves as the name for TLS, unless the name is checked.
        let addressed = format!("hostaddr={addr} port={port} user={user} dbname={db}");
        assert_eq!(encrypted(&addressed).await, Ok(true));
        let said = encrypted(&format!("{addressed} sslmode=verify-full {}", root))
            .await
            .unwrap_err();
        assert!(
            said.contains("give host=<the name on its certificate>"),
            "{said}"
        );

        let said = encrypted(&by_addr(&format!("sslmode=verify-full&{root}")))
            .await
            .unwrap_err();
        assert!(
            said.contains(&format!("certificate not valid for name \"{addr}\""))
                && said.contains(&format!("made out to the host connected to, {addr}"))
                && said.contains("use sslmode=verify-ca"),
            "{said}"
        );
        // Whatever the name, verify-ca checks the chain.
        let said = encrypted(&by_addr(&format!("sslmode=verify-ca&{others}")))
            .await
            .unwrap_err();
        assert!(said.contains("UnknownIssuer"), "{said}");
        let said = encrypted(&by_name(&format!("sslmode=verify-full&{others}")))
            .await
            .unwrap_err();
        assert!(
            said.contains("UnknownIssuer")
                && said.contains("no root in sslrootcert")
                && said.contains("other.pem signed it")
                && said.contains("sslrootcert=/path/to/ca.pem"),
            "{said}"
        );
        // A root given is checked in require mode too, as libpq does.
        let said = encrypted(&by_addr(&format!("sslmode=require&{others}")))
            .await
            .unwrap_err();
        assert!(said.contains("no root in sslrootcert"), "{said}");
        // TLS at once (PostgreSQL 17's direct negotiation): an older server closes the
        // connection, and what to change is said.
        let version: i32 = shown("server_version_num").await.parse().unwrap();
        let direct = encrypted(&by_addr("sslmode=require&sslnegotiation=direct")).await;
        if version >= 170_000 {
            assert_eq!(direct, Ok(true));
        } else {
            let said = direct.unwrap_err();
            assert!(
                said.contains("do not take sslnegotiation=direct; remove it"),
                "{said}"
            );
        }

        // The store counts a certificate that does not pass as the database being away (a
        // 503 to try again, as for a changed password), and says why.
        let url = by_addr(&format!("sslmode=verify-full&{root}"));
        let said = store_unavailable(&url).await;
        assert!(said.contains("use sslmode=verify-ca"), "{said}");
        let store = store_for(&url);
        // Events that cannot be stored for it: the readiness check (which answers anyone)
        // says the database is away, not that it was slow; the caller, which logs, hears why.
        use herald_core::store::{IngestItem, Store};
        let org = herald_core::OrgId::generate();
        let raw = serde_json::json!({"id": "e1", "type": "user.created", "data": {}});
        let now = herald_core::Clock::now(&herald_core::SystemClock);
        let event = herald_core::event::NewEvent::parse(raw)
            .unwrap()
            .into_event(org.clone(), now);
        let item = IngestItem {
            event: Arc::new(event),
            deliveries: Vec::new(),
        };
        let stored = store.insert_events(&org, &[item], now, now).await;
        let trouble = store.write_trouble().expect("the failed store is reported");
        assert!(
            trouble.contains("storing events failed moments ago: the database is unavailable")
                && !trouble.contains("in time"),
            "{trouble}"
        );
        let said = herald_core::error_chain(&stored.unwrap_err());
        assert!(
            said.contains("if you trust everything its CA signs"),
            "{said}"
        );
    }

    fn store_for(url: &str) -> crate::postgres::PostgresStore {
        crate::postgres::PostgresStore::new(
            url,
            crate::postgres::PostgresOptions::default(),
            crate::cipher::SecretCipher::none(),
        )
        .unwrap()
    }

    /// What a store on `url` says when it cannot reach the database (within 10 s): that it is
    /// away, and why.
    async fn store_unavailable(url: &str) -> String {
        let bounded = std::time::Duration::from_secs(10);
        match tokio::time::timeout(bounded, store_for(url).migrate()).await {
            Ok(Err(herald_core::store::StoreError::Unavailable(e))) => {
                herald_core::error_chain(&*e)
            }
            other => panic!("{url}: expected Unavailable, got {other:?}"),
        }
    }

    /// The first DNS name a certificate is made out to (`openssl x509 -ext subjectAltName`).
    fn certificate_name(cert: &std::path::Path) -> String {
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(cert)
            .output()
            .expect("the TLS tests run openssl to read certificates");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split([',', '\n', ' '])
            .find_map(|part| part.strip_prefix("DNS:"))
            .unwrap_or_else(|| panic!("{} names no host: {text}", cert.display()))
            .to_owned()
    }

    /// `openssl` in `dir` with `args` (split at spaces), which must succeed.
    fn openssl(dir: &std::path::Path, args: &str) {
        let status = std::process::Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("the TLS tests run openssl to make certificates");
        assert!(status.success(), "openssl {args:?} failed");
    }

    /// Accepts one connection as a PostgreSQL server asking for a client certificate signed
    /// by `ca` would: the TLS request, then the handshake. Answers what the client presented,
    /// and the host name it gave (SNI).
    async fn serve_once(
        listener: &tokio::net::TcpListener,
        ca: CertificateDer<'static>,
        ca_key: PrivateKeyDer<'static>,
        versions: &'static [&'static rustls::SupportedProtocolVersion],
    ) -> Result<(Vec<CertificateDer<'static>>, Option<String>), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_client_cert_verifier(clients)
            .with_single_cert(vec![ca], ca_key)
            .unwrap();
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 8];
        socket.read_exact(&mut request).await.unwrap();
        // SSLRequest: its length, 8, and the code 80877103.
        assert_eq!(request, [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
        socket.write_all(b"S").await.unwrap();
        let stream = tokio_rustls::TlsAcceptor::from(Arc::new(config))
            .accept(socket)
            .await
            .map_err(|e| e.to_string())?;
        let session = stream.get_ref().1;
        let presented = session.peer_certificates().unwrap_or_default().to_vec();
        Ok((presented, session.server_name().map(str::to_owned)))
    }

    /// A server that does not offer TLS (or something in the way that says so) is refused by
    /// every mode that insists on it, rather than spoken to in the clear.
    #[tokio::test]
    async fn a_mode_that_insists_on_tls_refuses_a_server_without_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for mode in ["require", "verify-ca", "verify-full"] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let served = tokio::spawn(async move {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 8];
                socket.read_exact(&mut request).await.unwrap();
                socket.write_all(b"N").await.unwrap();
                // What comes next: nothing from a client that insists, a startup message from
                // one that would go on in the clear.
                let mut next = Vec::new();
                let _ = socket.read_to_end(&mut next).await;
                next
            });
            let url = format!(
                "postgres://herald@127.0.0.1:{port}/herald?sslmode={mode}&sslrootcert=system"
            );
            let url = if mode == "verify-full" {
                url
            } else {
                url.replace("&sslrootcert=system", "")
            };
            // Through the store: the database counts as away, and what to do is said.
            let said = store_unavailable(&url).await;
            let bounded = std::time::Duration::from_secs(10);
            assert!(
                said.contains("server does not support TLS") && said.contains("turn ssl on"),
                "{mode}: {said}"
            );
            let sent = tokio::time::timeout(bounded, served)
                .await
                .unwrap()
                .unwrap();
            assert!(
                sent.is_empty(),
                "{mode}: sent {} bytes in the clear",
                sent.len()
            );
        }
    }

    const EC_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";

    /// A test CA in `at`: `ca.pem` and `ca.key`.
    fn make_ca(at: &std::path::Path) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        openssl(
            at,
            &format!(
                "req -x509 {EC_KEY} -keyout ca.key -out ca.pem -subj /CN=Herald-test-CA -days 2"
            ),
        );
        (
            CertificateDer::from_pem_file(at.join("ca.pem")).unwrap(),
            PrivateKeyDer::from_pem_file(at.join("ca.key")).unwrap(),
        )
    }

    /// A client certificate `{name}.pem` and its key `{name}.key`, signed by the CA in `at`.
    fn issue_client_certificate(at: &std::path::Path, name: &str) -> CertificateDer<'static> {
        openssl(
            at,
            &format!("req {EC_KEY} -keyout {name}.key -out {name}.csr -subj /CN=herald"),
        );
        std::fs::write(
            at.join("client.ext"),
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        openssl(
            at,
            &format!(
                "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                 -extfile client.ext -out {name}.pem -days 2"
            ),
        );
        CertificateDer::from_pem_file(at.join(format!("{name}.pem"))).unwrap()
    }

    #[tokio::test]
    async fn a_client_certificate_is_presented_when_the_server_asks() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path();
        let (ca, ca_key) = make_ca(at);
        issue_client_certificate(at, "client");
        // The same key as SEC1 (`EC PRIVATE KEY`) and encrypted; another key.
        openssl(at, "ec -in client.key -out client-sec1.key");
        openssl(
            at,
            "pkcs8 -topk8 -in client.key -out client-encrypted.key -passout pass:secret",
        );
        openssl(
            at,
            "ec -in client.key -aes256 -out client-legacy.key -passout pass:secret",
        );
        openssl(
            at,
            "genpkey -algorithm ec -pkeyopt ec_paramgen_curve:P-256 -out other.key",
        );
        let client = CertificateDer::from_pem_file(at.join("client.pem")).unwrap();

        let with_key = |key: &str| {
            let (cert, key) = (at.join("client.pem"), at.join(key));
            format!("&sslcert={}&sslkey={}", cert.display(), key.display())
        };
        let bounded = std::time::Duration::from_secs(10);
        for (key, sni) in [
            (Some("client.key"), true),
            (Some("client-sec1.key"), false),
            (None, true),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let (ca, ca_key) = (ca.clone(), ca_key.clone_key());
            let served = tokio::spawn(async move {
                serve_once(&listener, ca, ca_key, rustls::DEFAULT_VERSIONS).await
            });
            let mut url = format!("postgres://herald@localhost:{port}/herald?sslmode=require");
            if let Some(key) = key {
                url += &with_key(key);
            }
            if !sni {
                url += "&sslsni=0";
            }
            // The server stops after the handshake, so the connection fails either way: what
            // the server saw is the point, and what the store says of a refusal.
            let said = store_unavailable(&url).await;
            assert_eq!(
                said.contains("did not take this connection's client certificate (or wants one)"),
                key.is_none(),
                "{said}"
            );
            let seen = tokio::time::timeout(bounded, served)
                .await
                .unwrap()
                .unwrap();
            if key.is_some() {
                let (presented, named) = seen.unwrap();
                assert_eq!(presented, vec![client.clone()], "{key:?}");
                assert_eq!(named.as_deref(), sni.then_some("localhost"));
            } else {
                let said = seen.unwrap_err();
                assert!(said.contains("certificate"), "{said}");
            }
        }
        // A server that speaks no TLS version Herald is allowed: said, not lowered to plain.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        static ONLY_TLS12: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
        let (ca_tls12, ca_key_tls12) = (ca.clone(), ca_key.clone_key());
        let served = tokio::spawn(async move {
            serve_once(&listener, ca_tls12, ca_key_tls12, &ONLY_TLS12).await
        });
        let url =
            format!("postgres://herald@127.0.0.1:{port}/herald?ssl_min_protocol_version=TLSv1.3");
        let said = store_unavailable(&url).await;
        assert!(said.contains("share no TLS version or cipher"), "{said}");
        assert!(
            tokio::time::timeout(bounded, served)
                .await
                .unwrap()
                .unwrap()
                .is_err()
        );

        // Keys that cannot serve say so at start, naming the files.
        let refused = |key: &str| {
            let url = format!("postgres://h/db?sslmode=require{}", with_key(key));
            taken(&url).1.connector().err().unwrap()
        };
        for encrypted in ["client-encrypted.key", "client-legacy.key"] {
            let said = refused(encrypted);
            assert!(
                said.contains(&format!("{encrypted} is encrypted"))
                    && said.contains("openssl pkey"),
                "{said}"
            );
        }
        let said = refused("other.key");
        assert!(
            said.contains("other.key is not the private key of sslcert")
                && said.contains("client.pem"),
            "{said}"
        );
    }

    /// Short-lived client certificates are renewed while Herald runs: each connection after a
    /// renewal presents the new one, and a renewal caught half done (a certificate without its
    /// key yet) leaves the one before in use rather than failing the connection.
    #[tokio::test]
    async fn a_renewed_client_certificate_is_presented_from_the_next_connection() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path();
        let (ca, ca_key) = make_ca(at);
        let first = issue_client_certificate(at, "client");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cert, key) = (at.join("client.pem"), at.join("client.key"));
        let url = format!(
            "postgres://herald@localhost:{port}/herald?sslmode=require&sslcert={}&sslkey={}",
            cert.display(),
            key.display()
        );
        let store = store_for(&url);
        let bounded = std::time::Duration::from_secs(10);
        // One connection (it fails after the handshake, as the server stops there): what the
        // server was shown.
        let presented = || async {
            let (served, _) = tokio::time::timeout(
                bounded,
                futures::future::join(
                    serve_once(
                        &listener,
                        ca.clone(),
                        ca_key.clone_key(),
                        rustls::DEFAULT_VERSIONS,
                    ),
                    store.migrate(),
                ),
            )
            .await
            .unwrap();
            served.unwrap().0
        };
        // As a certificate manager does: the new file written beside, then renamed over.
        let replace = |from: &str, to: &std::path::Path| {
            std::fs::rename(at.join(from), to).unwrap();
        };
        assert_eq!(presented().await, vec![first.clone()]);
        assert_eq!(
            presented().await,
            vec![first.clone()],
            "read again unchanged"
        );

        let second = issue_client_certificate(at, "second");
        replace("second.pem", &cert);
        replace("second.key", &key);
        assert_eq!(presented().await, vec![second.clone()]);

        let third = issue_client_certificate(at, "third");
        replace("third.pem", &cert);
        assert_eq!(
            presented().await,
            vec![second.clone()],
            "a certificate without its key yet: the one before"
        );
        replace("third.key", &key);
        assert_eq!(presented().await, vec![third]);
    }
}
