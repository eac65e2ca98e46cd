//! Reading libpq's connection strings where tokio-postgres does not: the URL's parameters
//! (percent-decoded) and the `key=value` form, for the TLS settings and for showing a string
//! without its password.

use percent_encoding::percent_decode_str;

/// A URL's part before its query and the query, split where tokio-postgres splits it: the
/// credentials end at the first `@`, so a `?` before it belongs to the password.
pub fn split_query(url: &str) -> (&str, Option<&str>) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let after_credentials = url[after_scheme..]
        .find('@')
        .map_or(after_scheme, |i| after_scheme + i + 1);
    match url[after_credentials..].find('?') {
        Some(i) => {
            let at = after_credentials + i;
            (&url[..at], Some(&url[at + 1..]))
        }
        None => (url, None),
    }
}

/// A `key=value` value as libpq and tokio-postgres read it back.
pub(crate) fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Whether `url` is in the URL form (rather than libpq's `key=value` form).
pub(crate) fn is_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

pub(crate) fn decode(raw: &str) -> Result<String, String> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "the database URL has a parameter that is not UTF-8 once decoded".into())
}

/// libpq's `key=value key2='quoted value'` form as pairs, or `None` if it is not well formed.
pub(crate) fn key_value_pairs(s: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            return it.peek().is_none().then_some(pairs);
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        it.next_if_eq(&'=')?;
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let quoted = it.next_if_eq(&'\'').is_some();
        let mut value = String::new();
        loop {
            match it.peek() {
                None if quoted => return None,
                None => break,
                Some('\'') if quoted => {
                    it.next();
                    break;
                }
                Some(c) if !quoted && c.is_whitespace() => break,
                Some(_) => {}
            }
            let c = it.next()?;
            value.push(if c == '\\' { it.next()? } else { c });
        }
        if value.is_empty() && !quoted {
            return None;
        }
        pairs.push((key, value));
    }
}

/// libpq's environment variables Herald reads, and the parameter each gives. As in libpq, a
/// variable fills only what the connection string leaves out.
const FROM_ENVIRONMENT: [(&str, &str); 19] = [
    ("PGHOST", "host"),
    ("PGHOSTADDR", "hostaddr"),
    ("PGPORT", "port"),
    ("PGDATABASE", "dbname"),
    ("PGUSER", "user"),
    ("PGPASSWORD", "password"),
    ("PGAPPNAME", "application_name"),
    ("PGCONNECT_TIMEOUT", "connect_timeout"),
    ("PGOPTIONS", "options"),
    ("PGTARGETSESSIONATTRS", "target_session_attrs"),
    ("PGCHANNELBINDING", "channel_binding"),
    ("PGSSLMODE", "sslmode"),
    ("PGSSLROOTCERT", "sslrootcert"),
    ("PGSSLCERT", "sslcert"),
    ("PGSSLKEY", "sslkey"),
    ("PGSSLSNI", "sslsni"),
    ("PGSSLNEGOTIATION", "sslnegotiation"),
    ("PGSSLMINPROTOCOLVERSION", "ssl_min_protocol_version"),
    ("PGSSLMAXPROTOCOLVERSION", "ssl_max_protocol_version"),
];

/// libpq's environment variables that Herald does not read, and what to do instead.
const NOT_READ: [(&str, &str); 6] = [
    (
        "PGPASSFILE",
        "Herald reads no password file: give the password in PGPASSWORD or the URL",
    ),
    (
        "PGSERVICE",
        "Herald reads no service file: give the connection in HERALD_DATABASE_URL",
    ),
    (
        "PGSERVICEFILE",
        "Herald reads no service file: give the connection in HERALD_DATABASE_URL",
    ),
    (
        "PGSSLPASSWORD",
        "Herald reads only unencrypted keys (see sslpassword in docs/operations.md)",
    ),
    ("PGSSLCRL", "revocation lists are not checked"),
    (
        "PGREQUIREAUTH",
        "Herald does not restrict the authentication method",
    ),
];

/// `conninfo` (a URL or libpq's `key=value` form) with what libpq's environment variables
/// (`PGHOST`, `PGUSER`, `PGPASSWORD`, `PGSSLMODE`, …, read through `env`) give for the
/// parameters it leaves out, and the names of the variables used. A password with characters
/// a URL would need encoded can so stay out of it. A string this cannot read is answered as it
/// is, for the driver to say what is wrong with it.
pub(crate) fn with_environment(
    conninfo: &str,
    env: impl Fn(&str) -> Option<String>,
) -> (String, Vec<&'static str>) {
    let Some(given) = given_parameters(conninfo) else {
        return (conninfo.to_owned(), Vec::new());
    };
    let mut amended = conninfo.to_owned();
    let mut used = Vec::new();
    for (variable, parameter) in FROM_ENVIRONMENT {
        if given.iter().any(|g| g == parameter) {
            continue;
        }
        let Some(value) = env(variable).filter(|v| !v.is_empty()) else {
            continue;
        };
        if parameter == "port" && is_url(conninfo) && !url_hosts(&amended).1.is_empty() {
            // The driver gives each host in the URL without a port 5432, so a port in the
            // query would be one too many: it goes beside each host instead.
            amended = with_port(&amended, &value);
        } else if is_url(conninfo) {
            let value =
                percent_encoding::utf8_percent_encode(&value, percent_encoding::NON_ALPHANUMERIC);
            let join = if split_query(&amended).1.is_some() {
                '&'
            } else {
                '?'
            };
            amended = format!("{amended}{join}{parameter}={value}");
        } else {
            amended = format!("{amended} {parameter}={}", quoted(&value));
        }
        used.push(variable);
    }
    (amended, used)
}

/// The variables of this process's environment that complete `conninfo` (see
/// [`with_environment`]), for saying which database a node uses.
pub fn completed_from_environment(conninfo: &str) -> Vec<&'static str> {
    with_environment(conninfo, |name| std::env::var(name).ok()).1
}

/// The variables among [`NOT_READ`] that are set, each with what to do instead.
pub(crate) fn unread_environment(env: impl Fn(&str) -> Option<String>) -> Vec<String> {
    NOT_READ
        .iter()
        .filter(|(variable, _)| env(variable).is_some_and(|v| !v.is_empty()))
        .map(|(variable, instead)| format!("{variable} is set and not read: {instead}"))
        .collect()
}

/// The parameters a connection string gives, by libpq's names; `None` when it cannot be read.
fn given_parameters(conninfo: &str) -> Option<Vec<String>> {
    if !is_url(conninfo) {
        let pairs = key_value_pairs(conninfo)?;
        return Some(pairs.into_iter().map(|(key, _)| key).collect());
    }
    let (base, query) = split_query(conninfo);
    let mut given = Vec::new();
    for part in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let key = part.split_once('=').map_or(part, |(key, _)| key);
        given.push(decode(key).ok()?);
    }
    // The part before the query names the user, password, hosts, ports and database (the
    // driver reads it; only whether a port was written is this module's to see).
    let config: tokio_postgres::Config = base.parse().ok()?;
    let hosts = url_hosts(base).1;
    let authority = [
        ("user", config.get_user().is_some()),
        ("password", config.get_password().is_some()),
        ("host", !config.get_hosts().is_empty()),
        ("port", split_hosts(hosts).any(|(_, port)| port.is_some())),
        ("dbname", config.get_dbname().is_some()),
    ];
    for (parameter, present) in authority {
        if present {
            given.push(parameter.to_owned());
        }
    }
    Some(given)
}

/// A URL split around its host list (`host[:port],…`), where the driver finds it: after the
/// credentials, up to the path or the query.
fn url_hosts(url: &str) -> (&str, &str, &str) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let start = url[after_scheme..]
        .find('@')
        .map_or(after_scheme, |i| after_scheme + i + 1);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    (&url[..start], &url[start..end], &url[end..])
}

/// A URL's host list as hosts and the ports written beside them (`[v6]:port` too).
fn split_hosts(hosts: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    hosts.split(',').filter(|h| !h.is_empty()).map(|chunk| {
        let host_end = if chunk.starts_with('[') {
            chunk.find(']').map_or(chunk.len(), |i| i + 1)
        } else {
            chunk.find(':').unwrap_or(chunk.len())
        };
        let (host, rest) = chunk.split_at(host_end);
        (host, rest.strip_prefix(':'))
    })
}

/// `url` with `ports` (one, or one per host as libpq's list) beside its hosts.
fn with_port(url: &str, ports: &str) -> String {
    let (before, hosts, after) = url_hosts(url);
    let ports: Vec<&str> = ports.split(',').collect();
    let hosts: Vec<String> = split_hosts(hosts)
        .enumerate()
        .map(|(i, (host, _))| {
            let port = ports.get(i).unwrap_or(&ports[0]);
            format!("{host}:{port}")
        })
        .collect();
    format!("{before}{}{after}", hosts.join(","))
}

/// A `key=value` connection string as it may be shown: its password replaced by `…`. `None`
/// when it cannot be read.
pub fn without_password(s: &str) -> Option<String> {
    let pairs = key_value_pairs(s)?;
    let shown: Vec<String> = pairs
        .into_iter()
        .map(|(key, value)| {
            if key.to_ascii_lowercase().contains("password") {
                format!("{key}=…")
            } else if value.is_empty() || value.contains([' ', '\'', '\\']) {
                format!("{key}={}", quoted(&value))
            } else {
                format!("{key}={value}")
            }
        })
        .collect();
    Some(shown.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_value_string_is_shown_without_its_password() {
        assert_eq!(
            without_password("host=db  password='s3 cret' dbname='my db' PassWord=x user=h")
                .as_deref(),
            Some("host=db password=… dbname='my db' PassWord=… user=h")
        );
        assert_eq!(without_password("host=db password='unterminated"), None);
    }

    /// An environment of these variables only.
    fn environment(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn libpqs_variables_fill_only_what_the_connection_string_leaves_out() {
        let env = environment(&[
            ("PGHOST", "db.internal"),
            ("PGPORT", "5433"),
            ("PGUSER", "herald"),
            ("PGPASSWORD", "p@ss w/rd?&'"),
            ("PGDATABASE", "events"),
            ("PGSSLMODE", "verify-full"),
            ("PGAPPNAME", ""),
        ]);
        // Everything from the environment.
        let (url, used) = with_environment("postgres://", &env);
        assert_eq!(
            url,
            "postgres://?host=db%2Einternal&port=5433&dbname=events&user=herald\
             &password=p%40ss%20w%2Frd%3F%26%27&sslmode=verify%2Dfull"
        );
        assert_eq!(
            used,
            [
                "PGHOST",
                "PGPORT",
                "PGDATABASE",
                "PGUSER",
                "PGPASSWORD",
                "PGSSLMODE"
            ]
        );
        // What the URL gives stays, wherever it gives it.
        let (url, used) = with_environment("postgres://admin@db:6000/herald?sslmode=disable", &env);
        assert_eq!(
            url,
            "postgres://admin@db:6000/herald?sslmode=disable&password=p%40ss%20w%2Frd%3F%26%27"
        );
        assert_eq!(used, ["PGPASSWORD"]);
        // The port beside each host, when the URL writes none.
        let (url, _) = with_environment("postgres://a,[::2]/d?user=x&sslmode=disable", &env);
        assert_eq!(
            url,
            "postgres://a:5433,[::2]:5433/d?user=x&sslmode=disable&password=p%40ss%20w%2Frd%3F%26%27"
        );
        let (url, _) = with_environment("postgres://a,[::1]:7/d?user=x&sslmode=disable", &env);
        assert_eq!(
            url,
            "postgres://a,[::1]:7/d?user=x&sslmode=disable&password=p%40ss%20w%2Frd%3F%26%27"
        );
        let (url, used) = with_environment("postgres://u:pw@h/d?user=x&port=1", &env);
        assert_eq!(
            url,
            "postgres://u:pw@h/d?user=x&port=1&sslmode=verify%2Dfull"
        );
        assert_eq!(used, ["PGSSLMODE"]);
        // libpq's key=value form.
        let (conninfo, _) = with_environment("host=db user=admin", &env);
        assert_eq!(
            conninfo,
            "host=db user=admin port='5433' dbname='events' password='p@ss w/rd?&\\'' \
             sslmode='verify-full'"
        );
        // What cannot be read goes on unchanged, for the driver to say what is wrong.
        for unreadable in ["host='unterminated", "postgres://u@h:notaport/d"] {
            assert_eq!(
                with_environment(unreadable, &env),
                (unreadable.to_owned(), Vec::new())
            );
        }
        // Nothing set, nothing changed.
        assert_eq!(
            with_environment("postgres://h/d", environment(&[])),
            ("postgres://h/d".to_owned(), Vec::new())
        );
    }

    #[test]
    fn libpqs_variables_herald_does_not_read_are_named() {
        let said = unread_environment(environment(&[
            ("PGSERVICE", "prod"),
            ("PGPASSFILE", ""),
            ("PGUSER", "x"),
        ]));
        assert_eq!(
            said,
            [
                "PGSERVICE is set and not read: Herald reads no service file: give the connection \
              in HERALD_DATABASE_URL"
            ]
        );
    }

    #[test]
    fn the_query_starts_after_the_credentials() {
        assert_eq!(
            split_query("postgres://u:p?x@db/h?sslmode=require"),
            ("postgres://u:p?x@db/h", Some("sslmode=require"))
        );
        assert_eq!(
            split_query("postgres://db/h?a=b"),
            ("postgres://db/h", Some("a=b"))
        );
        assert_eq!(
            split_query("postgres://u@db/h"),
            ("postgres://u@db/h", None)
        );
    }
}
