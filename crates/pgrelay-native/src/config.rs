//! The two configuration formats `pgrelay native` reads, and the one model
//! ([`NativeConfig`]) both resolve to.
//!
//! 1. The `replication:` format of existing postgres-replica deployments,
//!    accepted verbatim (host/port/user/password/database parts), found in
//!    the order `$CONFIG_FILE`, `/config/replication-config.yml`,
//!    `./config/replication-config.yml`, `./replication-config.yml`,
//!    `../replication-config.yml`, then the `REPLICATION_CONFIG` variable
//!    holding YAML or JSON text.
//! 2. pgrelay's own YAML, shaped like the streamer's file so one file can
//!    drive both (`source`, `targets`, `tables`, `listen`, plus a `native:`
//!    section; the streamer's `apply:` section is accepted and ignored),
//!    found via `--config`, `$PGRELAY_CONFIG`, `./pgrelay.yml`,
//!    `/etc/pgrelay/pgrelay.yml`.
//!
//! Invariants: every struct denies unknown keys (a typo is an error naming
//! its path); passwords live only inside [`pgrelay_source::Config`], whose
//! `Debug` and `redacted()` never show them; per-target settings override
//! global ones field by field. Subscription names must be unique because
//! each names a replication slot on the one source.
//! PostgreSQL docs: "Logical Replication" (logical-replication), libpq
//! "Connection Strings" (libpq-connstring).

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgrelay_config::ConfigFileError;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::NativeError;

/// Global or per-target settings as written (every field optional so a
/// target can override just one).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsFile {
    /// How many times to try reaching each server before giving up.
    pub max_wait_attempts: Option<u32>,
    /// Seconds between those attempts (`replication:` format).
    pub wait_interval_seconds: Option<u64>,
    /// The same as a duration (`5s`), pgrelay's format.
    #[serde(default, with = "pgrelay_config::duration::option")]
    pub wait_interval: Option<Duration>,
    /// `copy_data` of new subscriptions and refreshes.
    pub enable_initial_sync: Option<bool>,
    /// Disable user triggers on target tables until their initial copy is done.
    pub disable_triggers_during_sync: Option<bool>,
}

impl SettingsFile {
    fn over(&self, base: &Settings) -> Settings {
        Settings {
            max_wait_attempts: self
                .max_wait_attempts
                .unwrap_or(base.max_wait_attempts)
                .max(1),
            wait_interval: self
                .wait_interval
                .or(self.wait_interval_seconds.map(Duration::from_secs))
                .unwrap_or(base.wait_interval),
            enable_initial_sync: self.enable_initial_sync.unwrap_or(base.enable_initial_sync),
            disable_triggers_during_sync: self
                .disable_triggers_during_sync
                .unwrap_or(base.disable_triggers_during_sync),
        }
    }
}

/// Effective settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Attempts to reach a server (at least 1).
    pub max_wait_attempts: u32,
    /// Pause between attempts.
    pub wait_interval: Duration,
    /// `copy_data` for new subscriptions and refreshes.
    pub enable_initial_sync: bool,
    /// Keep user triggers disabled on tables being copied.
    pub disable_triggers_during_sync: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_wait_attempts: 30,
            wait_interval: Duration::from_secs(5),
            enable_initial_sync: true,
            disable_triggers_during_sync: false,
        }
    }
}

/// `host`/`port`/`user`/`password`/`database` of the `replication:` format.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerParts {
    /// Host name or address (as the target servers see the source, too).
    pub host: String,
    /// TCP port (5432 when absent).
    #[serde(default)]
    pub port: Option<u16>,
    /// Role.
    pub user: String,
    /// Password (optional: `.pgpass` and trust work too).
    #[serde(default)]
    pub password: Option<String>,
    /// Database.
    pub database: String,
    /// libpq sslmode (pgrelay extension; `prefer` when absent).
    #[serde(default)]
    pub sslmode: Option<String>,
}

/// One target of the `replication:` format.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationTarget {
    /// Name used in output, metrics and /health.
    pub name: String,
    /// Subscription (and source slot) name.
    pub subscription_name: String,
    /// Host.
    pub host: String,
    /// Port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Role.
    pub user: String,
    /// Password.
    #[serde(default)]
    pub password: Option<String>,
    /// Database.
    pub database: String,
    /// sslmode (pgrelay extension).
    #[serde(default)]
    pub sslmode: Option<String>,
    /// Overrides of the global settings.
    #[serde(default)]
    pub settings: Option<SettingsFile>,
}

/// The `replication:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationSection {
    /// Publication on the source.
    pub publication_name: String,
    /// The source server.
    pub source: ServerParts,
    /// The targets.
    pub targets: Vec<ReplicationTarget>,
    /// Tables (`name` resolved by the source's search_path, or `schema.name`).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Global settings.
    #[serde(default)]
    pub settings: Option<SettingsFile>,
}

/// A whole `replication:` file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationFile {
    /// The one top-level key.
    pub replication: ReplicationSection,
}

/// pgrelay's `source:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnSource {
    /// Connection URL or key=value string.
    pub url: String,
    /// Publication name.
    pub publication: String,
    /// The streamer's slot; native subscriptions use one slot each, named
    /// after the subscription, so this is accepted and not used.
    #[serde(default)]
    pub slot: Option<String>,
}

/// pgrelay's `targets:` entries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnTarget {
    /// Name.
    pub name: String,
    /// Connection URL or key=value string.
    pub url: String,
    /// Subscription name (`pgrelay_<name>` when absent).
    #[serde(default)]
    pub subscription: Option<String>,
    /// Overrides of the `native:` settings.
    #[serde(default)]
    pub settings: Option<SettingsFile>,
}

/// `tables:` as a list or as include/exclude globs.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TablesFile {
    /// Exact names (or globs) to include.
    List(Vec<String>),
    /// Globs.
    Globs(TableGlobs),
}

/// `tables: {include, exclude}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableGlobs {
    /// Tables to include (`*` all of schema public, `sales.*`, `public.order_*`).
    #[serde(default)]
    pub include: Vec<String>,
    /// Tables to leave out.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// pgrelay's own file (shared with the streamer).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnFile {
    /// Source.
    pub source: OwnSource,
    /// Targets.
    pub targets: Vec<OwnTarget>,
    /// Tables.
    #[serde(default)]
    pub tables: Option<TablesFile>,
    /// `/health` + `/metrics` address.
    #[serde(default)]
    pub listen: Option<String>,
    /// Global settings for `native`.
    #[serde(default)]
    pub native: Option<SettingsFile>,
    /// The streamer's section; ignored here.
    #[serde(default)]
    pub apply: Option<IgnoredAny>,
}

/// Which tables to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableSpec {
    /// Names as given (`users`, `app.users`): each must exist on the source.
    Names(Vec<String>),
    /// Globs over `schema.table` resolved against the source's catalog at
    /// every reconcile (a pattern without a dot means schema `public`).
    Globs {
        /// Included patterns.
        include: Vec<String>,
        /// Excluded patterns.
        exclude: Vec<String>,
    },
}

/// One resolved target.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Name for output, metrics and /health.
    pub name: String,
    /// Subscription name, also the slot name on the source.
    pub subscription: String,
    /// How pgrelay connects to the target.
    pub conn: pgrelay_source::Config,
    /// Effective settings.
    pub settings: Settings,
}

/// The resolved configuration, whatever format it came from.
#[derive(Debug, Clone)]
pub struct NativeConfig {
    /// Where it came from (file path or `$REPLICATION_CONFIG`).
    pub origin: String,
    /// The file, when it came from one (watched by `native run`).
    pub path: Option<PathBuf>,
    /// Publication name.
    pub publication: String,
    /// How pgrelay connects to the source; also the base of the
    /// subscriptions' connection string.
    pub source: pgrelay_source::Config,
    /// Targets.
    pub targets: Vec<TargetConfig>,
    /// Tables.
    pub tables: TableSpec,
    /// Global settings.
    pub settings: Settings,
    /// `listen:` of pgrelay's format.
    pub listen: Option<String>,
}

/// The `replication:` format's search order (before `$REPLICATION_CONFIG`).
pub fn replication_candidates(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = env("CONFIG_FILE").filter(|p| !p.is_empty()) {
        v.push(PathBuf::from(p));
    }
    for p in [
        "/config/replication-config.yml",
        "./config/replication-config.yml",
        "./replication-config.yml",
        "../replication-config.yml",
    ] {
        v.push(PathBuf::from(p));
    }
    v
}

/// pgrelay's own search order after `--config`.
pub fn own_candidates(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = env("PGRELAY_CONFIG").filter(|p| !p.is_empty()) {
        v.push(PathBuf::from(p));
    }
    v.push(PathBuf::from("./pgrelay.yml"));
    v.push(PathBuf::from("/etc/pgrelay/pgrelay.yml"));
    v
}

/// Finds and loads the configuration: `explicit` (`--config`) first, then
/// the `replication:` search order and `$REPLICATION_CONFIG`, then
/// pgrelay's own search order. A file's format is told by its top-level
/// `replication:` key.
pub fn discover(explicit: Option<&Path>) -> Result<NativeConfig, NativeError> {
    let env = |k: &str| std::env::var(k).ok();
    if let Some(p) = explicit {
        return load_path(p);
    }
    if let Some(p) = pgrelay_config::find(replication_candidates(&env)) {
        return load_path(&p);
    }
    if let Some(text) = env("REPLICATION_CONFIG").filter(|t| !t.trim().is_empty()) {
        return parse_text(&text, "$REPLICATION_CONFIG", None);
    }
    if let Some(p) = pgrelay_config::find(own_candidates(&env)) {
        return load_path(&p);
    }
    Err(NativeError::Config(
        "no configuration found: pass --config FILE, or set CONFIG_FILE, REPLICATION_CONFIG or \
         PGRELAY_CONFIG, or create ./replication-config.yml or ./pgrelay.yml"
            .into(),
    ))
}

/// Loads one file of either format.
pub fn load_path(path: &Path) -> Result<NativeConfig, NativeError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        NativeError::File(ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })
    })?;
    parse_text(&text, &path.display().to_string(), Some(path))
}

/// Parses text of either format (`origin` names it in errors).
pub fn parse_text(
    text: &str,
    origin: &str,
    path: Option<&Path>,
) -> Result<NativeConfig, NativeError> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        replication: Option<IgnoredAny>,
    }
    // The probe tolerates anything; only the presence of the key matters.
    let is_replication =
        pgrelay_config::from_yaml_str_with::<Probe>(text, origin, |_| Some(String::new()))
            .map(|p| p.replication.is_some())
            .unwrap_or(false);
    let mut config = if is_replication {
        let file: ReplicationFile = pgrelay_config::from_yaml_str(text, origin)?;
        from_replication(file.replication, origin)?
    } else {
        let file: OwnFile = pgrelay_config::from_yaml_str(text, origin)?;
        from_own(file, origin)?
    };
    config.path = path.map(Path::to_owned);
    validate(&config)?;
    Ok(config)
}

fn quote_conn_value(v: &str) -> String {
    let mut s = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

fn parts_config(
    host: &str,
    port: Option<u16>,
    user: &str,
    password: Option<&str>,
    database: &str,
    sslmode: Option<&str>,
    what: &str,
) -> Result<pgrelay_source::Config, NativeError> {
    let mut s = format!(
        "host={} port={} user={} dbname={}",
        quote_conn_value(host),
        port.unwrap_or(5432),
        quote_conn_value(user),
        quote_conn_value(database)
    );
    if let Some(m) = sslmode {
        s.push_str(" sslmode=");
        s.push_str(&quote_conn_value(m));
    }
    let mut config = pgrelay_source::Config::parse(&s)
        .map_err(|e| NativeError::Config(format!("{what}: {e}")))?;
    if let Some(p) = password {
        config.password = Some(pgrelay_source::Password::new(p));
    }
    Ok(config)
}

fn url_config(url: &str, what: &str) -> Result<pgrelay_source::Config, NativeError> {
    pgrelay_source::Config::parse(url).map_err(|e| NativeError::Config(format!("{what}: {e}")))
}

fn from_replication(r: ReplicationSection, origin: &str) -> Result<NativeConfig, NativeError> {
    let settings = r
        .settings
        .as_ref()
        .map(|s| s.over(&Settings::default()))
        .unwrap_or_default();
    let source = parts_config(
        &r.source.host,
        r.source.port,
        &r.source.user,
        r.source.password.as_deref(),
        &r.source.database,
        r.source.sslmode.as_deref(),
        "replication.source",
    )?;
    let mut targets = Vec::new();
    for (i, t) in r.targets.iter().enumerate() {
        targets.push(TargetConfig {
            name: t.name.clone(),
            subscription: t.subscription_name.clone(),
            conn: parts_config(
                &t.host,
                t.port,
                &t.user,
                t.password.as_deref(),
                &t.database,
                t.sslmode.as_deref(),
                &format!("replication.targets[{i}]"),
            )?,
            settings: t
                .settings
                .as_ref()
                .map(|s| s.over(&settings))
                .unwrap_or_else(|| settings.clone()),
        });
    }
    Ok(NativeConfig {
        origin: origin.to_owned(),
        path: None,
        publication: r.publication_name,
        source,
        targets,
        tables: TableSpec::Names(r.tables),
        settings,
        listen: None,
    })
}

fn from_own(f: OwnFile, origin: &str) -> Result<NativeConfig, NativeError> {
    let settings = f
        .native
        .as_ref()
        .map(|s| s.over(&Settings::default()))
        .unwrap_or_default();
    let source = url_config(&f.source.url, "source.url")?;
    let mut targets = Vec::new();
    for (i, t) in f.targets.iter().enumerate() {
        let subscription = t.subscription.clone().unwrap_or_else(|| {
            let clean: String = t
                .name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("pgrelay_{clean}")
        });
        targets.push(TargetConfig {
            name: t.name.clone(),
            subscription,
            conn: url_config(&t.url, &format!("targets[{i}].url"))?,
            settings: t
                .settings
                .as_ref()
                .map(|s| s.over(&settings))
                .unwrap_or_else(|| settings.clone()),
        });
    }
    let tables = match f.tables {
        None => TableSpec::Names(Vec::new()),
        Some(TablesFile::List(list)) if !list.iter().any(|p| is_glob(p)) => TableSpec::Names(list),
        Some(TablesFile::List(list)) => TableSpec::Globs {
            include: list,
            exclude: Vec::new(),
        },
        Some(TablesFile::Globs(g)) => TableSpec::Globs {
            include: g.include,
            exclude: g.exclude,
        },
    };
    Ok(NativeConfig {
        origin: origin.to_owned(),
        path: None,
        publication: f.source.publication,
        source,
        targets,
        tables,
        settings,
        listen: f.listen,
    })
}

fn validate(c: &NativeConfig) -> Result<(), NativeError> {
    let bad = |m: String| Err(NativeError::Config(format!("{}: {m}", c.origin)));
    if c.publication.is_empty() {
        return bad("the publication name is empty".into());
    }
    if c.targets.is_empty() {
        return bad("no targets configured; add at least one".into());
    }
    for (i, t) in c.targets.iter().enumerate() {
        if t.subscription.is_empty() || t.subscription.len() > 63 {
            return bad(format!(
                "target {}: subscription name `{}` must be 1 to 63 bytes (it also names the \
                 replication slot on the source)",
                t.name, t.subscription
            ));
        }
        for u in &c.targets[..i] {
            if u.name == t.name {
                return bad(format!(
                    "two targets are named {}; names must be unique",
                    t.name
                ));
            }
            if u.subscription == t.subscription {
                return bad(format!(
                    "targets {} and {} both use subscription {}: each subscription owns a slot \
                     of that name on the source, so they must differ",
                    u.name, t.name, t.subscription
                ));
            }
        }
    }
    Ok(())
}

/// Whether `s` has glob metacharacters.
pub fn is_glob(s: &str) -> bool {
    s.contains(['*', '?'])
}

/// `*` (any run) and `?` (one character) matching.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Whether table `schema.name` matches `pattern` (no dot: schema public).
pub fn table_matches(pattern: &str, schema: &str, name: &str) -> bool {
    match pattern.split_once('.') {
        Some((ps, pn)) => glob_match(ps, schema) && glob_match(pn, name),
        None => schema == "public" && glob_match(pattern, name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_EXAMPLE: &str = r#"
replication:
  publication_name: "example_publication"
  source: { host: "source-db", port: 5432, user: "sourceuser", password: "sourcepass", database: "sourcedb" }
  targets:
    - { name: "primary_replica", subscription_name: "primary_subscription", host: "target-db-1", port: 5432,
        user: "targetuser1", password: "targetpass1", database: "targetdb1",
        settings: { enable_initial_sync: true, disable_triggers_during_sync: true } }
    - { name: "second", subscription_name: "second_subscription", host: "target-db-2",
        user: "targetuser2", database: "targetdb2", settings: { enable_initial_sync: false } }
  tables: ["users", "posts"]
  settings: { max_wait_attempts: 30, wait_interval_seconds: 5, enable_initial_sync: true, disable_triggers_during_sync: false }
"#;

    #[test]
    fn replication_format_verbatim_with_overrides() {
        let c = parse_text(ISSUE_EXAMPLE, "x.yml", None).unwrap();
        assert_eq!(c.publication, "example_publication");
        assert_eq!(c.source.user, "sourceuser");
        assert_eq!(c.source.password.as_ref().unwrap().expose(), "sourcepass");
        assert_eq!(c.targets[0].subscription, "primary_subscription");
        assert!(c.targets[0].settings.disable_triggers_during_sync);
        assert!(!c.targets[1].settings.disable_triggers_during_sync);
        assert!(!c.targets[1].settings.enable_initial_sync);
        assert_eq!(c.targets[1].conn.targets[0].port, 5432);
        assert_eq!(c.settings.wait_interval, Duration::from_secs(5));
        assert_eq!(
            c.tables,
            TableSpec::Names(vec!["users".into(), "posts".into()])
        );
        assert!(!format!("{c:?}").contains("sourcepass"));
    }

    #[test]
    fn json_text_is_accepted() {
        let json = r#"{"replication": {"publication_name": "p",
            "source": {"host": "h", "user": "u", "database": "d"},
            "targets": [{"name": "t", "subscription_name": "s", "host": "h2", "user": "u", "database": "d"}],
            "tables": ["a"]}}"#;
        let c = parse_text(json, "$REPLICATION_CONFIG", None).unwrap();
        assert_eq!(c.targets[0].name, "t");
    }

    #[test]
    fn own_format_ignores_apply_and_rejects_typos() {
        let text = "source: {url: 'postgres://u@h/d', publication: p, slot: s}\n\
                    targets:\n  - {name: Eu-West, url: 'postgres://u@h2/d'}\n\
                    tables: {include: ['*'], exclude: ['audit_*']}\n\
                    native: {wait_interval: 2s, enable_initial_sync: false}\n\
                    apply: {batch: 1000, anything: [1, 2]}\n";
        let c = parse_text(text, "pgrelay.yml", None).unwrap();
        assert_eq!(c.targets[0].subscription, "pgrelay_eu_west");
        assert_eq!(c.settings.wait_interval, Duration::from_secs(2));
        assert!(!c.targets[0].settings.enable_initial_sync);
        assert!(matches!(c.tables, TableSpec::Globs { .. }));
        let e = parse_text(&text.replace("native: {", "native: {typo: 1, "), "f", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("typo"), "{e}");
    }

    #[test]
    fn duplicate_subscriptions_are_refused() {
        let text = ISSUE_EXAMPLE.replace("second_subscription", "primary_subscription");
        let e = parse_text(&text, "x", None).unwrap_err().to_string();
        assert!(
            e.contains("both use subscription primary_subscription"),
            "{e}"
        );
    }

    #[test]
    fn search_orders_follow_the_issue() {
        let env = |k: &str| match k {
            "CONFIG_FILE" => Some("/srv/r.yml".to_owned()),
            "PGRELAY_CONFIG" => Some(String::new()),
            _ => None,
        };
        let r: Vec<String> = replication_candidates(&env)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            r,
            [
                "/srv/r.yml",
                "/config/replication-config.yml",
                "./config/replication-config.yml",
                "./replication-config.yml",
                "../replication-config.yml"
            ]
        );
        let o: Vec<String> = own_candidates(&env)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(o, ["./pgrelay.yml", "/etc/pgrelay/pgrelay.yml"]);
    }

    #[test]
    fn globs() {
        assert!(table_matches("*", "public", "users"));
        assert!(!table_matches("*", "app", "users"));
        assert!(table_matches("app.*", "app", "users"));
        assert!(table_matches("public.us?rs", "public", "users"));
        assert!(!table_matches("audit_*", "public", "users"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
    }
}
