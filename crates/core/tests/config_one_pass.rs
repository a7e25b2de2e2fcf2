//! A configuration's problems are reported in one pass and in the file's
//! own words: values of the wrong type anywhere in the file, unknown and
//! missing keys, and stage two's findings, each with its line, column and
//! dotted key; nothing that only follows from a problem already reported.

use std::path::Path;

use tern_core::config::{Config, ConfigError};

/// Loads `text` and returns its problems; panics if it loads.
fn problems(text: &str) -> Vec<ConfigError> {
    match Config::from_toml("f.toml", text) {
        Ok(_) => panic!("loaded, but should have failed:\n{text}"),
        Err(e) => e.0,
    }
}

fn shown(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `(line, key)` of each problem, in the order reported.
fn places(errors: &[ConfigError]) -> Vec<(usize, &str)> {
    errors.iter().map(|e| (e.line, e.key.as_str())).collect()
}

/// A minimal good file to break: two regions, an edge, one service.
const GOOD: &str = r#"[[region]]
name = "east"
[[region]]
name = "west"

[edge]
region = "east"
listen = "127.0.0.1:8080"

[service.api]
policy = "failover"
[[service.api.backend]]
region = "east"
url = "http://127.0.1.10:8080"
"#;

#[test]
fn the_minimal_file_loads() {
    Config::from_toml("f.toml", GOOD).unwrap();
}

/// Reading stopped at `workers = "4"`: the duration written as a number in
/// another table and the unknown policy were reported only run after run.
#[test]
fn every_type_error_and_bad_value_is_reported_in_one_pass() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bad/type_errors_in_two_tables_and_a_bad_value.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let errors = problems(&text);
    assert_eq!(
        places(&errors),
        [
            (11, "edge.workers"),
            (14, "service.api.policy"),
            (18, "service.api.backend[0].health.interval"),
        ],
        "{}",
        shown(&errors)
    );
    let columns: Vec<usize> = errors.iter().map(|e| e.column).collect();
    assert_eq!(columns, [11, 10, 41], "{}", shown(&errors));
    assert!(
        errors[0].message.contains("a whole number"),
        "{}",
        errors[0]
    );
    assert!(errors[1].message.contains("\"fastest\""), "{}", errors[1]);
    assert!(
        errors[2].message.contains("a duration like 500ms"),
        "{}",
        errors[2]
    );
}

/// A type error read `expected i64` or `expected a borrowed string`: each
/// kind of value is named as the file writes it.
#[test]
fn type_errors_say_what_the_file_should_hold() {
    let cases: &[(&str, &str, &str, &str)] = &[
        // (replace, with, key, the message contains)
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nworkers = 2.5",
            "edge.workers",
            "expected a whole number, found the number 2.5",
        ),
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nworkers = 99999999999999999999",
            "edge.workers",
            "expected a whole number, found the whole number 99999999999999999999; it is too large",
        ),
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = 8080",
            "edge.listen",
            "expected a string, found the whole number 8080",
        ),
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\ntry_timeout = 2",
            "edge.try_timeout",
            "expected a duration like 500ms, found the whole number 2; write it in quotes with a unit",
        ),
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nmax_body = 1024",
            "edge.max_body",
            "expected a size like 64KiB, found the whole number 1024",
        ),
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nretry_budget = \"0.2\"",
            "edge.retry_budget",
            "expected a number, found the string \"0.2\"; write it without quotes",
        ),
        (
            "policy = \"failover\"",
            "policy = \"failover\"\ncritical = \"yes\"",
            "service.api.critical",
            "expected true or false, found the string \"yes\"",
        ),
        (
            "policy = \"failover\"",
            "policy = \"failover\"\nhosts = \"api.example.com\"",
            "service.api.hosts",
            "expected a list, found the string \"api.example.com\"",
        ),
        (
            "policy = \"failover\"",
            "policy = \"failover\"\nhosts = [1]",
            "service.api.hosts[0]",
            "expected a string, found the whole number 1",
        ),
        (
            "url = \"http://127.0.1.10:8080\"",
            "url = \"http://127.0.1.10:8080\"\nhealth = \"fast\"",
            "service.api.backend[0].health",
            "expected a table, found the string \"fast\"",
        ),
        (
            "[edge]",
            "[verdict]\nregion_down = 1.5\n[edge]",
            "verdict.region_down",
            "expected \"all\", \"any\" or a number of critical services, found the number 1.5",
        ),
    ];
    for (replace, with, key, contains) in cases {
        assert!(GOOD.contains(replace), "{replace}");
        let text = GOOD.replacen(replace, with, 1);
        let errors = problems(&text);
        assert_eq!(errors.len(), 1, "{with}:\n{}", shown(&errors));
        let e = &errors[0];
        assert_eq!(e.key, *key, "{e}");
        assert!(e.message.contains(contains), "{with}: {e}");
        for word in ["i64", "u64", "f64", "borrowed", "sequence", "map", "struct"] {
            assert!(!e.message.contains(word), "{with}: `{word}` in {e}");
        }
    }
}

/// Several problems in one table: each is found, not only the first.
#[test]
fn several_problems_in_one_table_are_all_reported() {
    let text = GOOD.replace(
        "url = \"http://127.0.1.10:8080\"",
        "weight = \"5\"\nwieght = 5\nhealth = { fall = \"3\", rise = true }",
    );
    let errors = problems(&text);
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "service.api.backend[0]",
            "service.api.backend[0].weight",
            "service.api.backend[0].wieght",
            "service.api.backend[0].health.fall",
            "service.api.backend[0].health.rise",
        ],
        "{}",
        shown(&errors)
    );
    assert!(
        errors[0].message.contains("missing field `url`"),
        "{}",
        errors[0]
    );
}

/// What stage two would say only because stage one set a value aside is
/// not a problem of its own: a backend dropped for its missing `url` does
/// not leave a "service without backends", a refused list of regions no
/// "at least one region", a refused host list no route clash.
#[test]
fn consequences_of_a_refused_value_are_not_reported() {
    for (text, key) in [
        (
            GOOD.replace("url = \"http://127.0.1.10:8080\"", ""),
            "service.api.backend[0]",
        ),
        (
            GOOD.replace("policy = \"failover\"", "policy = \"failover\"\nbackend = \"east\"")
                .replace("[[service.api.backend]]\nregion = \"east\"\nurl = \"http://127.0.1.10:8080\"\n", ""),
            "service.api.backend",
        ),
        (
            format!("region = \"east\"\n{}", GOOD.replace("[[region]]\nname = \"east\"\n[[region]]\nname = \"west\"\n", "")),
            "region",
        ),
        (
            format!(
                "{GOOD}[service.web]\npolicy = \"failover\"\nhosts = 5\n[[service.web.backend]]\nregion = \"east\"\nurl = \"http://127.0.1.11:8080\"\n"
            ),
            "service.web.hosts",
        ),
    ] {
        let errors = problems(&text);
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, [key], "{text}\n{}", shown(&errors));
    }
}

/// `[[edge]]` for `[edge]`: serde read the list's table as the edge's
/// first field; one problem, at the list, saying how to write it.
#[test]
fn a_list_where_a_table_belongs_is_one_problem() {
    let errors = problems(&GOOD.replace("[edge]", "[[edge]]"));
    assert_eq!(places(&errors), [(6, "edge")], "{}", shown(&errors));
    assert!(
        errors[0]
            .message
            .contains("expected a table, found a list; write [edge], with single brackets"),
        "{}",
        errors[0]
    );
}

/// Past a syntax error the file's structure is a guess: it is reported alone.
#[test]
fn a_syntax_error_is_reported_alone() {
    let text = GOOD.replace(
        "policy = \"failover\"",
        "policy = \"failover\nworkers = \"4\"",
    );
    let errors = problems(&text);
    assert_eq!(errors.len(), 1, "{}", shown(&errors));
    assert_eq!(errors[0].line, 11, "{}", errors[0]);
}

/// A file of nothing but mistakes ends with a bounded list, not a hang.
#[test]
fn a_file_of_many_problems_stops_at_a_bound() {
    let text = "[[region]]\nname = 5\n".repeat(400);
    let errors = problems(&text);
    assert!(errors.len() > 100, "{}", errors.len());
    let last = errors.last().unwrap();
    assert!(
        last.message.contains("problems; stopped reading here") && last.line == 0,
        "{last}"
    );
    assert!(
        errors
            .windows(2)
            .all(|w| w[0].line <= w[1].line || w[1].line == 0),
        "in file order"
    );
}

/// A region whose name is refused, or a service dropped, leaves every
/// reference to it "unknown": those follow from the one problem.
#[test]
fn references_to_a_refused_name_are_not_reported() {
    let errors = problems(&GOOD.replacen("name = \"east\"", "name = 5", 1));
    assert_eq!(
        places(&errors),
        [(2, "region[0].name")],
        "{}",
        shown(&errors)
    );
    let dns_to_a_dropped_service = format!(
        "{}\n[dns]\nlisten = \"127.0.0.1:5353\"\n[[dns.zone]]\nname = \"example.com\"\nns = [\"ns1.example.com\"]\n[[dns.zone.record]]\nname = \"api\"\ntype = \"A\"\npolicy = \"failover\"\n[[dns.zone.record.target]]\naddress = \"127.0.0.10\"\nregion = \"east\"\nservice = \"api\"\n",
        GOOD.replace("policy = \"failover\"\n", "")
    );
    let errors = problems(&dns_to_a_dropped_service);
    assert_eq!(places(&errors), [(10, "service.api")], "{}", shown(&errors));
    assert!(
        errors[0].message.contains("missing field `policy`"),
        "{}",
        errors[0]
    );
}
