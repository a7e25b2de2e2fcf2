//! Every valid TOML spelling of a configuration loads the same as the
//! canonical one: implicit parent tables, dotted keys, inline tables and
//! arrays of inline tables (TOML 1.0, sections 2.7 to 2.13).
//!
//! Broke when `[[controller.node]]` without a `[controller]` header got
//! `controller.node: invalid type: string "node", expected a borrowed string`.

use tern_core::config::Config;

const CANONICAL: &str = r#"
[[region]]
name = "us-east"
[[region]]
name = "us-west"
[[region]]
name = "witness"
serves_traffic = false

[edge]
region = "us-east"
listen = "127.0.1.1:8080"

[service.api]
policy = "failover"
hosts = ["api.example.com"]
[[service.api.backend]]
region = "us-east"
url = "http://127.0.1.10:8080"
[service.api.backend.health]
path = "/healthz"
fall = 2
[[service.api.backend]]
region = "us-west"
url = "http://127.0.2.10:8080"

[controller]
[[controller.node]]
id = 1
region = "us-east"
addr = "127.0.1.7:7400"
[[controller.node]]
id = 2
region = "us-west"
addr = "127.0.2.7:7400"
[[controller.node]]
id = 3
region = "witness"
addr = "127.0.3.7:7400"

[agent]
region = "us-west"

[database.payments]
replication = "async"
[[database.payments.node]]
region = "us-east"
addr = "127.0.1.20:5432"
[[database.payments.node]]
region = "us-west"
addr = "127.0.2.20:5432"
"#;

/// The same file with implicit parent tables: `[[controller.node]]` and
/// `[service.api]` without their parents' headers, `[database.payments]`
/// left out before its nodes.
const IMPLICIT_PARENTS: &str = r#"
[[region]]
name = "us-east"
[[region]]
name = "us-west"
[[region]]
name = "witness"
serves_traffic = false

[edge]
region = "us-east"
listen = "127.0.1.1:8080"

[[service.api.backend]]
region = "us-east"
url = "http://127.0.1.10:8080"
[service.api.backend.health]
path = "/healthz"
fall = 2
[[service.api.backend]]
region = "us-west"
url = "http://127.0.2.10:8080"
[service.api]
policy = "failover"
hosts = ["api.example.com"]

[[controller.node]]
id = 1
region = "us-east"
addr = "127.0.1.7:7400"
[[controller.node]]
id = 2
region = "us-west"
addr = "127.0.2.7:7400"
[[controller.node]]
id = 3
region = "witness"
addr = "127.0.3.7:7400"

[agent]
region = "us-west"

[[database.payments.node]]
region = "us-east"
addr = "127.0.1.20:5432"
[[database.payments.node]]
region = "us-west"
addr = "127.0.2.20:5432"
"#;

/// Dotted keys at the top level and inside tables.
const DOTTED_KEYS: &str = r#"
region = [{ name = "us-east" }, { name = "us-west" }, { name = "witness", serves_traffic = false }]
edge.region = "us-east"
edge.listen = "127.0.1.1:8080"
agent.region = "us-west"
database.payments.replication = "async"
database.payments.node = [
  { region = "us-east", addr = "127.0.1.20:5432" },
  { region = "us-west", addr = "127.0.2.20:5432" },
]

[service]
api.policy = "failover"
api.hosts = ["api.example.com"]
api.backend = [
  { region = "us-east", url = "http://127.0.1.10:8080", health.path = "/healthz", health.fall = 2 },
  { region = "us-west", url = "http://127.0.2.10:8080" },
]

[controller]
node = [
  { id = 1, region = "us-east", addr = "127.0.1.7:7400" },
  { id = 2, region = "us-west", addr = "127.0.2.7:7400" },
  { id = 3, region = "witness", addr = "127.0.3.7:7400" },
]
"#;

/// Inline tables for whole sections.
const INLINE_TABLES: &str = r#"
region = [{ name = "us-east" }, { name = "us-west" }, { name = "witness", serves_traffic = false }]
edge = { region = "us-east", listen = "127.0.1.1:8080" }
service = { api = { policy = "failover", hosts = ["api.example.com"], backend = [
  { region = "us-east", url = "http://127.0.1.10:8080", health = { path = "/healthz", fall = 2 } },
  { region = "us-west", url = "http://127.0.2.10:8080" },
] } }
controller = { node = [
  { id = 1, region = "us-east", addr = "127.0.1.7:7400" },
  { id = 2, region = "us-west", addr = "127.0.2.7:7400" },
  { id = 3, region = "witness", addr = "127.0.3.7:7400" },
] }
agent = { region = "us-west" }
database = { payments = { replication = "async", node = [
  { region = "us-east", addr = "127.0.1.20:5432" },
  { region = "us-west", addr = "127.0.2.20:5432" },
] } }
"#;

fn load(name: &str, text: &str) -> Config {
    Config::from_toml(name, text).unwrap_or_else(|e| panic!("{name} did not load:\n{e}"))
}

#[test]
fn implicit_parent_tables_load_like_the_canonical_file() {
    assert_eq!(
        load("implicit.toml", IMPLICIT_PARENTS),
        load("canonical.toml", CANONICAL)
    );
}

#[test]
fn dotted_keys_load_like_the_canonical_file() {
    assert_eq!(
        load("dotted.toml", DOTTED_KEYS),
        load("canonical.toml", CANONICAL)
    );
}

#[test]
fn inline_tables_load_like_the_canonical_file() {
    assert_eq!(
        load("inline.toml", INLINE_TABLES),
        load("canonical.toml", CANONICAL)
    );
}

/// Errors name the file's keys and lines, whatever the spelling: never a
/// deserializer's type names.
#[test]
fn errors_in_every_spelling_speak_of_the_files_keys() {
    let cases = [
        (
            "[[controller.node]]\nid = \"one\"\nregion = \"us-east\"\naddr = \"127.0.0.1:1\"\n",
            "controller.node",
        ),
        ("edge.region = 3\n", "edge.region"),
        (
            "edge = { region = \"us-east\", listen = \"x\", colour = \"red\" }\n",
            "colour",
        ),
    ];
    for (text, key) in cases {
        let err = Config::from_toml("f.toml", text)
            .expect_err(text)
            .to_string();
        assert!(err.contains(key), "{text}\n-> {err}");
        for word in ["borrowed", "invalid type: map", "Spanned", "struct Raw"] {
            assert!(!err.contains(word), "{text}\n-> {err}");
        }
    }
}
